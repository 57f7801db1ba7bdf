"""Train and test APM (Murray & Gordo 2017) on whole images: [semantic stage] -> aesthetic
training -> [APM-m branch + late fusion] -> Table 1 metrics, plots and weights.

With no data flags it runs on the bundled demo set (built on first use) with small settings so
that it finishes in a few minutes on 2 CPU cores: images resized to a shorter side of 256 px
(the paper: 500, --shorter_side=500; at 128 px the demo's noise, JPEG and blur degradations are
mostly averaged away: ridge probe SRCC 0.42 vs 0.62 at 256, 2026-11-29), no semantic stage and
no APM-m branch (turn them on with --semantic_epochs / --apm_m_epochs). Without ImageNet weights
in the Keras cache the backbone is randomly initialised, announced loudly; then (demo defaults,
ku, not the paper) the backbone stays frozen and only the two FC layers are trained, on the SPP
vectors computed once (ku.training.fit_apm_head: the same optimisation as training on the
images with a frozen backbone, seconds per epoch), after a feature standardisation fit on the
training images (ku.models.apm.adapt_feature_normalization), with Adam at 1e-4 for 20 epochs.
--train_backbone gives the paper's end-to-end training instead.

With --ava_root it reads AVA with the paper's split (official test list; 2,000 training images
held out for validation, section 4) and uses the paper's settings (section 3.4).

Examples:
  python scripts/train_apm.py
  python scripts/train_apm.py --semantic_epochs=1 --apm_m_epochs=1
  python scripts/train_apm.py --ava_root=/data/AVA --backbone_weights=imagenet --shorter_side=500
  TF_CONFIG=... python scripts/train_apm.py --ava_root=/data/AVA --strategy=multi_worker

Every stage (semantic, aesthetic, APM-m) checkpoints after each epoch into --work_dir
(semantic/, train/, apm_m/): re-running the same command continues an interrupted run.
"""
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("ava_root", None, "AVA folder (AVA.txt, images/, aesthetics_image_lists/). "
                    "Default: the bundled demo set.")
flags.DEFINE_enum("backbone", "resnet101", ["resnet101", "resnet50", "vgg16"],
                  "Convolutional layers (paper 3.2: ResNet-101; VGG16 for the VGG rows of Table 1).")
flags.DEFINE_string("backbone_weights", "auto", "Backbone weights: 'imagenet' (error if unavailable), "
                    "'auto' (ImageNet if available, else a random backbone, announced), 'none', or a path.")
flags.DEFINE_string("weights", None, "Deprecated: use --backbone_weights.")
flags.DEFINE_enum("variant", "dist", ["dist", "dist_eucl", "mean"], "Table 1 variant: dist = Huber "
                  "loss on 10 bins (eq. 1, sigma 3), dist_eucl = Euclidean loss, mean = 1 output.")
flags.DEFINE_integer("shorter_side", None, "Resize so the shorter side is this many pixels, aspect "
                     "kept (paper 3.4: 500; demo default 128 so that it runs on a CPU).")
flags.DEFINE_integer("batch_size", None, "Images per batch, over all replicas (batches group "
                     "similar aspect ratios). Default 16 (with --accumulate 8 on AVA = the paper's "
                     "128); with --strategy mirrored/multi_worker on AVA: 128, split between replicas.")
flags.DEFINE_integer("accumulate", None, "Gradient accumulation steps (paper 3.4 batch 128 = 16 x 8 "
                     "on one device; default 8 on AVA, 1 on the demo and under --strategy "
                     "mirrored/multi_worker, where Keras 3 cannot accumulate: raise --batch_size instead).")
flags.DEFINE_integer("epochs", None, "Aesthetic training epochs (default 30 on AVA; on the demo 20 "
                     "with the backbone frozen, 2 with --train_backbone).")
flags.DEFINE_float("learning_rate", None, "Learning rate (paper 3.4: SGD 1e-3, the default; 1e-4 "
                   "for Adam, the default with a frozen random backbone).")
flags.DEFINE_boolean("train_backbone", None, "Fine-tune the backbone end to end (paper 3.4). Default: "
                     "on, except on the demo with a randomly initialised backbone: then it stays "
                     "frozen and the FC layers train on SPP vectors computed once (fit_apm_head).")
flags.DEFINE_boolean("feature_norm", None, "Standardise the SPP vector with the training images' "
                     "statistics before the FC layers (ku, not the paper: "
                     "ku.models.apm.adapt_feature_normalization). Default: on when the backbone is "
                     "frozen, off otherwise.")
flags.DEFINE_integer("decay_steps", 20000, "Divide the learning rate by 10 every this many "
                     "optimizer updates (paper 3.4: 20k iterations). 0 = constant.")
flags.DEFINE_enum("optimizer", None, ["sgd", "adam"], "sgd = paper (momentum 0.9, weight decay "
                  "5e-4); adam = Keras Adam. Default: sgd; adam with a frozen random backbone "
                  "(on the demo SGD at 1e-3 reached test SRCC 0.34 in 40 epochs, Adam 0.63 in 20).")
flags.DEFINE_integer("semantic_epochs", None, "Epochs of the semantic stage (paper 3.3: the student "
                     "learns the ImageNet ResNet-101's softmax, then its conv layers start the "
                     "aesthetic model). 0 = skip (demo default); AVA default 3.")
flags.DEFINE_string("teacher_weights", "auto", "Teacher classifier weights: 'imagenet', 'auto' "
                    "(random if unavailable, announced), 'none', or a path to the .h5 file.")
flags.DEFINE_integer("teacher_size", 224, "Square input side of the teacher (ImageNet: 224).")
flags.DEFINE_integer("apm_m_epochs", None, "Epochs of the APM-m stage (paper 4.1: global max "
                     "pooling branch, new FC at 10x the base rate 1e-4, late fusion fit on "
                     "validation). 0 = skip (demo default); AVA default 5.")
flags.DEFINE_enum("fusion_criterion", "huber", ["huber", "cdloss", "kl", "mse"],
                  "Validation criterion minimised by the APM-m fusion weight.")
flags.DEFINE_boolean("masked", True, "Exact padding masking (activations outside each image set "
                     "to zero after every layer). False = plain zero padding.")
flags.DEFINE_integer("fc_units", 4096, "Width of the first FC layer (paper 3.2: 4096).")
flags.DEFINE_integer("demo_images", 320, "Images in the demo set (25% of them are the test set).")
flags.DEFINE_string("work_dir", None, "Output folder (default runs/apm_<variant>_<data>): weights, "
                    "config.json, teacher cache, predictions, metrics and plots.")
flags.DEFINE_integer("seed", 0, "Seed of the split, the batch shuffling and the initial weights.")
flags.DEFINE_boolean("resume", True, "Continue the stages checkpointed in --work_dir (False: start over).")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy (ku.distribute): default = one device; mirrored = all local "
                  "GPUs; multi_worker = the workers in the TF_CONFIG environment variable (run the "
                  "same command on every worker; --work_dir on a shared file system to resume). "
                  "--batch_size is the global batch; every worker reads only its part of each batch.")
flags.DEFINE_integer("verbose", 1, "0 = quiet, 1 = progress bars.")

def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ku import absl_app

    absl_app.deprecated_flag(FLAGS, "weights", "backbone_weights")
    demo = FLAGS.ava_root is None
    distributed = FLAGS.strategy != "default"
    if FLAGS.train_backbone is False and distributed:
        raise app.UsageError("--notrain_backbone trains the FC layers on stored SPP vectors in one "
                             "process; drop --strategy (or use --train_backbone)")
    if FLAGS.train_backbone is False and FLAGS.apm_m_epochs:
        raise app.UsageError("--apm_m_epochs trains on the images: use it with --train_backbone")
    if distributed and FLAGS.accumulate and FLAGS.accumulate > 1:
        raise SystemExit(f"error: --accumulate={FLAGS.accumulate} with --strategy={FLAGS.strategy}: "
                         "Keras 3 cannot accumulate gradients under tf.distribute; make --batch_size "
                         f"{FLAGS.accumulate}x larger instead (it is the global batch, split between "
                         "the replicas) and drop --accumulate")
    if FLAGS.variant == "mean" and (FLAGS.apm_m_epochs if FLAGS.apm_m_epochs is not None else not demo):
        raise app.UsageError("--apm_m_epochs needs a distribution variant (--variant=dist)")
    for name in ("batch_size", "epochs", "shorter_side"):
        v = getattr(FLAGS, name)
        if v is not None and v < (0 if name == "epochs" else 1):
            raise app.UsageError(f"--{name}={v}: must be positive")
    work = Path(FLAGS.work_dir or f"runs/apm_{FLAGS.variant}_{'demo' if demo else 'ava'}").expanduser()

    from ku import distribute

    # first: a multi-worker strategy connects to the other workers before any TensorFlow work
    try:
        strategy = distribute.get_strategy(FLAGS.strategy)
    except distribute.StrategyConfigError as e:
        raise SystemExit(f"error: {e}") from None
    if demo:
        from ku.data.demo import load_demo

        ids = load_demo(n_images=FLAGS.demo_images, seed=FLAGS.seed, split="murray")
    else:
        from ku.data.readers import read_ava

        ids = read_ava(FLAGS.ava_root, split="murray", seed=FLAGS.seed)
    from ku.pipelines.apm import run_apm

    res = run_apm(
        ids, work, demo=demo, backbone=FLAGS.backbone, backbone_weights=FLAGS.backbone_weights,
        variant=FLAGS.variant, shorter_side=FLAGS.shorter_side, batch_size=FLAGS.batch_size,
        accumulate=FLAGS.accumulate, epochs=FLAGS.epochs, learning_rate=FLAGS.learning_rate,
        train_backbone=FLAGS.train_backbone, feature_norm=FLAGS.feature_norm,
        decay_steps=FLAGS.decay_steps, optimizer=FLAGS.optimizer,
        semantic_epochs=FLAGS.semantic_epochs, teacher_weights=FLAGS.teacher_weights,
        teacher_size=FLAGS.teacher_size, apm_m_epochs=FLAGS.apm_m_epochs,
        fusion_criterion=FLAGS.fusion_criterion, masked=FLAGS.masked, fc_units=FLAGS.fc_units,
        seed=FLAGS.seed, resume=FLAGS.resume, strategy=strategy, verbose=FLAGS.verbose)
    if res.model_path is not None:  # the chief wrote the model
        from ku.cli import model_commands

        print("\n" + model_commands(res.model_path))
    distribute.end_worker_process(strategy)  # multi-worker: all workers leave together, at once


if __name__ == "__main__":
    from ku import absl_app  # absl.app.run, exit 0 after --help

    absl_app.run(main)

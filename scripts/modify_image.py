"""Modify images so that a trained APM predicts a slightly better or worse score distribution,
and plot where the pixels changed (Murray & Gordo 2017 section 4.3, Fig. 5).

The model comes from a scripts/train_apm.py output folder (config.json + apm.weights.h5). With no
image flags the first images of the demo set's test split are used.

Examples:
  python scripts/train_apm.py && python scripts/modify_image.py
  python scripts/modify_image.py --run_dir=runs/apm_dist_ava --images=a.jpg,b.jpg --direction=worse
"""
import json
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", "runs/apm_dist_demo", "Output folder of scripts/train_apm.py "
                    "(config.json and apm.weights.h5).")
flags.DEFINE_list("images", None, "Image files (default: 3 test images of the demo set).")
flags.DEFINE_enum("direction", "better", ["better", "worse"], "Target: every vote one bin up "
                  "(better) or down (worse) from the model's prediction.")
flags.DEFINE_float("shift", 1.0, "Fraction of the predicted mass moved by one bin (0..1).")
flags.DEFINE_integer("n_steps", 20, "Gradient-descent steps on the pixels.")
flags.DEFINE_float("step_size", 1.0, "Largest per-pixel change of one step (0..255 units).")
flags.DEFINE_float("max_change", 8.0, "Largest total change of any pixel value (0..255 units).")
flags.DEFINE_enum("method", "normalized", ["normalized", "sign"], "Step direction: the gradient "
                  "scaled to step_size at its largest pixel, or its sign (iterative FGSM).")
flags.DEFINE_integer("shorter_side", None, "Resize images to this shorter side (default: the "
                     "value the model was trained with, from config.json).")
flags.DEFINE_string("out_dir", None, "Where the figures go (default <run_dir>/modifications).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run = Path(FLAGS.run_dir).expanduser()
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise app.UsageError(f"--run_dir={run}: no config.json there; run scripts/train_apm.py first "
                             "(its --work_dir) or point --run_dir at its output folder")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("variant") == "mean":
        raise app.UsageError("the model predicts a mean (variant 'mean'); image modification needs distributions")

    from ku.data.aspect_batches import load_image
    from ku.image_modification import modify_image, plot_modification
    from ku.models import apm

    model = apm.apm_model(weights=None, backbone=cfg["backbone"], variant=cfg["variant"],
                          masked=cfg["masked"], fc_units=cfg["fc_units"],
                          global_max_branch=cfg["global_max_branch"],
                          feature_normalization=cfg.get("feature_normalization", False))
    model.load_weights(str(run / cfg["weights_file"]))
    if cfg.get("fusion_weight") is not None:
        model = apm.apm_inference_model(model, cfg["fusion_weight"])  # modify the fused prediction
    shorter = FLAGS.shorter_side or cfg.get("shorter_side", 500)
    if FLAGS.images:
        paths = FLAGS.images
    else:
        from ku.data.demo import load_demo

        ids = load_demo(split="murray")
        paths = ids[ids.set == "test"].image_path.head(3).tolist()
    out_dir = Path(FLAGS.out_dir or run / "modifications")
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in paths:
        try:
            image = load_image(p, shorter_side=shorter)
        except (OSError, ValueError) as e:
            print(f"skipping {p}: {e}")
            continue
        r = modify_image(model, image, FLAGS.direction, shift=FLAGS.shift, n_steps=FLAGS.n_steps,
                         step_size=FLAGS.step_size, max_change=FLAGS.max_change, method=FLAGS.method)
        fig_path = out_dir / f"{Path(p).stem}_{FLAGS.direction}.png"
        plot_modification(r, fig_path, title=f"{Path(p).name}: {FLAGS.direction}")
        print(f"{Path(p).name}: mean {r.mean_before:.3f} -> {r.mean_after:.3f} (target "
              f"{r.mean_target:.3f}); distance {r.distances[0]:.5f} -> {r.distances[-1]:.5f}; "
              f"max pixel change {abs(r.image - r.original).max():.1f}; {fig_path}")


if __name__ == "__main__":
    from ku import absl_app  # absl.app.run, exit 0 after --help

    absl_app.run(main)

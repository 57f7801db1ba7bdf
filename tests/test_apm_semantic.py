"""Semantic pre-training of APM on the demo set with tiny settings (Murray & Gordo 2017 §3.3):
a cached, resumable teacher, the student's cross-entropy training, and the weight transfer."""
import numpy as np
import pytest

from ku.data.aspect_batches import aspect_batches
from ku.models import apm, semantic
from ku.training import train_student

SIDE = 48


@pytest.fixture(scope="module")
def demo():
    from ku.data.demo import load_demo

    ids = load_demo(split="murray")
    return {s: ids[ids.set == s].reset_index(drop=True) for s in ("training", "validation", "test")}


def test_semantic_pretraining_and_transfer(demo, tmp_path):
    train = demo["training"].head(8)
    cache = tmp_path / "teacher.h5"
    teacher = semantic.build_teacher(None, image_size=SIDE)
    assert teacher.output.shape == (None, 1000)
    first, failed = semantic.teacher_targets(train.head(6), cache, teacher, image_size=SIDE, verbose=0)
    assert not failed and first.shape == (6, 1000)
    np.testing.assert_allclose(first.sum(1), 1.0, rtol=1e-5)
    # resume: only the 2 new images are computed; weights="imagenet" would fail offline if a
    # teacher were built, so passing no teacher proves nothing is recomputed for cached ids
    targets, _ = semantic.teacher_targets(train, cache, teacher, image_size=SIDE, verbose=0)
    np.testing.assert_array_equal(targets[:6], first)
    again, _ = semantic.teacher_targets(train, cache, None, weights="imagenet", image_size=SIDE, verbose=0)
    np.testing.assert_array_equal(again, targets)
    assert len(semantic.read_teacher_cache(cache)) == 8
    with pytest.raises(ValueError, match="image_size"):
        semantic.teacher_targets(train, cache, teacher, image_size=SIDE + 1, verbose=0)
    # the cached softmax is the teacher's output on the resized image
    x = semantic._teacher_input(train.image_path[0], SIDE, "resize")
    np.testing.assert_allclose(targets[0], np.asarray(teacher(x[None]))[0], rtol=1e-4, atol=1e-7)

    student = semantic.student_model("resnet50", None)
    assert student.output.shape == (None, 1000)
    conv_before = student.get_layer("backbone").get_layer("conv1_conv").get_weights()[0].copy()
    hist = train_student(student, train, targets, shorter_side=SIDE, batch_size=4, epochs=1,
                         verbose=0, optimizer=apm.apm_optimizer("sgd", 1e-2, decay_steps=None))
    assert np.isfinite(hist.history["loss"]).all()
    conv_after = student.get_layer("backbone").get_layer("conv1_conv").get_weights()[0]
    assert not np.allclose(conv_before, conv_after)  # the convolutional layers were trained
    # the loss is the soft cross-entropy -sum t log p
    data = aspect_batches(train.head(3), 3, shorter_side=SIDE, targets=targets[:3])
    (xb, sb), tb = next(iter(data.dataset))
    p = np.asarray(student([xb, sb], training=False), np.float64)
    ref = -(tb.numpy() * np.log(p + 1e-7)).sum(1).mean()
    np.testing.assert_allclose(float(student.loss(tb, p.astype(np.float32))), ref, rtol=1e-4)

    # transfer into the aesthetic model (and via a weights file)
    model = apm.apm_model("resnet50", None, fc_units=8)
    n = apm.copy_backbone_weights(student, model)
    assert n > 100
    np.testing.assert_array_equal(model.get_layer("backbone").get_layer("conv1_conv").get_weights()[0], conv_after)
    path = semantic.save_backbone_weights(student, tmp_path / "student_backbone.weights.h5")
    other = apm.apm_model("resnet50", None, fc_units=8)
    other.get_layer("backbone").load_weights(str(path))
    np.testing.assert_array_equal(other.get_layer("backbone").get_layer("conv4_block2_2_conv").get_weights()[0],
                                  student.get_layer("backbone").get_layer("conv4_block2_2_conv").get_weights()[0])

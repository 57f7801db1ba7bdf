"""Hosu et al. 2019 §3.1 augmentations: 4 corner crops at 87.5 % x mirror."""
import numpy as np
import pytest

from ku.data.augment import (
    HOSU_AUGMENTATIONS,
    ORIGINAL,
    augment,
    augment_all,
    augment_tf,
    crop_size,
    get_augmentation,
    hosu_augmentations,
    resolve_augmentations,
)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_eight_named_augmentations():
    augs = hosu_augmentations()
    assert len(augs) == 8 and augs == HOSU_AUGMENTATIONS
    names = [a.name for a in augs]
    assert names == ["crop_tl", "crop_tl_flip", "crop_tr", "crop_tr_flip",
                     "crop_bl", "crop_bl_flip", "crop_br", "crop_br_flip"]
    assert {a.corner for a in augs} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert sum(a.flip for a in augs) == 4
    # the released code's group names '%g_%g_%d' % (crop_y, crop_x, flip)
    assert sorted(a.legacy_name for a in augs) == sorted(
        ["1_1_0", "1_1_1", "1_0_0", "1_0_1", "0_1_0", "0_1_1", "0_0_0", "0_0_1"])
    assert get_augmentation("0_1_1").name == "crop_tr_flip"
    with9 = hosu_augmentations(include_original=True)
    assert len(with9) == 9 and with9[0] == ORIGINAL


def test_outputs_distinct_and_same_size():
    img = _image(37, 50)
    outs = [augment(img, a) for a in HOSU_AUGMENTATIONS]
    assert len({o.shape for o in outs}) == 1
    for i in range(8):
        for j in range(i + 1, 8):
            assert not np.array_equal(outs[i], outs[j]), (i, j)


@pytest.mark.parametrize("h,w", [(256, 256), (37, 50), (8, 9), (1, 3)])
def test_crop_size_is_floor_of_87_5_percent(h, w):
    ch, cw = crop_size(h, w)
    assert (ch, cw) == (max(1, int(np.floor(0.875 * h))), max(1, int(np.floor(0.875 * w))))
    if (h, w) == (256, 256):
        assert (ch, cw) == (224, 224)  # the paper's example, §3.1
    out = augment(_image(h, w), "crop_br")
    assert out.shape == (ch, cw, 3)


def test_corners_and_flip_against_explicit_slices():
    h, w = 37, 50
    img = _image(h, w)
    ch, cw = crop_size(h, w)  # 32, 43
    ref = {
        "crop_tl": img[:ch, :cw],
        "crop_tr": img[:ch, w - cw:],
        "crop_bl": img[h - ch:, :cw],
        "crop_br": img[h - ch:, w - cw:],
    }
    for name, r in ref.items():
        np.testing.assert_array_equal(augment(img, name), r)
        flipped = augment(img, name + "_flip")
        np.testing.assert_array_equal(flipped, r[:, ::-1])
        # mirror = left-right: first column of the flipped crop is the last of the crop
        np.testing.assert_array_equal(flipped[:, 0], r[:, -1])
    np.testing.assert_array_equal(augment(img, "original"), img)
    # 2-D (grey) input
    np.testing.assert_array_equal(augment(img[..., 0], "crop_br_flip"), ref["crop_br"][..., 0][:, ::-1])


def test_augment_all_and_errors():
    img = _image(20, 30)
    stack = augment_all(img)
    assert stack.shape == (8, 17, 26, 3)
    with pytest.raises(ValueError, match="different sizes"):
        augment_all(img, hosu_augmentations(include_original=True))
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(img, "crop_middle")
    with pytest.raises(ValueError, match="crop_fraction"):
        augment(img, "crop_tl", crop_fraction=1.5)
    with pytest.raises(ValueError, match="duplicate"):
        resolve_augmentations(["crop_tl", "crop_tl"])
    with pytest.raises(ValueError, match="shape"):
        augment(np.zeros((2, 3, 4, 5)), "crop_tl")


def test_tf_version_equals_numpy():
    import tensorflow as tf

    augs = hosu_augmentations(include_original=True)

    @tf.function(input_signature=[tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int32)])
    def by_index(x, i):  # graph mode, unknown size, tensor index (as in tf.data)
        return augment_tf(x, i, augmentations=augs)

    for h, w in [(37, 50), (256, 256), (9, 8)]:
        img = _image(h, w, seed=h)
        for i, a in enumerate(augs):
            ref = augment(img, a)
            np.testing.assert_array_equal(augment_tf(img, a).numpy(), ref)
            np.testing.assert_array_equal(augment_tf(tf.constant(img), a.name).numpy(), ref)
            np.testing.assert_array_equal(by_index(img, i).numpy(), ref)
    # in a tf.data map with a tensor index drawn per element
    img = _image(21, 30, seed=3)
    ds = tf.data.Dataset.range(8).map(lambda i: augment_tf(tf.constant(img), tf.cast(i, tf.int32)))
    for i, out in enumerate(ds):
        np.testing.assert_array_equal(out.numpy(), augment(img, HOSU_AUGMENTATIONS[i]))

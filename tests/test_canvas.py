"""Padded-canvas tf.data pipelines of Jia et al. 2019 (§III-A, §IV-B, §IV-D) against numpy."""
import cv2
import numpy as np
import pandas as pd
import pytest

from ku.data.augment import augment
from ku.data.canvas import (JIA_AUGMENTATIONS, canvas_dataset, n_test_views, targets_from_ids,
                            evaluation_views)


def write_images(tmp_path, sizes, seed=0):
    rng = np.random.default_rng(seed)
    rows, imgs = [], []
    for i, (h, w) in enumerate(sizes):
        im = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        path = tmp_path / f"im{i}.png"  # lossless: exact comparisons
        cv2.imwrite(str(path), im[:, :, ::-1])
        imgs.append(im)
        dist = rng.dirichlet(np.ones(10))
        rows.append({"image_id": str(i), "image_path": str(path), "mos": float(dist @ np.arange(1, 11)),
                     "std": 1.0, "n_votes": 100.0, **{f"dist_{k + 1}": dist[k] for k in range(10)},
                     "theme": 1000 + i, "theme_index": i + 1, "set": "test"})
    return pd.DataFrame(rows), imgs


def padded(im, canvas):
    out = np.zeros((canvas, canvas, 3), np.float32)
    out[:im.shape[0], :im.shape[1]] = im
    return out


def test_pad_top_left_with_size_theme_and_targets(tmp_path):
    ids, imgs = write_images(tmp_path, [(50, 70), (96, 40), (96, 96)])
    ds = canvas_dataset(ids, canvas=96, augment="none", training=False, batch_size=2)
    batches = list(ds)
    x = {k: np.concatenate([np.asarray(b[0][k]) for b in batches]) for k in batches[0][0]}
    y = np.concatenate([np.asarray(b[1]) for b in batches])
    assert x["image"].shape == (3, 96, 96, 3) and x["image"].dtype == np.float32
    for i, im in enumerate(imgs):
        np.testing.assert_array_equal(x["image"][i], padded(im, 96))
    np.testing.assert_array_equal(x["valid_size"], [[50, 70], [96, 40], [96, 96]])
    np.testing.assert_array_equal(x["theme"], [1, 2, 3])
    np.testing.assert_allclose(y, ids[[f"dist_{k}" for k in range(1, 11)]].to_numpy(), rtol=1e-6)
    no_theme = next(iter(canvas_dataset(ids, canvas=96, training=False, theme=False)))[0]
    assert set(no_theme) == {"image", "valid_size"}


def test_six_test_views_match_numpy(tmp_path):
    ids, imgs = write_images(tmp_path, [(64, 80), (48, 40)], seed=1)
    assert n_test_views("pad_roi", "flip_crop") == 6 and n_test_views("pad_roi", "flip") == 2
    views = [np.asarray(b["image"]) for b in evaluation_views(ids, canvas=96, batch_size=5)]
    sizes = np.concatenate([np.asarray(b["valid_size"]) for b in evaluation_views(ids, canvas=96, batch_size=5)])
    views = np.concatenate(views)
    assert views.shape == (12, 96, 96, 3)
    names = [a.name for a in JIA_AUGMENTATIONS]
    assert names == ["original", "mirrored", "crop_tl", "crop_tr", "crop_bl", "crop_br"]
    for i, im in enumerate(imgs):
        for a, aug in enumerate(JIA_AUGMENTATIONS):
            ref = augment(im, aug)  # 7/8 corner crops, no resizing
            np.testing.assert_array_equal(views[6 * i + a], padded(ref, 96))
            np.testing.assert_array_equal(sizes[6 * i + a], ref.shape[:2])
    assert tuple(sizes[2]) == (56, 70)  # floor(7/8 * 64), floor(7/8 * 80)


def test_large_images_scaled_down_to_fit_and_reported(tmp_path, capfd):
    ids, imgs = write_images(tmp_path, [(120, 200)], seed=2)
    x, _ = next(iter(canvas_dataset(ids, canvas=100, augment="none", training=False)))
    assert tuple(np.asarray(x["valid_size"])[0]) == (60, 100)  # aspect kept, longer side = canvas
    ref = cv2.resize(imgs[0].astype(np.float32), (100, 60), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(np.asarray(x["image"])[0, :60, :100], ref, atol=1e-3)
    assert np.all(np.asarray(x["image"])[0, 60:] == 0)
    assert "larger than the 100 x 100 canvas; scaled down to 60 x 100" in capfd.readouterr().err


def test_training_draws_are_seeded_and_cover_all_six(tmp_path):
    ids, imgs = write_images(tmp_path, [(64, 80)], seed=3)
    ids = pd.concat([ids] * 40, ignore_index=True)  # the same image 40 times

    def sizes(ds):
        return [tuple(s) for b in ds for s in np.asarray(b[0]["valid_size"])]

    def views(ds):
        out = []
        for b in ds:
            for im, s in zip(np.asarray(b[0]["image"]), np.asarray(b[0]["valid_size"])):
                crop = im[:s[0], :s[1]]
                out.append(next(k for k, a in enumerate(JIA_AUGMENTATIONS)
                                if augment(imgs[0], a).shape == crop.shape
                                and np.array_equal(augment(imgs[0], a), crop)))
        return out

    ds = canvas_dataset(ids, canvas=80, batch_size=16, seed=7)
    e1, e2 = views(ds), views(ds)
    assert sorted(set(e1 + e2)) == list(range(6))  # every augmentation is drawn
    assert e1 != e2  # new draws every epoch
    assert views(canvas_dataset(ids, canvas=80, batch_size=16, seed=7)) == e1  # reproducible
    assert set(views(canvas_dataset(ids, canvas=80, batch_size=16, seed=7, augment="flip"))) <= {0, 1}


def test_ablation_modes(tmp_path):
    ids, imgs = write_images(tmp_path, [(320, 400), (200, 150)], seed=4)
    # random crop: an exact (maybe mirrored) 299 crop of the original (small images scaled up first)
    x, _ = next(iter(canvas_dataset(ids.head(1), mode="random_crop", training=True, seed=1)))
    crop = np.asarray(x["image"])[0]
    assert crop.shape == (299, 299, 3)
    np.testing.assert_array_equal(np.asarray(x["valid_size"]), [[299, 299]])
    im = imgs[0].astype(np.float32)
    found = [(y0, x0, f) for f in (False, True) for y0 in range(22) for x0 in range(102)
             if np.array_equal((im[:, ::-1] if f else im)[y0:y0 + 299][:, (101 - x0 if f else x0):][:, :299], crop)]
    assert len(found) == 1
    # resize: 340 x 340 then 299 crops; 20 seeded test views
    v = [np.asarray(b["image"]) for b in evaluation_views(ids, mode="resize", batch_size=8, seed=3)]
    v = np.concatenate(v)
    assert v.shape == (40, 299, 299, 3) and n_test_views("resize") == 20
    v2 = np.concatenate([np.asarray(b["image"]) for b in evaluation_views(ids, mode="resize", batch_size=8, seed=3)])
    np.testing.assert_array_equal(v, v2)
    assert not np.array_equal(v[0], v[1])
    # resized pad: longer side scaled to 299 (also up), aspect kept, padded
    x, _ = next(iter(canvas_dataset(ids, mode="resized_pad", augment="none", training=False, batch_size=2)))
    np.testing.assert_array_equal(np.asarray(x["valid_size"]), [[239, 299], [299, 224]])
    assert np.asarray(x["image"]).shape == (2, 299, 299, 3)
    with pytest.raises(ValueError, match="mode"):
        canvas_dataset(ids, mode="crop")
    with pytest.raises(ValueError, match="augment"):
        canvas_dataset(ids, augment="rotate")


def test_unreadable_images_are_skipped(tmp_path):
    ids, _ = write_images(tmp_path, [(40, 40), (30, 50)], seed=5)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    ids = pd.concat([ids.iloc[:1], ids.iloc[:1].assign(image_path=str(bad), image_id="bad"), ids.iloc[1:]])
    got = [tuple(s) for b in canvas_dataset(ids, canvas=64, training=False, augment="none")
           for s in np.asarray(b[0]["valid_size"])]
    assert got == [(40, 40), (30, 50)]


def test_targets_from_moments_when_histogram_is_missing():
    df = pd.DataFrame({"image_id": ["a", "b"], "mos": [4.0, 5.5], "std": [1.0, 0.8],
                       **{f"dist_{k}": [np.nan, 1 / 7] for k in range(1, 8)}})
    t = targets_from_ids(df)
    assert t.shape == (2, 7)
    np.testing.assert_allclose(t[1], 1 / 7, rtol=1e-6)
    np.testing.assert_allclose(t[0].sum(), 1, rtol=1e-6)
    assert abs(float(t[0] @ np.arange(1, 8)) - 4.0) < 0.05  # a discretised N(4, 1)
    assert t[0].argmax() == 3


def test_special_files_are_refused_not_read(tmp_path):
    """A named pipe (or /dev/zero behind a link) among the paths: a ValueError naming it before any
    read (tf.io.read_file would block on the pipe forever)."""
    import os

    ids, _ = write_images(tmp_path, [(20, 30), (30, 20)])
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    link = tmp_path / "zero.png"
    os.symlink("/dev/zero", link)
    ids.loc[0, "image_path"], ids.loc[1, "image_path"] = str(fifo), str(link)
    with pytest.raises(ValueError, match=r"2 image path\(s\) are not regular files.*pipe\.png.*zero\.png"):
        canvas_dataset(ids, canvas=32, training=False)

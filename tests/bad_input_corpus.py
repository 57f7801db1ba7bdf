"""The bad-input corpus (docs/bad_input.md), as data: every case builds its files into a folder and says
what ku must do with them. tests/test_bad_input.py runs the table; docs/bad_input.md lists it
(``python tests/bad_input_corpus.py`` prints that table, so the doc can be regenerated).

A case is one of

* ``expect="ok"``: ku reads it (``check`` verifies the result against a reference: OpenCV,
  Pillow, or numpy from the documented conversion);
* ``expect="error"``: an exception of type ``error`` whose message contains every string in
  ``mention`` (formatted with the case's parameters: ``{path}`` is the bad file, etc.), i.e.
  names the file / line / argument;
* ``expect="skip"``: batch work skips the bad item, processes every good one and reports the
  bad one (``check`` verifies both).

CLI cases (``group="cli"``) run ``scripts/*.py`` as subprocesses: the exit status must be 2 (ku.absl_app),
stderr must hold every ``mention`` string and no Python traceback.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOOD_AVA = "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396"
AVA_FILE = "AVA.txt"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    group: str  # "image", "labels", "store", "cli", "batch"
    what: str  # the bad input (for the docs table)
    outcome: str  # what ku does with it (for the docs table)
    make: Callable  # make(folder: Path) -> dict of parameters (at least "path")
    run: Callable | None  # run(params) -> result; None for CLI cases (params["argv"] is run)
    expect: str  # "ok" | "error" | "skip"
    error: type | tuple | None = None
    mention: tuple = ()
    check: Callable | None = None  # check(result, params) for "ok" / "skip"


# ---------------------------------------------------------------------------------------------
# image builders

def pattern(h=48, w=64, seed=0):
    """Quadrants of different colours (orientation visible) plus a little noise."""
    rng = np.random.default_rng(seed)
    im = rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
    im[: h // 2, : w // 2] += np.uint8([200, 0, 0])
    im[: h // 2, w // 2:] += np.uint8([0, 200, 0])
    im[h // 2:, : w // 2] += np.uint8([0, 0, 200])
    im[h // 2:, w // 2:] += np.uint8([200, 200, 0])
    return im


def write_cv(path, rgb_or_grey, params=()):
    a = rgb_or_grey[..., ::-1] if rgb_or_grey.ndim == 3 and rgb_or_grey.shape[2] == 3 else rgb_or_grey
    ok, enc = cv2.imencode(Path(path).suffix if Path(path).suffix in (".png", ".jpg", ".bmp") else ".png",
                           a, list(params))
    assert ok
    Path(path).write_bytes(enc.tobytes())
    return Path(path)


def jpeg_bytes(rgb, quality=90):
    ok, enc = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return enc.tobytes()


def _file(name, data):
    def make(d):
        p = d / name
        p.write_bytes(data() if callable(data) else data)
        return {"path": str(p)}
    return make


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_grey_png(path, height=9000, width=12000, value=90):
    """A real, valid 12000 x 9000 grey PNG of one colour, written without ever holding the
    pixels in memory (rows of the 'Up' filter are all zero after the first: ~100 kB file)."""
    comp = zlib.compressobj(1)
    body = [comp.compress(b"\x00" + bytes([value]) * width)]
    zero_row = b"\x02" + bytes(width)
    body += [comp.compress(zero_row) for _ in range(height - 1)]
    body.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(body)) \
        + _png_chunk(b"IEND", b"")
    Path(path).write_bytes(data)
    return Path(path)


def huge_png_bytes(height, width):
    """A PNG whose header says ``height x width`` with a one-row body (only readers that decode
    before checking the header notice; the size limit refuses it unread)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _png_chunk(b"IEND", b""))


def jpeg_with_header_size(height, width):
    """A small valid JPEG whose SOF header claims ``height x width`` (the header trick: readers
    that trust the header refuse it without decoding)."""
    data = bytearray(jpeg_bytes(pattern(16, 16)))
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def _exif(orientation):
    from PIL import Image

    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


# ---------------------------------------------------------------------------------------------
# runners / checks for images

def _read(**kw):
    def run(p):
        from ku.data.images import read_image

        return read_image(p["path"], **kw)
    return run


def _rgb(im, shape=None):
    assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 and im.flags.c_contiguous
    if shape is not None:
        assert im.shape[:2] == shape, (im.shape, shape)


def _same_as_pil(max_mean_diff=0.0):
    def check(im, p):
        from PIL import Image

        ref = np.asarray(Image.open(p["path"]).convert("RGB"))
        _rgb(im, ref.shape[:2])
        assert np.abs(im.astype(int) - ref).mean() <= max_mean_diff
    return check


def _same_as_cv_color(im, p):
    """Equal to OpenCV's IMREAD_COLOR (which applies the EXIF orientation itself)."""
    ref = cv2.imdecode(np.fromfile(p["path"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(im, ref)


def _mk_cmyk(d):
    from PIL import Image

    p = d / "cmyk.jpg"
    Image.fromarray(pattern()).convert("CMYK").save(p, quality=95)
    return {"path": str(p)}


def _mk_16bit(d):
    v = np.linspace(0, 65535, 48 * 64 * 3).astype(np.uint16).reshape(48, 64, 3)
    p = write_cv(d / "deep.png", v)
    return {"path": str(p), "ref": np.rint(v.astype(np.float64) * 255 / 65535).astype(np.uint8)}


def _mk_grey(ext):
    def make(d):
        g = pattern()[..., 1]
        return {"path": str(write_cv(d / f"grey{ext}", g)), "grey": g}
    return make


def _check_grey(exact):
    def check(im, p):
        _rgb(im, p["grey"].shape)
        assert (im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all()
        if exact:
            np.testing.assert_array_equal(im[..., 0], p["grey"])
        else:
            assert np.abs(im[..., 0].astype(int) - p["grey"]).mean() < 3
    return check


def _mk_rgba(d):
    from PIL import Image

    rgb = pattern()
    a = np.zeros((48, 64), np.uint8)
    a[:, 32:] = 255
    a[:, 16:32] = 100
    p = d / "rgba.png"
    Image.fromarray(np.dstack([rgb, a]), "RGBA").save(p)
    al = a[..., None] / 255.0
    return {"path": str(p), "ref": np.rint(rgb * al + 255 * (1 - al)).astype(np.uint8)}


def _mk_palette(transparency):
    def make(d):
        from PIL import Image

        p = d / ("palette_trns.png" if transparency else "palette.png")
        im = Image.fromarray(pattern()).convert("P")
        if transparency:  # four flat quadrants; the top-left one's colour is transparent
            flat = np.zeros((48, 64, 3), np.uint8)
            flat[:24, :32], flat[:24, 32:], flat[24:, :32], flat[24:, 32:] = (
                (200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30))
            im = Image.fromarray(flat).convert("P", palette=Image.ADAPTIVE, colors=4)
            im.save(p, transparency=im.getpixel((0, 0)))
        else:
            im.save(p)
        return {"path": str(p)}
    return make


def _check_palette_on_white(im, p):
    """tRNS transparency composited on white, exactly as an alpha channel (Pillow's RGBA)."""
    from PIL import Image

    rgba = np.asarray(Image.open(p["path"]).convert("RGBA")).astype(np.float64)
    a = rgba[..., 3:4] / 255.0
    assert (a == 0).mean() > 0.1  # the case has transparent pixels, so the check can fail
    np.testing.assert_array_equal(im, np.rint(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8))
    import tensorflow as tf

    from ku.export import decode_image_uint8_tf

    np.testing.assert_array_equal(decode_image_uint8_tf(tf.constant(Path(p["path"]).read_bytes())), im)


def _mk_gif(d):
    from PIL import Image

    frames = [Image.fromarray(np.full((30, 40, 3), c, np.uint8)) for c in ((10, 120, 200), (200, 0, 0), (0, 90, 0))]
    p = d / "animated.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {"path": str(p)}


def _check_first_frame(im, p):
    from PIL import Image

    ref = np.asarray(Image.open(p["path"]).convert("RGB"))  # Pillow opens at frame 0
    _rgb(im, (30, 40))
    assert np.abs(im.astype(int) - ref).max() <= 2
    assert np.abs(im[0, 0].astype(int) - [10, 120, 200]).max() <= 8  # the first frame's colour


def _mk_exif(o):
    def make(d):
        from PIL import Image

        p = d / f"exif_{o}.jpg"
        Image.fromarray(pattern()).save(p, "JPEG", quality=95, exif=_exif(o))
        return {"path": str(p), "o": o}
    return make


def _check_exif(im, p):
    _same_as_cv_color(im, p)
    _rgb(im, (48, 64) if p["o"] <= 4 else (64, 48))


def _mk_size(h, w, name):
    def make(d):
        return {"path": str(write_cv(d / name, np.full((h, w, 3), 77, np.uint8)))}
    return make


def _mk_huge_png(d):
    return {"path": str(huge_grey_png(d / "huge_12000x9000.png"))}


def _mk_png_as_jpg(d):
    im = pattern()
    p = d / "really_a_png.jpg"
    ok, enc = cv2.imencode(".png", im[..., ::-1])
    p.write_bytes(enc.tobytes())
    return {"path": str(p), "ref": im}


def _mk_jpeg_as_txt(d):
    p = d / "photo.txt"
    p.write_bytes(jpeg_bytes(pattern()))
    return {"path": str(p)}


def _mk_unreadable(d):
    p = d / "secret.jpg"
    p.write_bytes(jpeg_bytes(pattern()))
    p.chmod(0)
    return {"path": str(p)}


def _run_unreadable(p):
    """chmod 000 blocks reading except for root (tests may run as root): there, the permission
    error the OS would raise is injected at the read call."""
    from unittest import mock

    from ku.data.images import read_image

    if hasattr(os, "geteuid") and os.geteuid() == 0:
        def denied(path, *a, **k):
            raise PermissionError(13, "Permission denied", str(path))
        with mock.patch("ku.data.images._open_readonly", denied):
            return read_image(p["path"])
    return read_image(p["path"])


def _mk_dir_jpg(d):
    p = d / "folder.jpg"
    p.mkdir()
    return {"path": str(p)}


def _mk_broken_link(d):
    p = d / "link.jpg"
    os.symlink(d / "gone.jpg", p)
    return {"path": str(p), "target": str(d / "gone.jpg")}


# ---------------------------------------------------------------------------------------------
# batch work: extraction over a folder with bad files among good ones

def tiny_extractor(min_side=75):
    """A small Keras CNN standing in for the MLSP extractor (fixed weights), declaring the
    Inception minimum input side through ``ku_min_side`` (as ku.extraction reads it)."""
    import keras

    inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    out = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, out, name="tiny_extractor")
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    model.ku_min_side = min_side
    return model


def _mk_folder(d):
    """6 good images (86..100 px) + every kind of bad file a real folder / AVA download holds."""
    rng = np.random.default_rng(3)
    good = []
    for i in range(6):
        h, w = (int(v) for v in rng.integers(86, 101, size=2))
        good.append(str(write_cv(d / f"good{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))))
    data = jpeg_bytes(pattern(90, 90))
    bad = {
        "truncated.jpg": lambda p: p.write_bytes(data[: len(data) // 2]),
        "empty.jpg": lambda p: p.write_bytes(b""),
        "page.jpg": lambda p: p.write_text("<html><body>404 Not Found</body></html>"),
        "tiny.png": lambda p: write_cv(p, np.zeros((10, 10, 3), np.uint8)),
        "huge.jpg": lambda p: p.write_bytes(jpeg_with_header_size(9000, 12000)),
        "folder.jpg": lambda p: p.mkdir(),
        "link.jpg": lambda p: os.symlink(d / "nowhere.jpg", p),
        "missing.jpg": lambda p: None,
    }
    bad_paths = []
    for name, fn in bad.items():
        fn(d / name)
        bad_paths.append(str(d / name))
    table = {Path(p).stem: p for p in good[:3] + bad_paths[:4] + good[3:] + bad_paths[4:]}
    return {"path": str(d), "table": table, "good": good, "bad": bad_paths, "store": str(d / "store.h5")}


def _run_extract_folder(p):
    from ku.extraction import extract_features

    return extract_features(p["table"], p["store"], tiny_extractor(), progress=False, max_pixels=50_000_000,
                            augmentations=["crop_tl", "crop_br_flip"])


def _check_extract_folder(report, p):
    from ku.data.store import FeatureStore

    ids = list(p["table"])
    good_ids = [Path(g).stem for g in p["good"]]
    bad_ids = [Path(b).stem for b in p["bad"]]
    assert report.n_done == len(good_ids) and report.n_failed == len(bad_ids)
    failed = {f["image_id"]: f["error"] for f in report.failed}
    assert sorted(failed) == sorted(bad_ids)
    for b in p["bad"]:  # every failure names its file and says why
        assert b in failed[Path(b).stem], failed[Path(b).stem]
    assert "truncated" in failed["truncated"] and "10x10" in failed["tiny"] and "75 px" in failed["tiny"]
    assert "max_pixels" in failed["huge"] and "broken symbolic link" in failed["link"]
    with FeatureStore(p["store"]) as s:
        complete, flagged = s.complete_mask(), s.failed_mask()
        assert [ids[i] for i in np.flatnonzero(complete)] == good_ids
        assert [ids[i] for i in np.flatnonzero(flagged)] == [i for i in ids if i in bad_ids]
        x = s.read(s.index_of(good_ids), "all")
        assert np.isfinite(x).all() and np.abs(x).sum() > 0


def _run_check_images(p):
    from ku.data.images import check_images

    return check_images(p["path"], min_side=75, max_pixels=50_000_000)


def _check_check_images(df, p):
    # list_images picks files by extension (the folder named .jpg is not a file, the missing file
    # is not there); every bad file, the broken link included, is listed with its reason
    listed = {Path(x).name: e for x, e in zip(df["path"], df["error"])}
    assert sorted(listed) == ["empty.jpg", "huge.jpg", "link.jpg", "page.jpg", "tiny.png", "truncated.jpg"]
    assert "0 bytes" in listed["empty.jpg"] and "not an image" in listed["page.jpg"]
    assert "broken symbolic link" in listed["link.jpg"] and "min_side=75" in listed["tiny.png"]


# ---------------------------------------------------------------------------------------------
# label files

def _ava(lines, vocabulary=None, split=None, test_list=True, images=True, raw=None):
    """An AVA folder; ``lines`` replace the good line (line 2 is the bad one unless stated)."""
    def make(d):
        (d / "images").mkdir()
        (d / "aesthetics_image_lists").mkdir()
        if test_list:
            (d / "aesthetics_image_lists" / "generic_test.jpgl").write_text("953619\n")
        if raw is not None:
            (d / AVA_FILE).write_bytes(raw)
        else:
            (d / AVA_FILE).write_text("".join(line + "\n" for line in lines))
            for line in lines:
                tok = line.split()
                if images and len(tok) > 1:
                    (d / "images" / f"{tok[1]}.jpg").write_bytes(b"\xff\xd8\xff")
        return {"path": str(d / AVA_FILE), "root": str(d), "vocabulary": vocabulary, "split": split}
    return make


def _ava_utf16(d):
    params = _ava([], raw=(GOOD_AVA + "\n").encode("utf-16"))(d)
    (d / "images" / "953619.jpg").write_bytes(b"\xff\xd8\xff")
    return params


def _run_ava(p):
    from ku.data.readers import read_ava

    return read_ava(p["root"], split=p["split"], vocabulary=p["vocabulary"])


def _ava_bad(line2):
    return _ava([GOOD_AVA, line2])


def _csv(text, name="labels.csv", encoding="utf-8", files=True, **kw):
    def make(d):
        p = d / name
        p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
        if files:
            for i in "abcdefgh":
                (d / f"{i}.jpg").write_bytes(b"\xff\xd8\xff")
        return {"path": str(p), "kw": kw}
    return make


def _run_csv(p):
    from ku.data.readers import read_label_csv

    return read_label_csv(p["path"], **p["kw"])


def _run_photonet(p):
    from ku.data.readers import read_photonet

    return read_photonet(p["path"], check_files=False)


# ---------------------------------------------------------------------------------------------
# feature stores

def _store(d, name="s.h5", n=4, fs=(8,), attrs=None):
    from ku.data.store import FeatureStore

    p = d / name
    with FeatureStore.create(p, [f"i{k}" for k in range(n)], 2, fs, attrs=attrs or {"backbone": "b1"},
                             augmentations=["crop_tl", "crop_tl_flip"]) as s:
        s.write_rows(0, np.ones((n - 1, 2) + fs, np.float32))
    return p


def _mk_store(**kw):
    def make(d):
        return {"path": str(_store(d, **kw))}
    return make


def _mk_store_cut(keep):
    def make(d):
        p = _store(d, n=64, fs=(256,))
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])
        return {"path": str(p)}
    return make


def _mk_store_without(dataset):
    def make(d):
        import h5py

        p = _store(d)
        with h5py.File(p, "a") as f:
            del f[dataset]
        return {"path": str(p)}
    return make


def _mk_not_ku_h5(d):
    import h5py

    p = d / "other.h5"
    with h5py.File(p, "w") as f:
        f["features"] = np.zeros((2, 3))
    return {"path": str(p)}


def _open_store(p):
    from ku.data.store import FeatureStore

    with FeatureStore(p["path"]) as s:
        return s.n_rows


def _run_head_check(p):
    import keras

    from ku.data.store import FeatureStore

    head = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1)], name="narrow_head")
    with FeatureStore(p["path"]) as s:
        s.check_model_input(head, what="head")


def _run_aug_by_name(p):
    from ku.data.store import FeatureStore

    with FeatureStore(p["path"]) as s:
        return s.augmentation_index("crop_br")


def _run_sequence(ids):
    def run(p):
        from ku.data.generators import FeatureSequence

        return FeatureSequence(p["path"], ids, np.zeros(len(ids)), batch_size=2)
    return run


def _mk_store_other_backbone(d):
    """An existing store of backbone 'b1'; extraction asked to continue it for 'b2'."""
    rng = np.random.default_rng(0)
    paths = {f"im{i}": str(write_cv(d / f"im{i}.png", rng.integers(0, 255, (90, 90, 3), dtype=np.uint8)))
             for i in range(2)}
    return {"path": str(d / "feat.h5"), "table": paths}


def _run_resume_other_backbone(p):
    from ku.extraction import extract_features

    ex = tiny_extractor()
    extract_features(p["table"], p["path"], ex, attrs={"backbone": "b1"}, progress=False,
                     augmentations=["original"])
    extract_features(p["table"], p["path"], ex, attrs={"backbone": "b2"}, progress=False,
                     augmentations=["original"])


# ---------------------------------------------------------------------------------------------
# command lines

def _cli(script, *args, setup=None):
    def make(d):
        (d / "afile").write_text("a file, not a folder\n")
        (d / "labels.csv").write_text("image_id,mos\na,5\n")
        (d / "head.keras").write_bytes(b"not really a model")
        if setup:
            setup(d)
        argv = [a.format(d=d) for a in args]
        return {"path": str(d), "argv": [sys.executable, str(ROOT / "scripts" / script), *argv],
                "d": str(d)}
    return make


def _bad_labels(d):
    (d / "bad.csv").write_text("image_id,mos\na,5\nb,not-a-number\n")


# ---------------------------------------------------------------------------------------------
# the table

def _E(cls_name):
    """Exception classes, imported lazily (keeps importing this module light)."""
    def get():
        import importlib

        mod, _, name = cls_name.rpartition(".")
        return getattr(importlib.import_module(mod), name)
    return get


# ---------------------------------------------------------------------------------------------
# the exported serving signature and ku predict (size policy, non-images, named pipes)

_MODULES = {}


def _toy_module(**kw):
    """The serving graph (ku.export) around a tiny image model, built once per keyword set."""
    key = tuple(sorted(kw.items()))
    if key not in _MODULES:
        import keras

        from ku.export import make_scoring_module

        inp = keras.Input((None, None, 3))
        x = keras.layers.Conv2D(4, 3, strides=2, kernel_initializer=keras.initializers.RandomNormal(
            0, 0.05, seed=1))(inp)
        out = keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomNormal(0, 1, seed=2))(
            keras.layers.GlobalMaxPooling2D()(x))
        _MODULES[key] = make_scoring_module(keras.Model(inp, out, name="corpus_toy"), family="mlsp", **kw)
    return _MODULES[key]


def _png_bytes(h, w, value=90):
    return cv2.imencode(".png", np.full((h, w, 3), value, np.uint8))[1].tobytes()


def _serve_bytes(make_bytes):
    """The case's bytes at index 1 of a serving_default batch between two good PNGs."""
    def make(d):
        p = d / "request.bin"
        p.write_bytes(make_bytes())
        return {"path": str(p)}
    return make


def _run_serving(**kw):
    def run(p):
        import tensorflow as tf

        data = Path(p["path"]).read_bytes()
        return _toy_module(**kw).predict_bytes(tf.constant([_png_bytes(80, 80), data, _png_bytes(90, 80)]))
    return run


def _run_serving_cmyk(p):
    import tensorflow as tf

    from ku.data.images import read_image
    from ku.export import decode_image_uint8_tf

    graph = decode_image_uint8_tf(tf.constant(Path(p["path"]).read_bytes())).numpy()
    return graph.astype(int) - read_image(p["path"]).astype(int)


def _check_cmyk_difference(diff, p):
    """TensorFlow's and OpenCV's libjpeg builds convert CMYK differently: the in-graph pixels are
    off by at most 2 grey levels (measured 2026-11-29: 1 everywhere), never bit-identical."""
    assert 0 < np.abs(diff).max() <= 2, np.abs(diff).max()


def _mk_predict_fifo(d):
    import keras

    folder = _mkdir(d / "photos")
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(folder / name), pattern(80, 90))
    os.mkfifo(folder / "pipe.jpg")
    inp = keras.Input((None, None, 3))
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(inp))
    keras.Model(inp, out, name="fifo_toy").save(d / "toy.keras")
    return {"path": str(folder / "pipe.jpg"), "folder": str(folder), "model": str(d / "toy.keras"),
            "out": str(d / "scores.csv")}


def _run_predict(p):
    from ku import cli

    rc = cli.main(["predict", p["folder"], "--model", p["model"], "--out", p["out"], "-q"])
    import pandas as pd

    return rc, pd.read_csv(p["out"]), pd.read_csv(p["out"] + ".errors.csv")


def _check_predict_fifo(result, p):
    rc, scores, errors = result
    assert rc == 3 and len(scores) == 2, (rc, scores)
    assert errors["image_path"].tolist() == [p["path"]] and "not a regular file" in errors["error"][0]


def _check_small_upscaled(out, p):
    import tensorflow as tf

    module = _toy_module()
    ref = module.predict_images(tf.image.resize(np.full((1, 2, 3, 3), 90, np.float32), (75, 112),
                                                method="bilinear"))["mean_score"].numpy()
    got = out["mean_score"].numpy()
    assert np.isfinite(got).all() and abs(got[1] - ref[0]) <= 1e-5 * max(1.0, abs(ref[0])), (got, ref)


def _ppm_bytes():
    return b"P6\n4 3\n255\n" + bytes(range(36))


def _tiff_bytes():
    return cv2.imencode(".tiff", pattern())[1].tobytes()


def _random_bytes():
    return np.random.default_rng(7).integers(0, 256, 300, dtype=np.uint8).tobytes()


SERVING = "serving_default: images[1]"


IRE = "ku.data.images.ImageReadError"
FSE = "ku.data.store.FeatureStoreError"
CMYK_NOTE = "CMYK JPEG (Adobe)"

_CASES = [
    # -- images -----------------------------------------------------------------------------
    Case("image/truncated_jpeg", "image", "JPEG cut in the middle (interrupted download)",
         "ImageReadError naming the file: truncated JPEG (no end-of-image marker)",
         _file("cut.jpg", lambda: jpeg_bytes(pattern(96, 96))[:1500]), _read(), "error", IRE, ("{path}", "truncated")),
    Case("image/truncated_png", "image", "PNG cut in the middle", "ImageReadError: truncated PNG (no IEND chunk)",
         _file("cut.png", lambda: cv2.imencode(".png", pattern())[1].tobytes()[:300]), _read(), "error", IRE,
         ("{path}", "truncated PNG")),
    Case("image/zero_bytes", "image", "empty file (0 bytes)", "ImageReadError: empty file (0 bytes)",
         _file("empty.jpg", b""), _read(), "error", IRE, ("{path}", "0 bytes")),
    Case("image/html_as_jpg", "image", "HTML error page saved as .jpg (dead link)",
         "ImageReadError: not an image (shows the first bytes)",
         _file("page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>"), _read(), "error", IRE,
         ("{path}", "not an image", "<!DOCTYP")),
    Case("image/text_as_png", "image", "plain text saved as .png", "ImageReadError: not an image",
         _file("notes.png", b"hello\n"), _read(), "error", IRE, ("{path}", "not an image")),
    Case("image/cmyk_jpeg", "image", CMYK_NOTE, "read, converted to RGB (as Pillow does, mean abs. difference < 2)",
         _mk_cmyk, _read(), "ok", check=_same_as_pil(2.0)),
    Case("image/png_16bit", "image", "16-bit RGB PNG", "read; scaled round(x * 255 / 65535) to 8 bit",
         _mk_16bit, _read(), "ok", check=lambda im, p: np.testing.assert_array_equal(im, p["ref"])),
    Case("image/grey_png", "image", "greyscale PNG", "read; grey replicated to 3 channels",
         _mk_grey(".png"), _read(), "ok", check=_check_grey(True)),
    Case("image/grey_jpeg", "image", "greyscale JPEG", "read; grey replicated to 3 channels",
         _mk_grey(".jpg"), _read(), "ok", check=_check_grey(False)),
    Case("image/rgba_png", "image", "RGBA PNG (transparency)", "read; composited on white",
         _mk_rgba, _read(), "ok", check=lambda im, p: np.testing.assert_array_equal(im, p["ref"])),
    Case("image/palette_png", "image", "palette (indexed) PNG", "read; palette expanded to RGB (= Pillow)",
         _mk_palette(False), _read(), "ok", check=_same_as_pil(0.0)),
    Case("image/palette_png_trns", "image", "palette PNG with a transparent colour (tRNS)",
         "read; transparent pixels composited on white (as an alpha channel; the same in the "
         "exported model)", _mk_palette(True), _read(), "ok", check=_check_palette_on_white),
    Case("image/animated_gif", "image", "animated GIF (3 frames)", "read; the first frame (GIFs are not "
         "picked up by list_images)", _mk_gif, _read(), "ok", check=_check_first_frame),
    *[Case(f"image/exif_orientation_{o}", "image", f"JPEG with EXIF orientation {o}",
           "read; rotated/mirrored to display orientation (= OpenCV IMREAD_COLOR)", _mk_exif(o), _read(), "ok",
           check=_check_exif) for o in range(1, 9)],
    Case("image/1x1_min_side", "image", "1 x 1 image, read for a backbone (min_side=75)",
         "ImageReadError: smaller than min_side (refused, not upscaled)", _mk_size(1, 1, "pixel.png"),
         _read(min_side=75), "error", IRE, ("{path}", "1x1", "min_side=75")),
    Case("image/10x10_min_side", "image", "10 x 10 image, read for a backbone (min_side=75)",
         "ImageReadError: smaller than min_side (refused, not upscaled)", _mk_size(10, 10, "thumb.png"),
         _read(min_side=75), "error", IRE, ("{path}", "10x10", "min_side=75")),
    Case("image/10x10_plain_read", "image", "10 x 10 image, plain read_image (no min_side)",
         "read as is (the policy applies where a backbone needs a minimum)", _mk_size(10, 10, "thumb.png"),
         _read(), "ok", check=lambda im, p: _rgb(im, (10, 10))),
    Case("image/huge_png_12000x9000", "image", "valid 12000 x 9000 PNG (108 Mpx, 1 colour, ~100 kB file)",
         "ImageReadError from the header, before decoding: over max_pixels (no out-of-memory)",
         _mk_huge_png, _read(max_pixels=50_000_000), "error", IRE, ("{path}", "9000x12000", "max_pixels=50,000,000")),
    Case("image/huge_jpeg_header", "image", "JPEG whose header says 12000 x 9000",
         "ImageReadError from the header, before decoding: over max_pixels",
         _file("huge.jpg", lambda: jpeg_with_header_size(9000, 12000)), _read(max_pixels=50_000_000), "error", IRE,
         ("{path}", "108,000,000 pixels")),
    Case("image/png_named_jpg", "image", "PNG saved with a .jpg extension", "read (format sniffed from the content)",
         _mk_png_as_jpg, _read(), "ok", check=lambda im, p: np.testing.assert_array_equal(im, p["ref"])),
    Case("image/jpeg_named_txt", "image", "JPEG with a .txt extension", "read_image reads it (content "
         "sniffed); list_images skips it (not an image extension)", _mk_jpeg_as_txt, _read(), "ok",
         check=lambda im, p: _rgb(im, (48, 64))),
    Case("image/unreadable_permissions", "image", "file without read permission (chmod 000)",
         "ImageReadError: cannot read file: PermissionError (simulated when the tests run as root)",
         _mk_unreadable, _run_unreadable, "error", IRE, ("{path}", "Permission denied")),
    Case("image/directory_named_jpg", "image", "a folder named x.jpg", "ImageReadError: is a directory",
         _mk_dir_jpg, _read(), "error", IRE, ("{path}", "directory")),
    Case("image/broken_symlink", "image", "symbolic link to a missing file",
         "FileNotFoundError naming the link and its target", _mk_broken_link, _read(), "error", FileNotFoundError,
         ("{path}", "broken symbolic link", "{target}")),
    Case("image/missing_file", "image", "file does not exist", "FileNotFoundError naming the file",
         lambda d: {"path": str(d / "nope.jpg")}, _read(), "error", FileNotFoundError, ("{path}",)),
    # -- batch work -------------------------------------------------------------------------
    Case("batch/extract_folder_with_bad_files", "batch",
         "extraction of 14 images: 6 good + truncated, empty, HTML, 10x10, 12000x9000 header, folder, broken "
         "link, missing", "skip-and-report: the 6 good rows complete; each bad one flagged 'failed' in the store "
         "and listed in the report with its file and reason", _mk_folder, _run_extract_folder, "skip",
         check=_check_extract_folder),
    Case("batch/check_images_folder", "batch", "check_images(min_side=75, max_pixels=50M) over the same folder",
         "every bad image file (and the broken link) listed with its reason; good ones not listed", _mk_folder, _run_check_images,
         "skip", check=_check_check_images),
    # -- label files ------------------------------------------------------------------------
    Case("labels/ava_too_few_columns", "labels", "AVA.txt line with 14 fields",
         "ValueError: file, line, expected 15 fields", _ava_bad("2 953958 10 7 15 33 34 19 3 0 2 0 14 47"), _run_ava,
         "error", ValueError, ("{path}", "line 2", "expected 15", "got 14")),
    Case("labels/ava_non_numeric", "labels", "AVA.txt vote count 'x'", "ValueError: file, line, field, value",
         _ava_bad("2 953958 10 7 x 33 34 19 3 0 2 0 14 47 1396"), _run_ava, "error", ValueError,
         ("{path}", "line 2", "field 5", "'x'")),
    Case("labels/ava_nan", "labels", "AVA.txt vote count 'nan'", "ValueError: file, line, field, value",
         _ava_bad("2 953958 10 7 nan 33 34 19 3 0 2 0 14 47 1396"), _run_ava, "error", ValueError,
         ("{path}", "line 2", "'nan'")),
    Case("labels/ava_negative_votes", "labels", "AVA.txt negative vote count", "ValueError: file, line",
         _ava_bad("2 953958 10 7 -15 33 34 19 3 0 2 0 14 47 1396"), _run_ava, "error", ValueError,
         ("{path}", "line 2", "negative vote count")),
    Case("labels/ava_all_zero_votes", "labels", "AVA.txt row with no votes (all counts 0)",
         "skip-and-report: row dropped, warning, df.attrs['no_votes']",
         _ava_bad("2 953958 0 0 0 0 0 0 0 0 0 0 14 47 1396"), _run_ava, "skip",
         check=lambda df, p: _assert(df["image_id"].tolist() == ["953619"] and df.attrs["no_votes"] == ["953958"])),
    Case("labels/ava_unknown_challenge", "labels", "AVA.txt challenge id not in the given theme vocabulary",
         "theme_index 0 (unknown), warning, df.attrs['unknown_themes']",
         _ava([GOOD_AVA, "2 953958 10 7 15 33 34 19 3 0 2 0 14 47 777"], vocabulary={1396: 1}), _run_ava, "skip",
         check=lambda df, p: _assert(df.set_index("image_id").loc["953958", "theme_index"] == 0
                                     and df.attrs["unknown_themes"] == [777])),
    Case("labels/ava_duplicate_id", "labels", "AVA.txt image id twice", "ValueError: file, both lines, id",
         _ava_bad("2 953619 10 7 15 33 34 19 3 0 2 0 14 47 1396"), _run_ava, "error", ValueError,
         ("{path}", "line 2", "duplicate image id '953619'", "first on line 1")),
    Case("labels/ava_empty_file", "labels", "empty AVA.txt", "ValueError: file, no data lines",
         _ava([]), _run_ava, "error", ValueError, ("{path}", "no data lines")),
    Case("labels/ava_utf16", "labels", "AVA.txt saved as UTF-16 (with byte-order mark)",
         "read: decoded as UTF-16 (the mark says so)", _ava_utf16, _run_ava, "ok",
         check=lambda df, p: _assert(df["image_id"].tolist() == ["953619"] and df["n_votes"].tolist() == [124.0])),
    Case("labels/ava_wrong_encoding", "labels", "AVA.txt with a Latin-1 byte in an id",
         "ValueError: file, line, column, byte", _ava([], raw=(GOOD_AVA + "\n").encode() +
                                                      b"2 95\xe958 10 7 15 33 34 19 3 0 2 0 14 47 1396\n"),
         _run_ava, "error", ValueError, ("{path}", "line 2", "not valid utf-8", "column 5")),
    Case("labels/ava_missing_images", "labels", "AVA.txt lists an image that is not on disk",
         "skip-and-report: row dropped, warning with the count and ids, df.attrs['missing']",
         _ava([GOOD_AVA, "2 953958 10 7 15 33 34 19 3 0 2 0 14 47 1396"], images=False), _run_ava, "skip",
         check=lambda df, p: _assert(len(df) == 0 and df.attrs["missing"] == ["953619", "953958"])),
    Case("labels/ava_missing_test_list", "labels", "split='hosu' without the official test list",
         "FileNotFoundError naming generic_test.jpgl", _ava([GOOD_AVA], split="hosu", test_list=False), _run_ava,
         "error", FileNotFoundError, ("generic_test.jpgl", "split='hosu'")),
    Case("labels/csv_missing_column", "labels", "CSV without the mos column", "ValueError: file, column",
         _csv("image_id,score\na,5\n"), _run_csv, "error", ValueError, ("{path}", "required column 'mos'")),
    Case("labels/csv_empty_file", "labels", "empty CSV (0 bytes)", "ValueError: file, no data lines",
         _csv(""), _run_csv, "error", ValueError, ("{path}", "no data lines")),
    Case("labels/csv_header_only", "labels", "CSV with a header and no rows", "ValueError: file, no data lines",
         _csv("image_id,mos\n"), _run_csv, "error", ValueError, ("{path}", "no data lines")),
    Case("labels/csv_nan_mos", "labels", "CSV with an empty / NaN mos", "ValueError: file, line, column",
         _csv("image_id,mos\na,5\nb,\nc,nan\n"), _run_csv, "error", ValueError, ("{path}", "line 3", "'mos'")),
    Case("labels/csv_non_numeric", "labels", "CSV mos 'x'", "ValueError: file, line, column, value",
         _csv("image_id,mos\na,5\nb,x\n"), _run_csv, "error", ValueError, ("{path}", "line 3", "'mos'", "'x'")),
    Case("labels/csv_infinite", "labels", "CSV mos 'inf'", "ValueError: file, line, column",
         _csv("image_id,mos\na,inf\n"), _run_csv, "error", ValueError, ("{path}", "line 2", "'mos'")),
    Case("labels/csv_negative_votes", "labels", "CSV n_votes -3", "ValueError: file, line, column",
         _csv("image_id,mos,n_votes\na,5,10\nb,4,-3\n"), _run_csv, "error", ValueError,
         ("{path}", "line 3", "'n_votes'", ">= 0")),
    Case("labels/csv_negative_histogram", "labels", "CSV vote histogram with a negative count",
         "ValueError: file, line, column", _csv("image_id,dist_1,dist_2\na,1,2\nb,-1,2\n"), _run_csv, "error",
         ValueError, ("{path}", "line 3", "'dist_1'")),
    Case("labels/csv_all_zero_histogram", "labels", "CSV vote histogram all zero",
         "skip-and-report: row dropped, warning, df.attrs['no_votes']",
         _csv("image_id,dist_1,dist_2\na,1,2\nb,0,0\n"), _run_csv, "skip",
         check=lambda df, p: _assert(df["image_id"].tolist() == ["a"] and df.attrs["no_votes"] == ["b"])),
    Case("labels/csv_extra_field", "labels", "CSV line with more fields than the header",
         "ValueError: file, line, field counts (pandas would silently shift the columns)",
         _csv("image_id,mos\na,5\nb,4,7\n"), _run_csv, "error", ValueError, ("{path}", "line 3", "3 field(s)")),
    Case("labels/csv_missing_field", "labels", "CSV line with fewer fields than the header",
         "ValueError: file, line, field counts", _csv("image_id,mos,set\na,5,test\nb,4\n"), _run_csv, "error",
         ValueError, ("{path}", "line 3", "2 field(s)")),
    Case("labels/csv_wrong_encoding", "labels", "CSV in Latin-1 read as UTF-8", "ValueError: file, line",
         _csv("image_id,mos\nb,4\nä,5\n", encoding="latin-1", check_files=False), _run_csv, "error", ValueError,
         ("{path}", "line 3", "not valid utf-8")),
    Case("labels/csv_latin1_declared", "labels", "the same CSV with encoding='latin-1'", "read",
         _csv("image_id,mos\nb,4\nä,5\n", encoding="latin-1"), None, "ok"),
    Case("labels/csv_utf8_bom", "labels", "CSV with a UTF-8 byte-order mark (Excel)", "read; BOM dropped",
         _csv("\ufeffimage_id,mos\na,5\n"), _run_csv, "ok",
         check=lambda df, p: _assert(df["image_id"].tolist() == ["a"])),
    Case("labels/csv_duplicate_ids", "labels", "CSV image id twice", "ValueError: file, both lines",
         _csv("image_id,mos\na,5\nb,4\na,3\n"), _run_csv, "error", ValueError,
         ("{path}", "line 4", "duplicate image id 'a'", "first on line 2")),
    Case("labels/csv_bad_set", "labels", "CSV set value 'train'", "ValueError: file, line, allowed values",
         _csv("image_id,mos,set\na,5,train\n"), _run_csv, "error", ValueError, ("{path}", "line 2", "'set'")),
    Case("labels/csv_non_integer_theme", "labels", "CSV theme (challenge id) 'x'", "ValueError: file, line",
         _csv("image_id,mos,theme\na,5,x\n", theme_column="theme"), _run_csv, "error", ValueError,
         ("{path}", "line 2", "'theme'")),
    Case("labels/csv_missing_images", "labels", "CSV lists images not on disk",
         "skip-and-report: rows dropped, warning, df.attrs['missing']", _csv("image_id,mos\na,5\nzz,4\n"), _run_csv,
         "skip", check=lambda df, p: _assert(df["image_id"].tolist() == ["a"] and df.attrs["missing"] == ["zz"])),
    Case("labels/photonet_empty", "labels", "empty Photo.net label file", "ValueError: file, no data lines",
         _csv("", name="photonet.txt"), _run_photonet, "error", ValueError, ("{path}", "no data lines")),
    Case("labels/photonet_nan", "labels", "Photo.net mean 'nan'", "ValueError: file, line, field",
         _csv("2000 4 1\n2001 nan 1\n", name="photonet.txt"), _run_photonet, "error", ValueError,
         ("{path}", "line 2", "not a finite number")),
    # -- feature stores ---------------------------------------------------------------------
    Case("store/wrong_shape_for_head", "store", "store of (8,) features, head expecting (16,)",
         "FeatureStoreError (FeatureStore.check_model_input): file, head, both shapes, backbone",
         _mk_store(), _run_head_check, "error", FSE, ("{path}", "narrow_head", "(16,)", "(8,)", "b1")),
    Case("store/missing_complete_dataset", "store", "store without its 'complete' dataset",
         "FeatureStoreError: file, dataset missing", _mk_store_without("complete"), _open_store, "error", FSE,
         ("{path}", "'complete' missing")),
    Case("store/missing_features_dataset", "store", "store without its 'features' dataset",
         "FeatureStoreError: file, dataset missing", _mk_store_without("features"), _open_store, "error", FSE,
         ("{path}", "'features' missing")),
    Case("store/missing_augmentation", "store", "augmentation 'crop_br' not in the store",
         "FeatureStoreError: file, the stored augmentations", _mk_store(), _run_aug_by_name, "error", FSE,
         ("{path}", "'crop_br'", "crop_tl_flip")),
    Case("store/truncated", "store", "HDF5 store cut at 60 % (incomplete copy)",
         "OSError: file, 'truncated' with a hint", _mk_store_cut(0.6), _open_store, "error", OSError,
         ("{path}", "truncated")),
    Case("store/zero_bytes", "store", "empty .h5 file", "OSError naming the file",
         _file("empty.h5", b""), _open_store, "error", OSError, ("{path}",)),
    Case("store/not_hdf5", "store", "text file named .h5", "OSError: file, not an HDF5 file",
         _file("text.h5", b"hello, not hdf5\n" * 100), _open_store, "error", OSError, ("{path}", "not an HDF5 file")),
    Case("store/not_a_ku_store", "store", "HDF5 file of another program", "FeatureStoreError: file, not a ku store",
         _mk_not_ku_h5, _open_store, "error", FSE, ("{path}", "not a ku feature store")),
    Case("store/other_backbone", "store", "resume extraction into a store of another backbone (attrs differ)",
         "FeatureStoreError: file, differing attribute with both values", _mk_store_other_backbone,
         _run_resume_other_backbone, "error", FSE, ("{path}", "backbone", "'b1'", "'b2'")),
    Case("store/ids_not_in_store", "store", "training ids missing from the store",
         "MissingIdsError (FeatureStoreError, KeyError): file, the ids", _mk_store(),
         _run_sequence(["i0", "zz9"]), "error", FSE, ("{path}", "'zz9'")),
    Case("store/incomplete_rows", "store", "training ids whose extraction failed / never ran",
         "IncompleteRowsError: file, the ids", _mk_store(), _run_sequence(["i0", "i3"]), "error", FSE,
         ("{path}", "'i3'", "no features")),
    # -- command lines ----------------------------------------------------------------------
    Case("cli/extract_missing_ava_root", "cli", "extract_mlsp.py --ava_root=<missing folder>",
         "usage error naming the flag and the folder (before TensorFlow is imported)",
         _cli("extract_mlsp.py", "--ava_root={d}/nope"), None, "error", mention=("--ava_root=", "/nope", "no such folder")),
    Case("cli/extract_missing_labels_csv", "cli", "extract_mlsp.py --labels_csv=<missing file>",
         "usage error naming the flag and the file", _cli("extract_mlsp.py", "--labels_csv={d}/nope.csv"), None,
         "error", mention=("--labels_csv=", "nope.csv", "no such file")),
    Case("cli/extract_missing_images_dir", "cli", "extract_mlsp.py --images_dir=<missing folder>",
         "usage error naming the flag", _cli("extract_mlsp.py", "--labels_csv={d}/labels.csv",
                                             "--images_dir={d}/nope"), None, "error",
         mention=("--images_dir=", "no such folder")),
    Case("cli/extract_unknown_backbone", "cli", "extract_mlsp.py --backbone=resnet9000",
         "flag error listing the allowed values", _cli("extract_mlsp.py", "--backbone=resnet9000"), None, "error",
         mention=("--backbone", "resnet9000", "inception_v3")),
    Case("cli/extract_unwritable_out", "cli", "extract_mlsp.py --out=<inside a file>",
         "usage error naming --out and the blocking file, before any work",
         _cli("extract_mlsp.py", "--labels_csv={d}/labels.csv", "--out={d}/afile/x.h5"), None, "error",
         mention=("--out=", "afile", "is a file, not a folder")),
    Case("cli/extract_bad_labels", "cli", "extract_mlsp.py --labels_csv=<CSV with a bad value>",
         "'error:' with the file, line and column (no traceback, before TensorFlow)",
         _cli("extract_mlsp.py", "--labels_csv={d}/bad.csv", "--out={d}/x.h5", setup=_bad_labels), None, "error",
         mention=("error:", "bad.csv", "line 3", "'mos'", "not-a-number")),
    Case("cli/extract_bad_shard", "cli", "extract_mlsp.py --shard=3/2", "usage error naming --shard",
         _cli("extract_mlsp.py", "--shard=3/2"), None, "error", mention=("--shard=", "3/2")),
    Case("cli/extract_merge_no_match", "cli", "extract_mlsp.py --merge=<glob matching nothing>",
         "usage error naming --merge", _cli("extract_mlsp.py", "--merge={d}/none*.h5", "--out={d}/m.h5"), None,
         "error", mention=("--merge=", "no files match")),
    Case("cli/train_unknown_head", "cli", "train_mlsp.py --head=big5fc", "flag error listing the heads",
         _cli("train_mlsp.py", "--head=big5fc"), None, "error", mention=("--head", "big5fc", "pool3fc")),
    Case("cli/train_unwritable_work_dir", "cli", "train_mlsp.py --work_dir=<inside a file>",
         "usage error naming --work_dir", _cli("train_mlsp.py", "--labels_csv={d}/labels.csv",
                                               "--work_dir={d}/afile/run"), None, "error",
         mention=("--work_dir=", "afile", "is a file")),
    Case("cli/train_missing_ava_root", "cli", "train_mlsp.py --ava_root=<missing folder>",
         "usage error naming the flag", _cli("train_mlsp.py", "--ava_root={d}/nope"), None, "error",
         mention=("--ava_root=", "no such folder")),
    Case("cli/predict_missing_head", "cli", "predict_mlsp.py --head_path=<missing file>",
         "usage error naming --head_path", _cli("predict_mlsp.py", "--head_path={d}/nope.keras", "--images={d}"),
         None, "error", mention=("--head_path=", "nope.keras", "no such file")),
    Case("cli/predict_missing_images", "cli", "predict_mlsp.py --images=<missing folder>",
         "usage error naming --images", _cli("predict_mlsp.py", "--head_path={d}/head.keras", "--images={d}/nope"),
         None, "error", mention=("--images=", "no such file or folder")),
    Case("cli/predict_unwritable_out", "cli", "predict_mlsp.py --out=<inside a file>",
         "usage error naming --out, before the models are built",
         _cli("predict_mlsp.py", "--head_path={d}/head.keras", "--images={d}", "--out={d}/afile/p.csv"), None,
         "error", mention=("--out=", "afile", "is a file, not a folder")),
    Case("cli/predict_unknown_released", "cli", "predict_mlsp.py --released=vgg", "flag error listing the heads",
         _cli("predict_mlsp.py", "--released=vgg"), None, "error", mention=("--released", "vgg", "pool3fc")),
    Case("cli/predict_csv_without_column", "cli", "predict_mlsp.py --images=<CSV without image_path>",
         "'error:' naming the CSV and its columns", _cli("predict_mlsp.py", "--head_path={d}/head.keras",
                                                          "--images={d}/labels.csv"), None, "error",
         mention=("error:", "labels.csv", "'image_path'")),
]


# ---------------------------------------------------------------------------------------------
# special files, encodings, overflow, write faults

def _mk_special(kind, name="x.jpg"):
    """A named pipe, a link to /dev/zero or a socket named like an image."""
    def make(d):
        import socket

        import pytest

        p = d / name
        if kind == "fifo":
            if not hasattr(os, "mkfifo"):
                pytest.skip("no named pipes on this platform")
            os.mkfifo(p)
        elif kind == "dev_zero":
            if not os.path.exists("/dev/zero"):
                pytest.skip("no /dev/zero on this platform")
            os.symlink("/dev/zero", p)
        else:
            if not hasattr(socket, "AF_UNIX"):
                pytest.skip("no unix sockets on this platform")
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(p))
            sock.close()
        return {"path": str(p)}
    return make


def _mk_folder_special(d):
    """3 good images + a named pipe + /dev/urandom behind a link, both named .jpg."""
    import pytest

    if not (hasattr(os, "mkfifo") and os.path.exists("/dev/urandom")):
        pytest.skip("no named pipes or /dev/urandom on this platform")
    good = [str(write_cv(d / f"good{i}.png", pattern(90, 96, seed=i))) for i in range(3)]
    os.mkfifo(d / "pipe.jpg")
    os.symlink("/dev/urandom", d / "random.jpg")
    bad = [str(d / "pipe.jpg"), str(d / "random.jpg")]
    table = {Path(x).stem: x for x in good[:1] + bad[:1] + good[1:] + bad[1:]}
    return {"path": str(d), "table": table, "good": good, "bad": bad, "store": str(d / "store.h5")}


def _in_thread(fn, timeout=60):
    """``fn()`` in a daemon thread: a blocking read fails the case instead of hanging the suite."""
    import threading

    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    _assert(not t.is_alive(), "blocked reading a special file")
    if "error" in out:
        raise out["error"]
    return out["value"]


def _read_nonblocking(p):
    from ku.data.images import read_image

    return _in_thread(lambda: read_image(p["path"]))


def _check_special_report(report, p):
    from ku.data.store import FeatureStore

    failed = {Path(f["image_path"]).name: f["error"] for f in report.failed}
    _assert(report.n_done == 3 and sorted(failed) == ["pipe.jpg", "random.jpg"], str(failed))
    _assert("named pipe (FIFO)" in failed["pipe.jpg"], failed["pipe.jpg"])
    _assert("character device (symbolic link to '/dev/urandom')" in failed["random.jpg"], failed["random.jpg"])
    with FeatureStore(p["store"]) as s:
        ids = list(p["table"])
        _assert([ids[i] for i in np.flatnonzero(s.complete_mask())] == ["good0", "good1", "good2"])
        _assert([ids[i] for i in np.flatnonzero(s.failed_mask())] == ["pipe", "random"])


def _run_extract_special(p):
    from ku.extraction import extract_features

    return _in_thread(lambda: extract_features(p["table"], p["store"], tiny_extractor(), progress=False,
                                               augmentations=["crop_tl", "crop_br_flip"]))


def _run_check_special(p):
    from ku.data.images import check_images

    return _in_thread(lambda: check_images(p["path"]))


def _check_check_special(df, p):
    listed = {Path(x).name: e for x, e in zip(df["path"], df["error"])}
    _assert(sorted(listed) == ["pipe.jpg", "random.jpg"], str(listed))
    _assert(all("not a regular file" in e for e in listed.values()), str(listed))


def _ava_test_list(raw):
    """An AVA folder whose test list holds ``raw`` bytes (the ids 953619 and 953958 are in AVA.txt)."""
    def make(d):
        lines = [GOOD_AVA, "2 953958 10 7 15 33 34 19 3 0 2 0 14 47 1396", "3 954184 0 0 4 8 41 56 10 3 4 2 0 0 1396"]
        params = _ava(lines)(d)
        tl = d / "aesthetics_image_lists" / "generic_test.jpgl"
        tl.write_bytes(raw)
        return {**params, "test_list": str(tl), "split": "hosu"}
    return make


def _check_test_ids(df, p):
    _assert(sorted(df.loc[df["set"] == "test", "image_id"]) == ["953619", "953958"],
            str(df[["image_id", "set"]].values.tolist()))


def _mk_challenges_utf16(d):
    params = _ava([GOOD_AVA])(d)
    (d / "challenges.txt").write_bytes("1396 Schärfe\n".encode("utf-16"))
    return params


def _mk_fifo_csv(d):
    import pytest

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    os.mkfifo(d / "labels.csv")
    return {"path": str(d / "labels.csv"), "kw": {}}


def _run_csv_nonblocking(p):
    return _in_thread(lambda: _run_csv(p))


def _fault_once(target, name, err):
    """Patch ``target.name`` to raise ``OSError(err)`` once; returns the undo function."""
    real = getattr(target, name)
    left = [1]

    def fake(*a, **k):
        if left[0]:
            left[0] = 0
            raise OSError(err, os.strerror(err))
        return real(*a, **k)

    setattr(target, name, fake)
    return lambda: setattr(target, name, real)


def _run_store_write_fault(err):
    """write_rows of 2 rows with the write failing (``err``): DiskWriteError; the case also
    asserts that neither row is marked complete afterwards."""
    def run(p):
        from ku.data.store import FeatureStore

        with FeatureStore(p["path"], "r+") as s:
            undo = _fault_once(FeatureStore, "_write_feature_runs", err)
            try:
                s.write_rows([1, 2], np.ones((2, 2, 8), np.float32))
            finally:
                undo()
                with FeatureStore(p["path"]) as r:
                    _assert(r.complete_mask().tolist() == [False] * 4 and not r.failed_mask().any(),
                            "a failed write left a row marked complete")
    return run


def _mk_empty_store(d):
    from ku.data.store import FeatureStore

    FeatureStore.create(d / "s.h5", [f"i{k}" for k in range(4)], 2, (8,)).close()
    return {"path": str(d / "s.h5")}


def _run_extract_disk_full(p):
    """extract_features with the second write failing (ENOSPC at fsync): the run stops with the
    store named; the first 2 rows stay complete, no row is flagged failed."""
    import ku.data.store as store_mod
    from ku.data.store import FeatureStore
    from ku.extraction import extract_features

    calls = [0]
    real = store_mod.fsync_file

    def fsync(path, *a, **k):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(28, "No space left on device")
        return real(path, *a, **k)

    store_mod.fsync_file = fsync
    try:
        extract_features(p["table"], p["store"], tiny_extractor(), progress=False, flush_every=2,
                         augmentations=["crop_tl", "crop_br_flip"])
    finally:
        store_mod.fsync_file = real
        with FeatureStore(p["store"]) as s:
            _assert(s.complete_mask().tolist() == [True, True, False, False] and not s.failed_mask().any())


def _mk_four_images(d):
    table = {f"im{i}": str(write_cv(d / f"im{i}.png", pattern(90, 96, seed=i))) for i in range(4)}
    return {"path": str(d / "store.h5"), "store": str(d / "store.h5"), "table": table}


def _run_open_truncated(p):
    try:
        _open_store(p)
    except OSError as e:
        _assert("another process" not in str(e), f"lock hint for a truncated file: {e}")
        raise


def _ava_overflow(d):
    params = _ava([GOOD_AVA, "2 953958 99999999999999999999 7 15 33 34 19 3 0 2 0 14 47 1396"])(d)
    return params


_CASES += [
    Case("image/named_pipe", "image", "a named pipe (FIFO) called x.jpg (mkfifo)",
         "ImageReadError: not a regular file, a named pipe; never opened for reading (no hang)",
         _mk_special("fifo"), _read_nonblocking, "error", IRE, ("{path}", "not a regular file", "named pipe (FIFO)")),
    Case("image/dev_zero_link", "image", "symbolic link x.jpg -> /dev/zero",
         "ImageReadError: not a regular file, a character device (the link's target checked, not "
         "'empty file')", _mk_special("dev_zero"), _read_nonblocking, "error", IRE,
         ("{path}", "not a regular file", "character device", "'/dev/zero'")),
    Case("image/socket", "image", "a unix socket called x.jpg", "ImageReadError: not a regular file, a socket",
         _mk_special("socket"), _read_nonblocking, "error", IRE, ("{path}", "not a regular file", "a socket")),
    Case("batch/extract_folder_with_fifo", "batch",
         "extraction of 5 files: 3 good + a named pipe + /dev/urandom behind a link",
         "skip-and-report, no hang: the 3 good rows complete; pipe and device flagged 'failed' with "
         "'not a regular file'", _mk_folder_special, _run_extract_special, "skip", check=_check_special_report),
    Case("batch/check_images_special_files", "batch", "check_images over the same folder",
         "both special files listed as 'not a regular file', the good ones not; no hang",
         _mk_folder_special, _run_check_special, "skip", check=_check_check_special),
    Case("batch/extract_disk_full", "batch", "extraction whose second write fails: disk full (ENOSPC)",
         "DiskWriteError: the store, 'the disk is full', '2 of 4 rows are complete'; the run stops, the "
         "failed rows stay incomplete (not 'failed'); a re-run continues", _mk_four_images,
         _run_extract_disk_full, "error", "ku.data.durable.DiskWriteError",
         ("{path}", "the disk is full", "2 of 4 rows are complete", "re-run")),
    Case("store/write_disk_full", "store", "FeatureStore.write_rows on a full disk (ENOSPC)",
         "DiskWriteError before any flag: the store, 'the disk is full', the rows stay incomplete",
         _mk_empty_store, _run_store_write_fault(28), "error", "ku.data.durable.DiskWriteError",
         ("{path}", "the disk is full", "2 row(s) failed, they stay incomplete")),
    Case("store/write_io_error", "store", "FeatureStore.write_rows with an I/O error (EIO)",
         "DiskWriteError before any flag: the store, 'input/output error', the rows stay incomplete",
         _mk_empty_store, _run_store_write_fault(5), "error", "ku.data.durable.DiskWriteError",
         ("{path}", "input/output error", "stay incomplete")),
    Case("store/truncated_what_to_do", "store", "HDF5 store cut at 30 % (a full disk, an incomplete copy)",
         "OSError: 'truncated or corrupt', 'delete it and re-run the extraction'; no 'another process' "
         "hint (that one is for real lock errors)", _mk_store_cut(0.3), _run_open_truncated, "error", OSError,
         ("{path}", "truncated or corrupt", "delete it and re-run the extraction")),
    Case("labels/test_list_utf8_bom", "labels", "generic_test.jpgl with a UTF-8 byte-order mark",
         "read: the mark is dropped, every listed id is a test image",
         _ava_test_list(b"\xef\xbb\xbf953619\n953958\n"), _run_ava, "ok", check=_check_test_ids),
    Case("labels/test_list_utf16", "labels", "generic_test.jpgl saved as UTF-16 (with byte-order mark)",
         "read: decoded as UTF-16, every listed id is a test image",
         _ava_test_list("953619\r\n953958\r\n".encode("utf-16")), _run_ava, "ok", check=_check_test_ids),
    Case("labels/test_list_utf16_no_bom", "labels", "generic_test.jpgl in UTF-16 without byte-order mark",
         "ValueError: the list, NUL bytes, 'UTF-16' (never decoded with replacement characters)",
         _ava_test_list("953619\n953958\n".encode("utf-16-le")), _run_ava, "error", ValueError,
         ("{test_list}", "NUL bytes", "UTF-16")),
    Case("labels/test_list_not_in_labels", "labels", "test list whose ids are not in AVA.txt (2 of 3)",
         "ValueError: the list, the count and examples; never a silent re-split",
         _ava_test_list(b"953619\nx953958\ny954184\n"), _run_ava, "error", ValueError,
         ("{test_list}", "2 of 3 test ids", "'x953958'", "would silently move test images into training")),
    Case("labels/ava_int64_overflow", "labels", "AVA.txt vote count 99999999999999999999 (beyond int64)",
         "ValueError: file, line, field, 'too large for a 64-bit integer' (was a bare OverflowError)",
         _ava_overflow, _run_ava, "error", ValueError,
         ("{path}", "line 2", "field 3 (votes for score 1)", "too large for a 64-bit integer")),
    Case("labels/challenges_utf16", "labels", "challenges.txt saved as UTF-16 (with byte-order mark)",
         "read: names decoded (not replacement characters)", _mk_challenges_utf16, _run_ava, "ok",
         check=lambda df, p: _assert(df.attrs["challenges"] == {1396: "Schärfe"}, str(df.attrs["challenges"]))),
    Case("labels/csv_duplicate_column", "labels", "CSV header 'image_id,mos,mos'",
         "ValueError: file, line 1, the column named twice (pandas would silently use the first)",
         _csv("image_id,mos,mos\na,5,6\n"), _run_csv, "error", ValueError,
         ("{path}", "line 1", "column 'mos' appears more than once")),
    Case("labels/csv_named_pipe", "labels", "label CSV that is a named pipe",
         "ValueError: file, not a regular file, a named pipe (no hang)", _mk_fifo_csv, _run_csv_nonblocking,
         "error", ValueError, ("{path}", "not a regular file", "named pipe")),
    Case("image/serving_tiff", "image", "TIFF bytes sent to an exported model's serving_default",
         "InvalidArgumentError naming images[1] and the accepted formats (no raw bytes: never "
         "UnicodeDecodeError)", _serve_bytes(_tiff_bytes), _run_serving(), "error",
         "tensorflow.errors.InvalidArgumentError", (SERVING, "is not an encoded JPEG, PNG, GIF, BMP or WebP")),
    Case("image/serving_ppm", "image", "PPM bytes sent to serving_default",
         "InvalidArgumentError naming images[1]", _serve_bytes(_ppm_bytes), _run_serving(), "error",
         "tensorflow.errors.InvalidArgumentError", (SERVING, "TIFF or PPM")),
    Case("image/serving_random_bytes", "image", "300 random bytes sent to serving_default",
         "InvalidArgumentError naming images[1] and the length", _serve_bytes(_random_bytes),
         _run_serving(), "error", "tensorflow.errors.InvalidArgumentError", (SERVING, "length in bytes:] [300]")),
    Case("image/serving_non_utf8", "image", "bytes that are not UTF-8 (b'\\xff\\xfe\\x80...') sent to "
         "serving_default", "InvalidArgumentError naming images[1] (the message is plain text)",
         _serve_bytes(lambda: b"\xff\xfe\x80\x81" * 8), _run_serving(), "error",
         "tensorflow.errors.InvalidArgumentError", (SERVING, "is not an encoded")),
    Case("image/serving_truncated_jpeg", "image", "JPEG cut at 1,500 bytes (interrupted download) sent "
         "to serving_default", "InvalidArgumentError naming images[1]: cannot be decoded, with the "
         "length (not TensorFlow's bare 'jpeg::Uncompress failed')", _serve_bytes(
             lambda: jpeg_bytes(pattern(96, 96))[:1500]), _run_serving(), "error",
         "tensorflow.errors.InvalidArgumentError", (SERVING, "cannot be decoded", "[1500]")),
    Case("image/serving_damaged_jpeg", "image", "JPEG with 200 zeroed bytes in its headers sent to "
         "serving_default", "InvalidArgumentError naming images[1]: cannot be decoded",
         _serve_bytes(lambda: (lambda b: b[:100] + bytes(200) + b[300:])(jpeg_bytes(pattern(96, 96)))),
         _run_serving(), "error", "tensorflow.errors.InvalidArgumentError", (SERVING, "cannot be decoded")),
    Case("image/serving_damaged_png", "image", "PNG with 20 bytes of its image data overwritten sent "
         "to serving_default", "InvalidArgumentError naming images[1]: cannot be decoded",
         _serve_bytes(lambda: (lambda b: b[:37] + b"x" * 20 + b[57:])(_png_bytes(80, 80))),
         _run_serving(), "error", "tensorflow.errors.InvalidArgumentError",
         (SERVING, "cannot be decoded")),
    Case("image/serving_huge_header", "image", "PNG whose header says 30000 x 30000 sent to serving_default",
         "InvalidArgumentError naming images[1] and max_pixels, from the header (nothing decoded)",
         _serve_bytes(lambda: huge_png_bytes(30000, 30000)), _run_serving(), "error",
         "tensorflow.errors.InvalidArgumentError", (SERVING, "max_pixels=50,000,000", "[30000 30000]")),
    Case("image/serving_strip_1x20000", "image", "1 x 20000 PNG strip (101 bytes) sent to serving_default",
         "InvalidArgumentError: below the minimum side and too elongated to upscale (would be "
         "75 x 1,500,000)", _serve_bytes(lambda: _png_bytes(1, 20000)), _run_serving(), "error",
         "tensorflow.errors.InvalidArgumentError", (SERVING, "too elongated to upscale", "[1 20000]")),
    Case("image/serving_tiny_2x3", "image", "2 x 3 PNG sent to serving_default (backbone minimum 75 px)",
         "scored: upscaled (bilinear, aspect kept) to 75 x 112, the size policy", _serve_bytes(
             lambda: _png_bytes(2, 3)), _run_serving(), "ok", check=_check_small_upscaled),
    Case("image/serving_cmyk_jpeg", "image", f"{CMYK_NOTE} decoded by the exported model",
         "decoded, but NOT bit-identical to read_image: TensorFlow's libjpeg converts CMYK "
         "differently (at most 2 grey levels, measured 1)", _mk_cmyk, _run_serving_cmyk, "ok",
         check=_check_cmyk_difference),
    Case("batch/predict_folder_with_fifo", "batch", "ku predict over a folder with a named pipe 'pipe.jpg'",
         "the run finishes: the good images are scored, the pipe is skipped and listed as 'not a "
         "regular file' (exit status 3)", _mk_predict_fifo, _run_predict, "skip", check=_check_predict_fifo),
    Case("cli/extract_int64_overflow", "cli", "extract_mlsp.py --ava_root=<AVA.txt with a vote count beyond int64>",
         "'error:' with the file, line and field (no traceback, before TensorFlow)",
         _cli("extract_mlsp.py", "--ava_root={d}/ava", "--out={d}/x.h5",
              setup=lambda d: _ava_overflow(_mkdir(d / "ava"))), None, "error",
         mention=("error:", "AVA.txt", "line 2", "too large for a 64-bit integer")),
]


def _mkdir(p):
    p.mkdir()
    return p




def _assert(cond, msg="check failed"):
    if not cond:
        raise AssertionError(msg)
    return True


def _latin1_declared_run(p):
    from ku.data.readers import read_label_csv

    return read_label_csv(p["path"], encoding="latin-1", check_files=False)


def _fix(case: Case) -> Case:
    """Resolve lazy exception names and the one case whose runner needs its own function."""
    err = case.error
    if isinstance(err, str):
        err = _E(err)()
    if case.id == "labels/csv_latin1_declared":
        return dataclasses.replace(case, error=err, run=_latin1_declared_run,
                                   check=lambda df, p: _assert(df["image_id"].tolist() == ["b", "ä"]))
    return dataclasses.replace(case, error=err)


def cases() -> list[Case]:
    """The corpus (exception classes imported on first call)."""
    out = [_fix(c) for c in _CASES]
    ids = [c.id for c in out]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    return out


def markdown_table() -> str:
    """The docs/bad_input.md table."""
    rows = ["| # | case | bad input | what ku does |", "|---|---|---|---|"]
    for i, c in enumerate(_CASES, 1):
        kind = {"ok": "ok", "error": "error", "skip": "skip+report"}[c.expect]
        rows.append(f"| {i} | `{c.id}` | {c.what} | **{kind}**: {c.outcome} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())

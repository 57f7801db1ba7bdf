"""ku.data.images: formats, grey / alpha / 16-bit conversion, EXIF orientation, bad files."""
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from bad_input_corpus import pattern as _pattern

from ku.data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    apply_orientation,
    check_images,
    exif_orientation,
    list_images,
    read_image,
)


def _write_bgr(path, rgb, params=()):
    ok, enc = cv2.imencode(path.suffix, rgb[..., ::-1] if rgb.ndim == 3 else rgb, list(params))
    assert ok
    enc.tofile(str(path))
    return path


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "bilder_äö_漢字"  # non-ASCII path: np.fromfile + cv2.imdecode
    d.mkdir()
    return d


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_formats_roundtrip_exactly(folder, ext):
    im = _pattern()
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []  # >100: lossless WebP
    p = _write_bgr(folder / f"x{ext}", im, params)
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, im)


def test_jpeg_equals_opencv_imread_color(folder):
    im = _pattern()
    p = _write_bgr(folder / "x.jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 90])
    ref = cv2.imdecode(np.fromfile(str(p), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(read_image(str(p)), ref)
    assert np.abs(read_image(p).astype(int) - im).mean() < 12  # lossy, noisy pattern


def test_grey_is_replicated(folder):
    g = _pattern()[..., 0]
    for ext in (".png", ".jpg"):
        out = read_image(_write_bgr(folder / f"g{ext}", g))
        assert out.shape == (48, 64, 3)
        np.testing.assert_array_equal(out[..., 0], out[..., 1])
        np.testing.assert_array_equal(out[..., 0], out[..., 2])
    np.testing.assert_array_equal(read_image(folder / "g.png")[..., 0], g)


def test_rgba_composited_on_white(folder):
    rgb = _pattern()
    alpha = np.zeros((48, 64), np.uint8)
    alpha[:, 16:32] = 255
    alpha[:, 32:48] = 128
    rgba = np.dstack([rgb, alpha])
    p = folder / "a.png"
    Image.fromarray(rgba, "RGBA").save(p)
    out = read_image(p)
    a = alpha[..., None] / 255.0
    ref = np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)  # reference: "over" a white background
    np.testing.assert_array_equal(out, ref)
    assert (out[:, :16] == 255).all()  # transparent -> white
    np.testing.assert_array_equal(out[:, 16:32], rgb[:, 16:32])  # opaque -> unchanged


def test_grey_alpha(folder):
    g = _pattern()[..., 1]
    alpha = np.full_like(g, 255)
    alpha[:10] = 0
    p = folder / "la.png"
    Image.fromarray(np.dstack([g, alpha]), "LA").save(p)
    out = read_image(p)
    assert (out[:10] == 255).all()
    np.testing.assert_array_equal(out[10:, :, 0], g[10:])


def test_16bit_scaled_by_full_range(folder):
    vals = np.array([0, 128, 129, 257 * 100, 257 * 100 + 128, 40000, 65535], np.uint16)
    im16 = np.zeros((4, 7, 3), np.uint16)
    im16[:] = vals[None, :, None]
    im16[..., 2] = 65535 - im16[..., 2]
    p = _write_bgr(folder / "d.png", im16)
    assert cv2.imdecode(np.fromfile(str(p), np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    out = read_image(p)
    ref = np.rint(im16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out, ref)
    assert out[0, :, 0].tolist() == [0, 0, 1, 100, 100, 156, 255]


def test_16bit_rgba(folder):
    im16 = np.zeros((4, 4, 4), np.uint16)
    im16[..., :3] = 65535 // 3
    im16[:, :2, 3] = 65535
    im16[:, 2:, 3] = 0
    ok, enc = cv2.imencode(".png", im16)
    enc.tofile(str(folder / "d4.png"))
    out = read_image(folder / "d4.png")
    assert (out[:, :2] == 85).all() and (out[:, 2:] == 255).all()


def _exif_bytes(orientation):
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


# stored -> displayed, written independently of ku with numpy's rot90 / flips
_EXPECTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],
    5: lambda a: np.transpose(a, (1, 0, 2)),
    6: lambda a: np.rot90(a, -1),  # rotate 90 degrees clockwise
    7: lambda a: np.rot90(a, -1)[::-1],  # transverse (mirror about the anti-diagonal)
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(folder, orientation):
    im = _pattern()
    p = folder / f"o{orientation}.jpg"
    Image.fromarray(im).save(p, "JPEG", quality=95, exif=_exif_bytes(orientation))
    data = p.read_bytes()
    assert exif_orientation(data) == orientation
    out = read_image(p)
    # 1) same as OpenCV's own orientation handling (IMREAD_COLOR applies EXIF)
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(out, ref)
    # 2) geometry against numpy rotations of the stored pixels
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
    np.testing.assert_array_equal(out, _EXPECTED[orientation](stored))
    # 3) Pillow's exif_transpose (different JPEG decoder: tolerance)
    pil = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
    assert pil.shape == out.shape and np.abs(pil.astype(int) - out).mean() < 2


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_png_webp_tiff(folder, fmt, orientation):
    im = _pattern()
    p = folder / f"o{orientation}.{fmt.lower()}"
    kw = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(im).save(p, fmt, exif=_exif_bytes(orientation), **kw)
    out = read_image(p)
    np.testing.assert_array_equal(out, _EXPECTED[orientation](im))  # lossless: exact


def test_apply_orientation_matches_pil_transposes():
    im = _pattern(5, 7)
    pil_ops = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
    for o, op in pil_ops.items():
        ref = np.asarray(Image.fromarray(im).transpose(op))
        np.testing.assert_array_equal(apply_orientation(im, o), ref, err_msg=f"orientation {o}")


@pytest.fixture()
def bad_folder(folder):
    im = _pattern(120, 160)
    good = _write_bgr(folder / "good.jpg", im)
    (folder / "sub").mkdir()
    _write_bgr(folder / "sub" / "good.png", im)
    data = good.read_bytes()
    bad = {
        "truncated.jpg": data[: int(len(data) * 0.6)],
        "no_eoi.jpg": data[:-2],  # everything but the end-of-image marker
        "empty.jpg": b"",
        "text.jpg": b"hello, this is not an image\n",
        "sub/truncated.png": (folder / "sub" / "good.png").read_bytes()[:200],
    }
    for name, b in bad.items():
        (folder / name).write_bytes(b)
    return folder, bad


@pytest.mark.parametrize("name,words", [
    ("truncated.jpg", ["truncated"]),
    ("no_eoi.jpg", ["truncated", "FFD9"]),
    ("empty.jpg", ["0 bytes"]),
    ("text.jpg", ["not an image"]),
    ("sub/truncated.png", ["PNG"]),
])
def test_bad_files_raise_with_file_and_reason(bad_folder, name, words):
    folder, _ = bad_folder
    p = folder / name
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert isinstance(e.value, ValueError)
    assert str(p) in str(e.value) and e.value.path == str(p)
    for w in words:
        assert w in e.value.reason  # the reason, not just the file name


def test_check_images_lists_exactly_the_bad_ones(bad_folder):
    folder, bad = bad_folder
    df = check_images(folder)
    assert list(df.columns) == ["path", "error"]
    assert sorted(df["path"]) == sorted(str(folder / n) for n in bad)
    assert df["error"].str.len().min() > 0
    flat = check_images(folder, recursive=False)
    assert sorted(flat["path"]) == sorted(str(folder / n) for n in bad if "/" not in n)
    assert len(check_images(folder / "sub" / "..")) == len(bad)


def test_list_images(folder):
    (folder / "a").mkdir()
    (folder / ".hidden").mkdir()
    for n in ["b.JPG", "a/c.png", "a/d.txt", "e.webp", ".hidden/f.jpg", "._g.jpg", "h.tiff"]:
        (folder / n).write_bytes(b"x")
    got = [p.relative_to(folder).as_posix() for p in list_images(folder)]
    assert got == ["a/c.png", "b.JPG", "e.webp", "h.tiff"]
    assert [p.name for p in list_images(folder, recursive=False)] == ["b.JPG", "e.webp", "h.tiff"]
    assert ".jpg" in IMAGE_EXTENSIONS and ".webp" in IMAGE_EXTENSIONS
    with pytest.raises(NotADirectoryError):
        list_images(folder / "b.JPG")


def test_max_pixels(folder):
    p = _write_bgr(folder / "big.jpg", _pattern(100, 120))
    q = _write_bgr(folder / "big.tif", _pattern(100, 120))  # no header parse: checked after decoding
    for path in (p, q):
        with pytest.raises(ImageReadError, match=r"100x120 = 12,000 pixels.*max_pixels=5,000"):
            read_image(path, max_pixels=5000)
        assert read_image(path, max_pixels=12000).shape == (100, 120, 3)
        small = read_image(path, max_pixels=5000, on_large="downscale")
        assert small.shape[0] * small.shape[1] <= 5000 and small.shape[0] >= 60
    with pytest.raises(ValueError, match="on_large"):
        read_image(p, on_large="crop")


def test_missing_file_and_directory(folder):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(folder / "nope.jpg")
    with pytest.raises(ImageReadError, match="directory"):
        read_image(folder)


def test_check_images_logs_warning(bad_folder, caplog):
    folder, bad = bad_folder
    with caplog.at_level(logging.WARNING, logger="ku.data.images"):
        check_images(folder)
    assert f"{len(bad)} of {len(bad) + 2} images" in caplog.text


# ---------------------------------------------------------------------------------------------
# special files: only regular files are read (never a hang on a named pipe, never "empty file"
# for /dev/zero behind a link)

def _special_files(d):
    """{name: expected words in the reason} for the special files this platform can make."""
    import socket

    made = {}
    if hasattr(os, "mkfifo"):
        os.mkfifo(d / "pipe.jpg")
        made["pipe.jpg"] = "named pipe (FIFO)"
        os.symlink(d / "pipe.jpg", d / "pipe_link.jpg")
        made["pipe_link.jpg"] = "named pipe (FIFO) (symbolic link to"
    if os.path.exists("/dev/zero"):
        os.symlink("/dev/zero", d / "zero.jpg")
        made["zero.jpg"] = "character device (symbolic link to '/dev/zero')"
    if hasattr(socket, "AF_UNIX"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(d / "sock.png"))
        s.close()
        made["sock.png"] = "a socket"
    return made


def _in_thread(fn, timeout=30):
    """Run ``fn`` in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    import threading

    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "blocked reading a special file"
    return out


def test_read_image_refuses_special_files_without_blocking(tmp_path):
    made = _special_files(tmp_path)
    if not made:
        pytest.skip("no special files on this platform")
    for name, words in made.items():
        out = _in_thread(lambda: read_image(tmp_path / name))
        err = out.get("error")
        assert isinstance(err, ImageReadError), (name, out)
        assert str(tmp_path / name) in str(err) and "not a regular file" in err.reason and words in err.reason, err


def test_check_images_lists_special_files_with_reason(tmp_path):
    made = _special_files(tmp_path)
    if not made:
        pytest.skip("no special files on this platform")
    _write_bgr(tmp_path / "good.png", _pattern(40, 50))
    assert sorted(p.name for p in list_images(tmp_path, recursive=False)) == sorted(list(made) + ["good.png"])
    out = _in_thread(lambda: check_images(tmp_path))
    df = out["value"]
    listed = {Path(p).name: e for p, e in zip(df["path"], df["error"])}
    assert sorted(listed) == sorted(made)  # the good image is not listed, every special file is
    for name, words in made.items():
        assert "not a regular file" in listed[name] and words in listed[name], listed[name]

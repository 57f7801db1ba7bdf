"""Robust image reading: any common file -> uint8 RGB ``(H, W, 3)``.

All models in ``ku`` take 0..255 RGB HWC arrays (``docs/design.md`` §1). This module turns an
image file into exactly that, or raises :class:`ImageReadError` naming the file and the reason.

Decoding is done by OpenCV (``cv2.imdecode`` on the file's bytes, so paths with non-ASCII
characters work on every platform). Only regular files are read (:func:`read_regular_file`): a
named pipe (FIFO), a device (also ``/dev/zero`` behind a symbolic link), a socket or a directory
raises :class:`ImageReadError` saying what it is, without reading from it -- it never hangs. Formats: JPEG, PNG, BMP, TIFF, WebP (see
:data:`IMAGE_EXTENSIONS`).

Conversions (decisions):

* **Grey** (1 channel) is replicated to 3 channels.
* **Alpha** (RGBA, grey + alpha) is *composited on white*: ``rgb * a + 255 * (1 - a)``. Dropping
  the alpha channel instead would show whatever colour happens to be stored under transparent
  pixels (often black or garbage); white is what image viewers and web pages usually show behind
  transparent photos and logos.
* **16-bit** (and other integer depths) are scaled by the full range of the type,
  ``round(x * 255 / 65535)`` for uint16 (not truncated to the low or high byte). Float images are
  assumed to be in 0..1 (clipped). Scaling happens after alpha compositing, in float.
* **EXIF orientation** is honoured. ``cv2.IMREAD_UNCHANGED`` (needed to see 16-bit data and the
  alpha channel) makes OpenCV *ignore* the EXIF orientation, so this module reads the orientation
  tag itself (JPEG APP1 ``Exif``, PNG ``eXIf``, WebP ``EXIF`` chunk) and applies it exactly like
  ``cv2.IMREAD_COLOR`` / ``PIL.ImageOps.exif_transpose`` do. For TIFF, OpenCV's TIFF decoder
  applies the orientation itself (also with ``IMREAD_UNCHANGED``), so it is not applied twice.
  (OpenCV's ``IMREAD_COLOR`` ignores WebP EXIF; we honour it.)

Checks (each raises :class:`ImageReadError` with ``path`` and ``reason`` attributes):

* zero-byte file; content that is not a recognised image (magic bytes) and cannot be decoded;
* truncation: a JPEG without an EOI marker (``FF D9``) after its first scan, a PNG without its
  ``IEND`` chunk, BMP/WebP shorter than the size in their header. (Some OpenCV/libjpeg builds
  decode a truncated JPEG partially, grey at the bottom, with only a warning on stderr.)
* ``max_pixels``: an image with more than ``max_pixels`` pixels (H * W, after orientation) is
  refused before decoding where the header can be parsed (JPEG, PNG, BMP), else after decoding.
  With ``on_large="downscale"`` it is instead shrunk with ``cv2.INTER_AREA`` to at most
  ``max_pixels`` pixels (aspect kept). This is the guard against out-of-memory: a 12000 x 9000
  photo is refused by its header, before any pixel is decoded.
* ``min_side``: an image whose shorter side is below ``min_side`` pixels (after orientation) is
  refused. Reading for *training* (feature extraction) uses it: Hosu et al. §3.1 extract
  features at the original resolution, so an upscaled 10 x 10 thumbnail would become a training
  example of an interpolated blur. *Scoring* follows ku's size policy instead
  (:mod:`ku.size_policy`, docs/bad_input.md): images below the backbone's minimum are upscaled
  to it (reading them here without ``min_side``).

Other formats and cases:

* **Palette** PNGs are expanded to RGB; a palette transparency (``tRNS``) becomes an alpha
  channel in OpenCV's decoder and is composited on white like any alpha channel.
* **CMYK** (and Adobe-inverted CMYK) JPEGs are converted to RGB by libjpeg / OpenCV.
* **GIF** (also animated): the first frame. ``.gif`` is not in :data:`IMAGE_EXTENSIONS`, so
  :func:`list_images` does not pick GIFs up; pass them explicitly.
* The extension is never trusted: the format is sniffed from the content (a PNG saved as
  ``.jpg`` reads fine; HTML saved as ``.jpg`` is "not an image").
* Unreadable files (permissions), directories and special files (FIFOs, devices, sockets;
  symbolic links are followed and their target checked) raise :class:`ImageReadError`.

A missing file (also a symbolic link whose target is missing) raises
:class:`FileNotFoundError` (not an ``ImageReadError``), naming the file (and the link target).
"""
from __future__ import annotations

import io
import logging
import math
import os
import stat
import struct
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import pandas as pd

from ku.data._typing import PathLike

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "read_image",
    "decode_image",
    "exif_orientation",
    "apply_orientation",
    "list_images",
    "check_images",
    "read_regular_file",
]

log = logging.getLogger(__name__)


#: File extensions (lower case, with dot) treated as images by :func:`list_images`.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
)


class ImageReadError(ValueError):
    """An image file exists but cannot be turned into an RGB array.

    Attributes:
        path: the file (``str``).
        reason: short explanation (e.g. ``"empty file (0 bytes)"``).
    """

    def __init__(self, path: PathLike, reason: str):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"cannot read image {self.path!r}: {self.reason}")

    def __reduce__(self):  # picklable across processes / threads
        return (type(self), (self.path, self.reason))


# --------------------------------------------------------------------------------------------
# format sniffing and header parsing
# --------------------------------------------------------------------------------------------
def _sniff(data: bytes) -> str | None:
    """Format name from the magic bytes, or None if unknown."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_segments(data: bytes):
    """Yield ``(marker, payload_start, payload_end)`` for the JPEG header segments, up to and
    including SOS (whose payload end is the start of the entropy-coded data)."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        if marker == 0xD9:
            return
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        yield marker, pos + 4, pos + 2 + length
        if marker == 0xDA:
            return
        pos += 2 + length


def _header_size(data: bytes, fmt: str | None) -> tuple[int, int] | None:
    """(H, W) stored in the header (before orientation) for JPEG/PNG/BMP, else None."""
    try:
        if fmt == "png" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return h, w
        if fmt == "bmp" and len(data) >= 26:
            hdr = struct.unpack("<I", data[14:18])[0]
            if hdr == 12:
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return abs(h), abs(w)
        if fmt == "jpeg":
            for marker, start, _ in _jpeg_segments(data):
                if marker in _SOF_MARKERS:
                    h, w = struct.unpack(">HH", data[start + 1:start + 5])
                    return h, w
    except struct.error:
        return None
    return None


def _tiff_orientation(tiff: bytes) -> int:
    """Orientation tag (0x0112) of IFD0 of a TIFF-structured EXIF block; 1 if absent/invalid."""
    if len(tiff) < 8:
        return 1
    bo = tiff[:2]
    if bo == b"II":
        e = "<"
    elif bo == b"MM":
        e = ">"
    else:
        return 1
    try:
        ifd = struct.unpack(e + "I", tiff[4:8])[0]
        count = struct.unpack(e + "H", tiff[ifd:ifd + 2])[0]
        for i in range(count):
            off = ifd + 2 + 12 * i
            tag, typ = struct.unpack(e + "HH", tiff[off:off + 4])
            if tag == 0x0112:
                if typ == 3:  # SHORT
                    val = struct.unpack(e + "H", tiff[off + 8:off + 10])[0]
                elif typ == 4:  # LONG (non-standard but seen)
                    val = struct.unpack(e + "I", tiff[off + 8:off + 12])[0]
                else:
                    return 1
                return int(val) if 1 <= val <= 8 else 1
    except struct.error:
        return 1
    return 1


def exif_orientation(data: bytes) -> int:
    """EXIF orientation (1..8; 1 = as stored) of an encoded JPEG, PNG or WebP image.

    Returns 1 when there is no EXIF block, no orientation tag, or the format is not one of those
    three (TIFF orientation is applied by OpenCV's decoder itself).
    """
    fmt = _sniff(data)
    if fmt == "jpeg":
        for marker, start, end in _jpeg_segments(data):
            if marker == 0xE1 and data[start:start + 6] == b"Exif\x00\x00":
                return _tiff_orientation(data[start + 6:end])
        return 1
    if fmt == "png":
        pos, n = 8, len(data)
        while pos + 8 <= n:
            length = struct.unpack(">I", data[pos:pos + 4])[0]
            ctype = data[pos + 4:pos + 8]
            if ctype == b"eXIf":
                return _tiff_orientation(data[pos + 8:pos + 8 + length])
            if ctype == b"IEND":
                break
            pos += 12 + length
        return 1
    if fmt == "webp":
        pos, n = 12, len(data)
        while pos + 8 <= n:
            ctype = data[pos:pos + 4]
            size = struct.unpack("<I", data[pos + 4:pos + 8])[0]
            if ctype == b"EXIF":
                blk = data[pos + 8:pos + 8 + size]
                if blk[:6] == b"Exif\x00\x00":
                    blk = blk[6:]
                return _tiff_orientation(blk)
            pos += 8 + size + (size & 1)
        return 1
    return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Transform a stored image (HW or HWC) to display orientation per the EXIF tag (1..8)."""
    o = int(orientation)
    if o == 2:
        return image[:, ::-1]
    if o == 3:
        return image[::-1, ::-1]
    if o == 4:
        return image[::-1]
    if o == 5:  # transpose (mirror about the main diagonal)
        return np.swapaxes(image, 0, 1)
    if o == 6:  # rotate 90 deg clockwise
        return np.swapaxes(image, 0, 1)[:, ::-1]
    if o == 7:  # transverse (mirror about the anti-diagonal)
        return np.swapaxes(image, 0, 1)[::-1, ::-1]
    if o == 8:  # rotate 90 deg counter-clockwise
        return np.swapaxes(image, 0, 1)[::-1]
    return image


def _truncation(data: bytes, fmt: str | None) -> str | None:
    """Reason string if the file is visibly truncated, else None."""
    n = len(data)
    if fmt == "jpeg":
        sos_end = None
        for marker, _, end in _jpeg_segments(data):
            if marker == 0xDA:
                sos_end = end
        if sos_end is None:
            return "truncated JPEG (no image data: header ends before the first scan)"
        if data.find(b"\xff\xd9", sos_end) < 0:
            return "truncated JPEG (no end-of-image marker FFD9 after the image data)"
    elif fmt == "png":
        if data.rfind(b"IEND") < 0:
            return "truncated PNG (no IEND chunk)"
    elif fmt == "bmp" and n >= 6:
        size = struct.unpack("<I", data[2:6])[0]
        if size and n < size:
            return f"truncated BMP ({n} of {size} bytes)"
    elif fmt == "webp":
        size = struct.unpack("<I", data[4:8])[0] + 8
        if n < size:
            return f"truncated WebP ({n} of {size} bytes)"
    return None


# --------------------------------------------------------------------------------------------
# conversion to uint8 RGB
# --------------------------------------------------------------------------------------------
def _to_unit_float(x: np.ndarray) -> np.ndarray:
    """Any depth -> float32 in 0..1 (integer: divided by the type's maximum)."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        lo = 0 if info.min >= 0 else info.min
        return ((x.astype(np.float64) - lo) / float(info.max - lo)).astype(np.float32)
    return np.clip(np.nan_to_num(x.astype(np.float32)), 0.0, 1.0)


def _to_rgb_uint8(im: np.ndarray) -> np.ndarray:
    """OpenCV-decoded array (HW, HWC with 1..4 channels, BGR order, any depth) -> uint8 RGB."""
    if im.ndim == 2:
        im = im[:, :, None]
    c = im.shape[2]
    if c == 1:
        color, alpha = np.repeat(im, 3, axis=2), None
    elif c == 2:  # grey + alpha
        color, alpha = np.repeat(im[:, :, :1], 3, axis=2), im[:, :, 1]
    elif c == 3:
        color, alpha = im[:, :, ::-1], None
    elif c == 4:
        color, alpha = im[:, :, 2::-1], im[:, :, 3]
    else:
        raise ValueError(f"unsupported number of channels: {c}")
    if alpha is None and color.dtype == np.uint8:
        return np.ascontiguousarray(color)
    if alpha is None and color.dtype == np.uint16:  # exact: round(x * 255 / 65535) = round(x / 257)
        return ((color.astype(np.uint32) + 128) // 257).astype(np.uint8)
    f = _to_unit_float(color)
    if alpha is not None:
        a = _to_unit_float(alpha)[:, :, None]
        f = f * a + (1.0 - a)  # composite on white
    return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)


def _limit_message(h: int, w: int, max_pixels: int) -> str:
    return (f"image has {h}x{w} = {h * w:,} pixels, more than max_pixels={max_pixels:,} "
            "(raise max_pixels, or pass on_large='downscale')")


def _small_message(h: int, w: int, min_side: int) -> str:
    return (f"image is {h}x{w} px, smaller than min_side={min_side} px (the backbone's minimum "
            "input side; small images are refused, not upscaled)")


def decode_image(data: bytes | np.ndarray, path: PathLike = "<bytes>", max_pixels: int | None = None,
                 on_large: str = "raise", min_side: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to uint8 RGB ``(H, W, 3)``; see :func:`read_image`."""
    if on_large not in ("raise", "downscale"):
        raise ValueError(f"on_large must be 'raise' or 'downscale', got {on_large!r}")
    if max_pixels is not None and int(max_pixels) < 1:
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    if min_side is not None and int(min_side) < 1:
        raise ValueError(f"min_side must be a positive int or None, got {min_side!r}")
    if isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        raw = buf.tobytes()
    else:
        raw = bytes(data)
        buf = np.frombuffer(raw, np.uint8)
    if len(raw) == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    fmt = _sniff(raw)
    trunc = _truncation(raw, fmt)
    if trunc:
        raise ImageReadError(path, trunc)
    if max_pixels is not None and on_large == "raise":
        hw = _header_size(raw, fmt)
        if hw is not None and hw[0] * hw[1] > max_pixels:
            raise ImageReadError(path, _limit_message(hw[0], hw[1], int(max_pixels)))
    try:
        im = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # e.g. OpenCV's own pixel limit
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "OpenCV error"
        raise ImageReadError(path, f"cannot decode ({fmt or 'unknown format'}): {msg}") from None
    if im is None or im.size == 0:
        if fmt is None:
            head = raw[:8]
            raise ImageReadError(path, f"not an image (unrecognised content, starts with {head!r})")
        raise ImageReadError(path, f"cannot decode {fmt.upper()} data (corrupt or unsupported)")
    if fmt != "tiff":
        im = apply_orientation(im, exif_orientation(raw))
    try:
        rgb = _to_rgb_uint8(im)
    except ValueError as e:
        raise ImageReadError(path, str(e)) from None
    h, w = rgb.shape[:2]
    if min_side is not None and min(h, w) < int(min_side):
        raise ImageReadError(path, _small_message(h, w, int(min_side)))
    if max_pixels is not None and h * w > max_pixels:
        if on_large == "raise":
            raise ImageReadError(path, _limit_message(h, w, int(max_pixels)))
        s = math.sqrt(max_pixels / float(h * w))
        nh, nw = max(1, int(h * s)), max(1, int(w * s))
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    return rgb


def read_image(path: PathLike, max_pixels: int | None = None, on_large: str = "raise",
               min_side: int | None = None) -> np.ndarray:
    """Read an image file as uint8 RGB ``(H, W, 3)`` (0..255), EXIF orientation applied.

    Args:
        path: file path (``str`` or ``os.PathLike``; non-ASCII paths are fine).
        max_pixels: refuse images with more than this many pixels (H * W); None = no limit.
        on_large: ``"raise"`` (default: :class:`ImageReadError`) or ``"downscale"`` (resize with
            ``cv2.INTER_AREA`` to at most ``max_pixels`` pixels, aspect ratio kept).
        min_side: refuse images whose shorter side is below this (e.g. 75 for the Inception
            backbones); None = no minimum. Small images are never upscaled (module docstring).
    Returns:
        ``np.ndarray`` uint8, shape ``(H, W, 3)``, RGB order, C-contiguous.
    Raises:
        FileNotFoundError: no such file (or a broken symbolic link; the target is named).
        ImageReadError: empty, truncated, not an image, undecodable, a directory, not a regular
            file (FIFO, device, socket), unreadable (permissions), over ``max_pixels`` or under
            ``min_side``.
    """
    p = os.fspath(path)
    return np.ascontiguousarray(decode_image(read_regular_file(p), p, max_pixels=max_pixels, on_large=on_large,
                                             min_side=min_side))


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file_reason(st: os.stat_result, path: str) -> str | None:
    """Why a file with status ``st`` is not read as an image (None for a regular file)."""
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not an image file"
    kind = next((name for test, name in _SPECIAL_FILES if test(st.st_mode)), "a special file")
    real = os.path.realpath(path)
    via = f" (symbolic link to {real!r})" if real != os.path.abspath(path) else ""
    return f"not a regular file: {kind}{via}; only regular files are read"


def _open_readonly(path: str) -> int:
    """A read-only descriptor of ``path`` that never blocks on open (a FIFO without a writer)."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
                   | getattr(os, "O_NOCTTY", 0))


def read_regular_file(path: PathLike) -> bytes:
    """The bytes of ``path`` if it is a regular file (a symbolic link is followed and its target
    checked). Never blocks: the file is opened non-blocking and checked with ``fstat`` on the
    open descriptor (no race between the check and the read), so a named pipe, a device
    (``/dev/zero`` behind a link), a socket or a directory raises :class:`ImageReadError` with
    the reason, without reading from it.

    Raises:
        FileNotFoundError: no such file, or a broken symbolic link (the target is named).
        ImageReadError: not a regular file, or unreadable (permissions, I/O error).
    """
    p = os.fspath(path)
    try:
        fd = _open_readonly(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise FileNotFoundError(
                f"image file not found: {p!r} is a broken symbolic link (target {os.readlink(p)!r} "
                "does not exist)") from None
        raise FileNotFoundError(f"image file not found: {p!r}") from None
    except OSError as e:
        if os.path.isdir(p):
            raise ImageReadError(p, "is a directory, not an image file") from None
        try:  # a socket cannot be opened (ENXIO): say what it is
            reason = special_file_reason(os.stat(p), p)
        except OSError:
            reason = None
        raise ImageReadError(p, reason or f"cannot read file: {type(e).__name__}: {e.strerror or e}") from None
    try:
        reason = special_file_reason(os.fstat(fd), p)
        if reason:
            raise ImageReadError(p, reason)
        with io.FileIO(fd, "rb", closefd=False) as f:
            return f.readall()  # sized from fstat: one allocation, no copy
    except OSError as e:
        raise ImageReadError(p, f"cannot read file: {type(e).__name__}: {e.strerror or e}") from None
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------
def list_images(folder: PathLike, recursive: bool = True, extensions: Iterable[str] = IMAGE_EXTENSIONS,
                include_hidden: bool = False) -> list[Path]:
    """Image files under ``folder`` (by extension, case-insensitive), sorted by path.

    Hidden files and folders (name starting with ``.``, e.g. macOS ``._x.jpg``) are skipped unless
    ``include_hidden``. Every entry that is not a folder is listed -- also special files (a FIFO
    or a link to a device named ``x.jpg``) and broken links, which are never opened here: the
    readers (:func:`read_image`, :func:`check_images`) report them with the reason.
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {str(root)!r}")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    out = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            if not include_hidden:
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                if (include_hidden or not f.startswith(".")) and os.path.splitext(f)[1].lower() in exts:
                    out.append(Path(dirpath) / f)
    else:
        for e in os.scandir(root):
            if not e.is_dir() and (include_hidden or not e.name.startswith(".")) \
                    and os.path.splitext(e.name)[1].lower() in exts:
                out.append(root / e.name)
    return sorted(out, key=str)


def check_images(folder: PathLike, recursive: bool = True, max_pixels: int | None = None,
                 progress: bool = False, min_side: int | None = None) -> pd.DataFrame:
    """Fully decode every image under ``folder`` and list the ones that fail.

    Special files (FIFOs, devices, sockets, also behind symbolic links) are listed as bad with
    the reason ("not a regular file: a named pipe (FIFO)"), never opened for reading.

    Returns:
        DataFrame with columns ``path`` (str) and ``error`` (the reason), one row per *bad* file,
        sorted by path; empty when all files read.
    """
    paths = list_images(folder, recursive=recursive)
    bar = None
    if progress and paths:
        import keras

        bar = keras.utils.Progbar(len(paths), unit_name="image")
    rows = []
    for i, p in enumerate(paths):
        try:
            read_image(p, max_pixels=max_pixels, min_side=min_side)
        except ImageReadError as e:
            rows.append((str(p), e.reason))
        except Exception as e:  # noqa: BLE001 (batch work: skip and report)
            rows.append((str(p), f"{type(e).__name__}: {e}"))
        if bar is not None:
            bar.update(i + 1)
    if rows:
        log.warning("%d of %d images under %s cannot be read (first: %s)", len(rows), len(paths),
                    folder, rows[0][0])
    return pd.DataFrame(rows, columns=["path", "error"])

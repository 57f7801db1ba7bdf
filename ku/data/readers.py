"""Dataset readers (AVA, Photo.net, plain CSV) and the papers' train/validation/test splits.

Every reader returns the *ids table* (``docs/design.md`` §1): one row per image with columns

``image_id`` (str), ``image_path`` (absolute str), ``mos``, ``std``, ``n_votes`` (float64),
``dist_1 .. dist_K`` (float64, normalised vote histogram; NaN if unknown), ``theme``,
``theme_index`` (int64), ``set`` ("training" | "validation" | "test"),

possibly followed by reader-specific extra columns (AVA: ``tag1``, ``tag2``). Statistics of a vote
histogram ``c_1..c_K``: ``n_votes = sum c_k``, ``dist_k = c_k / n_votes``,
``mos = sum_k k * dist_k`` and ``std = sqrt(sum_k dist_k (k - mos)^2)`` (population standard
deviation of the votes, as customary for AVA).

Bad input raises ``ValueError`` naming the file, the 1-based line number and what is wrong:
malformed lines (field count, non-numeric or NaN values, negative counts, integers beyond
64 bits), duplicate ids, an empty file, text that is not UTF-8 (``encoding=`` of
:func:`read_label_csv` reads other encodings), a CSV line with more or fewer fields than its
header, a missing or duplicated column name, a named pipe or device instead of a file, an AVA
test list that is empty or whose ids are not in ``AVA.txt``. Every text file is decoded strictly
(never with replacement characters): a UTF-8 byte-order mark is dropped, UTF-16 / UTF-32 files
with a byte-order mark are decoded, NUL bytes without one are refused.
Challenge ids missing from a given theme vocabulary map to ``theme_index`` 0 (unknown) with a
warning (``df.attrs["unknown_themes"]``). The full list is in docs/bad_input.md.
Images listed but missing on disk never stop a reader: the rows are dropped, a warning gives the
count and the first few names, and ``df.attrs["missing"]`` lists the dropped ids (rows without
votes likewise: ``df.attrs["no_votes"]``).

Splits (all seeded with ``np.random.default_rng(seed)``, reproducible, disjoint, and independent
of the row order of the table: candidates are sorted by ``image_id`` before shuffling):

* :func:`split_hosu` — Hosu et al. 2019 §3.3: the official AVA test list is the test set; the
  remaining images are split at random 95% training / 5% validation.
* :func:`split_murray` — Murray & Gordo 2017 §3.4: the official test list; 2,000 images of the
  training set held out for validation.
* :func:`split_photonet` — Jia et al. 2019 §IV-A: Photo.net, 16,666 downloadable images split at
  random into 14,800 training, 1,200 *test* and 666 *validation* images (the paper's wording:
  "14800 images as training set, 1200 images as testing set, and 666 images as validation set").
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ku.data._typing import PathLike

__all__ = [
    "SETS",
    "read_ava",
    "read_ava_test_list",
    "read_challenges",
    "read_photonet",
    "read_label_csv",
    "theme_vocabulary",
    "theme_indices",
    "split_hosu",
    "split_murray",
    "split_photonet",
    "distributions",
    "dist_columns",
]

log = logging.getLogger(__name__)


#: Values of the ``set`` column.
SETS = ("training", "validation", "test")

_AVA_FIELDS = 15  # index, image id, 10 counts, tag 1, tag 2, challenge id
_N_MISSING_SHOWN = 5


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _resolve(root: Path, p: PathLike | None) -> Path | None:
    if p is None:
        return None
    p = Path(p)
    return p if p.is_absolute() else root / p


def dist_columns(df: pd.DataFrame) -> list[str]:
    """Names of the ``dist_<k>`` columns of ``df`` in numeric order of ``k``."""
    cols = [(int(m.group(1)), c) for c in df.columns
            if isinstance(c, str) and (m := re.fullmatch(r"dist_(\d+)", c))]
    return [c for _, c in sorted(cols)]


def distributions(df: pd.DataFrame) -> np.ndarray:
    """``(N, K)`` float64 array of the ``dist_1 .. dist_K`` columns (numeric order, not lexical:
    ``dist_10`` comes after ``dist_9``). Raises ValueError if there are none."""
    cols = dist_columns(df)
    if not cols:
        raise ValueError("table has no dist_<k> columns (columns: %s)" % list(df.columns))
    return df[cols].to_numpy(dtype=np.float64)


def _histogram_stats(counts: np.ndarray):
    """counts (N, K) -> (dist (N,K), mos, std, n) with NaN where n == 0."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = counts / n[:, None]
    k = np.arange(1, counts.shape[1] + 1, dtype=np.float64)
    mos = dist @ k
    var = (dist * (k[None, :] - mos[:, None]) ** 2).sum(axis=1)
    std = np.sqrt(np.maximum(var, 0.0))
    return dist, mos, std, n


def theme_vocabulary(challenge_ids: Iterable) -> dict[int, int]:
    """Theme vocabulary ``{challenge_id: index}`` for theme embeddings (Jia et al. 2019 §III-B).

    Index 0 is reserved for an unknown theme (and for challenge id 0 = "no challenge"); the other
    ids, sorted numerically for determinism, get 1, 2, ... Build it once (e.g. from all ids of
    ``AVA.txt``) and pass it to every reader so that training and test share one.
    """
    ids = sorted({int(c) for c in challenge_ids if int(c) != 0})
    return {c: i + 1 for i, c in enumerate(ids)}


def theme_indices(challenge_ids: Iterable, vocabulary: Mapping) -> np.ndarray:
    """Map raw challenge ids to vocabulary indices (int64); unknown ids map to 0."""
    voc = {int(k): int(v) for k, v in vocabulary.items()}
    return np.array([voc.get(int(c), 0) for c in challenge_ids], dtype=np.int64)


def _finalize(df: pd.DataFrame, k: int, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Column order and dtypes of the ids table."""
    cols = ["image_id", "image_path", "mos", "std", "n_votes"] + [f"dist_{i}" for i in range(1, k + 1)] \
        + ["theme", "theme_index", "set"] + [c for c in extra if c in df.columns]
    out = df[cols].copy()
    out["image_id"] = out["image_id"].astype(str)
    out["image_path"] = out["image_path"].astype(str)
    for c in ["mos", "std", "n_votes"] + [f"dist_{i}" for i in range(1, k + 1)]:
        out[c] = out[c].astype(np.float64)
    out["theme"] = out["theme"].astype(np.int64)
    out["theme_index"] = out["theme_index"].astype(np.int64)
    out["set"] = out["set"].astype(str)
    return out.reset_index(drop=True)


def _short_list(ids: Sequence) -> str:
    s = ", ".join(str(i) for i in list(ids)[:_N_MISSING_SHOWN])
    return s + (", ..." if len(ids) > _N_MISSING_SHOWN else "")


def _drop_missing_files(df: pd.DataFrame, source: PathLike, check_files: bool) -> tuple[pd.DataFrame, list]:
    """Drop rows whose image_path does not exist (one directory listing per folder)."""
    if not check_files or len(df) == 0:
        return df, []
    listings: dict[str, set] = {}
    exists = np.empty(len(df), dtype=bool)
    for i, p in enumerate(df["image_path"]):
        d, name = os.path.split(p)
        if d not in listings:
            try:
                listings[d] = {e.name for e in os.scandir(d) if not e.is_dir()}
            except OSError:
                listings[d] = set()
        exists[i] = name in listings[d]
    missing = df.loc[~exists, "image_id"].tolist()
    if missing:
        folders = sorted({os.path.dirname(p) for p in df.loc[~exists, "image_path"]})
        log.warning("%d of %d images listed in %s are missing on disk (under %s): %s; rows dropped",
                    len(missing), len(df), source, folders[0] if len(folders) == 1 else folders[:3],
                    _short_list(missing))
    return df.loc[exists], missing


def _drop_no_votes(df: pd.DataFrame, source: PathLike) -> tuple[pd.DataFrame, list]:
    bad = (df["n_votes"] == 0).to_numpy()
    ids = df.loc[bad, "image_id"].tolist()
    if ids:
        log.warning("%d rows of %s have no votes: %s; rows dropped", len(ids), source, _short_list(ids))
    return df.loc[~bad], ids


def _check_unique(ids: Sequence[str], lines: Sequence[int], path: PathLike) -> None:
    first: dict[str, int] = {}
    for i, ln in zip(ids, lines):
        if i in first:
            raise ValueError(f"{path}: line {ln}: duplicate image id {i!r} (first on line {first[i]})")
        first[i] = ln


# --------------------------------------------------------------------------------------------
# AVA
# --------------------------------------------------------------------------------------------
_BOMS = (  # longest first: the UTF-32-LE mark starts with the UTF-16-LE one
    (b"\xff\xfe\x00\x00", "utf-32-le", "UTF-32"), (b"\x00\x00\xfe\xff", "utf-32-be", "UTF-32"),
    (b"\xef\xbb\xbf", "utf-8", "UTF-8"), (b"\xff\xfe", "utf-16-le", "UTF-16"),
    (b"\xfe\xff", "utf-16-be", "UTF-16"),
)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_INT64_MAX = np.iinfo(np.int64).max


def _read_text_bytes(path) -> bytes:
    """The bytes of a label file; a FIFO, device or socket is refused (ValueError naming the file
    and what it is) without being read, so it cannot hang."""
    import stat

    from ku.data.images import special_file_reason

    p = os.fspath(path)
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"{path}: is a folder, not a text file")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: {special_file_reason(st, p)}")
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _decode_text(raw: bytes, path, encoding: str) -> str:
    """``raw`` decoded strictly. With the default UTF-8 a byte-order mark decides: UTF-8 (dropped),
    UTF-16 or UTF-32 (decoded as such); NUL bytes without a mark (UTF-16 saved without one, or a
    binary file) are refused. A mark that contradicts a declared ``encoding`` is refused. Errors
    are ValueErrors naming the file, the line and the column."""
    import codecs

    declared = codecs.lookup(encoding).name
    bom = next(((m, codec, name) for m, codec, name in _BOMS if raw.startswith(m)), None)
    if bom is not None:
        mark, codec, name = bom
        if declared in ("utf-8", "utf-8-sig"):
            raw, encoding = raw[len(mark):], codec
        elif not declared.startswith(name.lower()):  # encoding="utf-16" reads its own mark
            raise ValueError(f"{path}: starts with a {name} byte-order mark, but encoding={encoding!r} "
                             f"was given; pass encoding={name.lower()!r} or save the file as UTF-8")
    elif declared in ("utf-8", "utf-8-sig") and b"\x00" in raw:
        line = raw[:raw.index(b"\x00")].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: NUL bytes in a text file: UTF-16 or UTF-32 without a "
                         "byte-order mark, or not a text file; save it as UTF-8 (or pass its encoding)")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not valid {encoding} text (byte {raw[e.start:e.start + 1]!r} "
                         f"at column {e.start - start + 1}); re-encode the file as UTF-8 (or tell the "
                         "reader its encoding)") from None
    return text[1:] if text.startswith("\ufeff") else text


def _text_lines(path, encoding: str = "utf-8"):
    """``(lineno, text)`` of a text file (1-based; line breaks ``\\n``, ``\\r\\n`` or ``\\r``),
    decoded strictly (see :func:`_decode_text`: BOMs, UTF-16 / UTF-32, errors name the file and
    line; never replaced silently)."""
    text = _decode_text(_read_text_bytes(path), path, encoding)
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return list(enumerate(lines, 1))


def _no_data(path) -> ValueError:
    return ValueError(f"{path}: no data lines (the file is empty or holds only comments)")


def _warn_unknown_themes(theme, theme_index, source) -> list:
    """Challenge ids (non-zero) that the vocabulary does not know; logged once."""
    theme = np.asarray(theme, dtype=np.int64)
    unknown = sorted({int(t) for t, i in zip(theme, np.asarray(theme_index)) if t != 0 and i == 0})
    if unknown:
        log.warning("%s: %d challenge id(s) not in the theme vocabulary -> theme_index 0 (unknown): %s",
                    source, len(unknown), _short_list(unknown))
    return unknown


def _parse_int(tok: str, path, lineno: int, what: str) -> int:
    try:
        value = int(tok)
    except ValueError:
        raise ValueError(f"{path}: line {lineno}: {what} is not an integer: {tok!r}") from None
    if abs(value) > _INT64_MAX:
        raise ValueError(f"{path}: line {lineno}: {what} is too large for a 64-bit integer: "
                         f"{tok[:30]!r}{'...' if len(tok) > 30 else ''}")
    return value


def _read_ava_txt(path: Path):
    ids, counts, tags1, tags2, chal, lines = [], [], [], [], [], []
    for lineno, line in _text_lines(path):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        tok = s.split()
        if len(tok) != _AVA_FIELDS:
            raise ValueError(
                f"{path}: line {lineno}: expected {_AVA_FIELDS} whitespace-separated fields "
                f"(index, image id, 10 vote counts, tag 1, tag 2, challenge id), got {len(tok)}: {s[:80]!r}")
        _parse_int(tok[0], path, lineno, "field 1 (index)")
        c = [_parse_int(t, path, lineno, f"field {j + 3} (votes for score {j + 1})")
             for j, t in enumerate(tok[2:12])]
        if min(c) < 0:
            raise ValueError(f"{path}: line {lineno}: negative vote count in {tok[2:12]}")
        if sum(c) > _INT64_MAX:
            raise ValueError(f"{path}: line {lineno}: vote counts sum to more than a 64-bit integer holds")
        ids.append(tok[1])
        counts.append(c)
        tags1.append(_parse_int(tok[12], path, lineno, "field 13 (semantic tag 1)"))
        tags2.append(_parse_int(tok[13], path, lineno, "field 14 (semantic tag 2)"))
        chal.append(_parse_int(tok[14], path, lineno, "field 15 (challenge id)"))
        lines.append(lineno)
    if not ids:
        raise _no_data(path)
    _check_unique(ids, lines, path)
    return ids, np.asarray(counts, dtype=np.int64).reshape(-1, 10), tags1, tags2, chal


def read_challenges(path: PathLike) -> dict[int, str]:
    """``challenges.txt`` / ``tags.txt``: lines ``id name`` (name may contain spaces)."""
    out = {}
    for lineno, line in _text_lines(path):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        tok = s.split(None, 1)
        out[_parse_int(tok[0], path, lineno, "field 1 (id)")] = tok[1].strip() if len(tok) > 1 else ""
    return out


def read_ava_test_list(path: PathLike) -> list[str]:
    """An AVA image list (``*.jpgl``): one image id per line (a ``.jpg`` suffix is removed).
    Decoded strictly (a byte-order mark is dropped, UTF-16 / UTF-32 with a mark are decoded,
    anything else that is not UTF-8 raises ValueError naming the file and line)."""
    out = []
    for _, line in _text_lines(path):
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s[:-4] if s.lower().endswith(".jpg") else s)
    return out


def read_ava(root: PathLike, images_dir: PathLike = "images", ava_file: PathLike = "AVA.txt",
             challenges_file: PathLike | None = "challenges.txt",
             test_list: PathLike | None = "aesthetics_image_lists/generic_test.jpgl",
             split: str | None = "hosu", seed: int = 0, image_ext: str = ".jpg",
             check_files: bool = True, vocabulary: Mapping | None = None,
             val_fraction: float = 0.05, n_validation: int | float = 2000,
             max_unknown_test_ids: float = 0.01) -> pd.DataFrame:
    """Read the AVA dataset (Murray et al. 2012) as an ids table with K = 10.

    ``AVA.txt`` lines: index, image id, vote counts for scores 1..10, semantic tag 1, tag 2,
    challenge id (whitespace separated; blank lines and ``#`` comments are skipped).

    Args:
        root: dataset folder; the other paths are relative to it unless absolute.
        images_dir: folder with ``<image id><image_ext>`` files.
        ava_file, challenges_file, test_list: file names (``challenges_file``/``test_list`` may be
            None; the challenge names, when the file exists, go to ``df.attrs["challenges"]``).
        split: ``"hosu"`` (:func:`split_hosu`, ``val_fraction``), ``"murray"``
            (:func:`split_murray`, ``n_validation``) or None (official test list rows -> "test"
            if the list exists, everything else "training").
        seed: split seed.
        check_files: drop (and report) rows whose image file does not exist.
        vocabulary: theme vocabulary (:func:`theme_vocabulary`); default: built from all challenge
            ids in ``ava_file`` (before any row is dropped), so it does not depend on which images
            are on disk. Stored in ``df.attrs["theme_vocabulary"]``.
        max_unknown_test_ids: largest share of test-list ids allowed to be absent from
            ``ava_file`` (default 1 %). More is an error: a wrong or damaged list (another
            encoding, a byte-order mark, ids with a prefix) would otherwise silently move test
            images into training. Ids *listed* in ``ava_file`` but missing on disk do not count.
    Returns:
        ids table with extra integer columns ``tag1``, ``tag2``. ``df.attrs``: ``missing`` (ids
        without image file), ``no_votes`` (ids with zero votes), ``theme_vocabulary``,
        ``challenges``, ``test_ids_not_found`` (count of test-list ids not in the table).
    Raises:
        ValueError: malformed ``AVA.txt`` line (file, line number and problem named), duplicate
            id, unknown split, a test list that is empty or does not match ``ava_file``.
        FileNotFoundError: ``ava_file`` missing, or the test list missing for split "hosu"/"murray".
    """
    if split not in ("hosu", "murray", None):
        raise ValueError(f"split must be 'hosu', 'murray' or None, got {split!r}")
    root = Path(root).expanduser().resolve()
    ava_path = _resolve(root, ava_file)
    if not ava_path.exists():
        raise FileNotFoundError(f"AVA label file not found: {str(ava_path)!r}")
    ids, counts, tags1, tags2, chal = _read_ava_txt(ava_path)
    if vocabulary is None:
        vocabulary = theme_vocabulary(chal)
    dist, mos, std, n = _histogram_stats(counts)
    img_dir = _resolve(root, images_dir)
    df = pd.DataFrame({
        "image_id": ids,
        "image_path": [str(img_dir / f"{i}{image_ext}") for i in ids],
        "mos": mos, "std": std, "n_votes": n,
        **{f"dist_{k + 1}": dist[:, k] for k in range(10)},
        "theme": np.asarray(chal, dtype=np.int64),
        "theme_index": theme_indices(chal, vocabulary),
        "set": "training",
        "tag1": np.asarray(tags1, dtype=np.int64),
        "tag2": np.asarray(tags2, dtype=np.int64),
    })
    df, no_votes = _drop_no_votes(df, ava_path)
    df, missing = _drop_missing_files(df, ava_path, check_files)

    test_path = _resolve(root, test_list)
    test_ids = None
    if test_path is not None and test_path.exists():
        test_ids = read_ava_test_list(test_path)
        _check_test_list(test_ids, ids, test_path, ava_path, max_unknown_test_ids, split)
    elif split is not None:
        raise FileNotFoundError(f"AVA test list not found: {str(test_path)!r} (needed for split={split!r}; "
                                "pass split=None to read without a split)")
    if split == "hosu":
        df = split_hosu(df, test_ids, val_fraction=val_fraction, seed=seed)
    elif split == "murray":
        df = split_murray(df, test_ids, n_validation=n_validation, seed=seed)
    elif test_ids is not None:
        df = df.assign(set=np.where(df["image_id"].isin(set(test_ids)), "test", "training"))
    out = _finalize(df, 10, extra=("tag1", "tag2"))
    n_not_found = 0 if test_ids is None else len(set(test_ids) - set(out["image_id"]))
    if n_not_found:
        log.info("%d ids of the test list %s are not in the table (unlisted, missing or without votes)",
                 n_not_found, test_path)
    challenges = {}
    cpath = _resolve(root, challenges_file)
    if cpath is not None and cpath.exists():
        challenges = read_challenges(cpath)
    out.attrs.update(missing=list(missing), no_votes=list(no_votes),
                     theme_vocabulary={int(k): int(v) for k, v in vocabulary.items()},
                     challenges=challenges, test_ids_not_found=int(n_not_found), source=str(ava_path),
                     unknown_themes=_warn_unknown_themes(out["theme"], out["theme_index"], ava_path))
    return out


def _check_test_list(test_ids: Sequence[str], known_ids: Sequence[str], path, ava_path,
                     max_unknown: float, split=None) -> None:
    """ValueError naming the test list when more than ``max_unknown`` of its ids are not in the
    label file, or when it is empty and a ``split`` needs it (the split would silently differ
    from the official one)."""
    if not test_ids and split is not None:
        raise ValueError(f"{path}: the test list holds no image ids (the split would put every "
                         "image into training)")
    known = set(known_ids)
    unknown = [t for t in test_ids if t not in known]
    if unknown and len(unknown) > float(max_unknown) * len(test_ids):
        raise ValueError(
            f"{path}: {len(unknown)} of {len(test_ids)} test ids ({len(unknown) / len(test_ids):.0%}) are not "
            f"in {ava_path} (e.g. {_short_list([repr(u) for u in unknown])}); a wrong or damaged test list "
            "would silently move test images into training. Fix the list (encoding, ids) or raise "
            f"max_unknown_test_ids (now {max_unknown:g})")


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
def _shuffled(ids: Sequence[str], seed: int) -> np.ndarray:
    """Positions of ``ids`` in a seeded random order that depends only on the set of ids."""
    ids = np.asarray(ids, dtype=str)
    order = np.argsort(ids, kind="stable")
    rng = np.random.default_rng(seed)
    return order[rng.permutation(len(order))]


def _test_mask(df: pd.DataFrame, test_ids) -> np.ndarray:
    if test_ids is None:
        raise ValueError("test_ids is required (the official test list), got None")
    if isinstance(test_ids, (str, bytes)):
        raise ValueError("test_ids must be a collection of ids, not a single string")
    return df["image_id"].astype(str).isin({str(t) for t in test_ids}).to_numpy()


def _assign(df: pd.DataFrame, test: np.ndarray, val_pos: np.ndarray) -> pd.DataFrame:
    s = np.full(len(df), "training", dtype=object)
    s[test] = "test"
    s[val_pos] = "validation"
    out = df.copy()
    out["set"] = s.astype(str)
    return out


def split_hosu(df: pd.DataFrame, test_ids: Iterable, val_fraction: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Hosu et al. 2019 §3.3: official test list -> "test"; the rest at random 95% "training" /
    5% "validation" (``round(val_fraction * n_rest)`` validation rows, at least 1 if
    ``val_fraction > 0`` and there are >= 2 rows). Returns a copy with the ``set`` column."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    test = _test_mask(df, test_ids)
    rest = np.flatnonzero(~test)
    n_val = int(round(float(val_fraction) * len(rest)))
    if val_fraction > 0 and n_val == 0 and len(rest) >= 2:
        n_val = 1
    ids = df["image_id"].astype(str).to_numpy()[rest]
    val_pos = rest[_shuffled(ids, seed)[:n_val]]
    return _assign(df, test, val_pos)


def split_murray(df: pd.DataFrame, test_ids: Iterable, n_validation: int | float = 2000,
                 seed: int = 0) -> pd.DataFrame:
    """Murray & Gordo 2017 §3.4: official test list -> "test"; ``n_validation`` (2,000) random
    training images held out as "validation".

    ``n_validation`` may also be a fraction in (0, 1) of the non-test rows. Decision: an integer
    count that would leave no training rows (``n_validation >= n_rest``) raises ValueError instead
    of silently shrinking (a proportional 2000/235,574 of a small table would be a handful of
    images); pass a fraction for small tables (e.g. the demo set: ``n_validation=0.05``).
    """
    test = _test_mask(df, test_ids)
    rest = np.flatnonzero(~test)
    if isinstance(n_validation, (float, np.floating)) and 0.0 < n_validation < 1.0:
        n_val = max(1, int(round(float(n_validation) * len(rest)))) if len(rest) >= 2 else 0
    else:
        if float(n_validation) != int(n_validation) or int(n_validation) < 0:
            raise ValueError(f"n_validation must be a count >= 0 or a fraction in (0, 1), got {n_validation!r}")
        n_val = int(n_validation)
        if n_val >= len(rest) and n_val > 0:
            raise ValueError(
                f"split_murray: only {len(rest)} non-test rows, cannot hold out n_validation={n_val} "
                "for validation and keep training rows; pass a smaller count or a fraction "
                "(e.g. n_validation=0.05)")
    ids = df["image_id"].astype(str).to_numpy()[rest]
    val_pos = rest[_shuffled(ids, seed)[:n_val]]
    return _assign(df, test, val_pos)


def _proportional(total: int, weights: Sequence[int]) -> list[int]:
    """Integer counts summing to ``total`` proportional to ``weights`` (largest remainder),
    each at least 1 when ``total >= len(weights)``."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    cnt = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - cnt), kind="stable")[: total - cnt.sum()]:
        cnt[i] += 1
    if total >= len(w):
        for i in range(len(w)):
            if cnt[i] == 0 and w[i] > 0:
                j = int(np.argmax(cnt))
                cnt[j] -= 1
                cnt[i] += 1
    return cnt.tolist()


def split_photonet(df: pd.DataFrame, n_train: int = 14800, n_val: int = 666, n_test: int = 1200,
                   seed: int = 0) -> pd.DataFrame:
    """Jia et al. 2019 §IV-A: random 14,800 training / 666 validation / 1,200 test images of the
    16,666 downloadable Photo.net images.

    Decision: when the table does not have exactly ``n_train + n_val + n_test`` rows, the three
    counts are scaled proportionally to its size (largest remainder rounding; each set gets at
    least one row if there are >= 3 rows), so the paper's ratios are kept on any table.
    """
    n = len(df)
    total = int(n_train) + int(n_val) + int(n_test)
    if min(n_train, n_val, n_test) < 0 or total == 0:
        raise ValueError(f"invalid split sizes {n_train}/{n_val}/{n_test}")
    if n == total:
        c_train, c_val, c_test = int(n_train), int(n_val), int(n_test)
    else:
        c_train, c_val, c_test = _proportional(n, [n_train, n_val, n_test])
        log.info("split_photonet: %d rows (not %d): scaled to %d/%d/%d", n, total, c_train, c_val, c_test)
    order = _shuffled(df["image_id"].astype(str).to_numpy(), seed)
    s = np.full(n, "training", dtype=object)
    s[order[c_train:c_train + c_val]] = "validation"
    s[order[c_train + c_val:c_train + c_val + c_test]] = "test"
    out = df.copy()
    out["set"] = s.astype(str)
    return out


# --------------------------------------------------------------------------------------------
# Photo.net
# --------------------------------------------------------------------------------------------
def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def read_photonet(path: PathLike, images_dir: PathLike | None = None, image_ext: str = ".jpg",
                  split: str | None = "jia", seed: int = 0, check_files: bool = True) -> pd.DataFrame:
    """Read Photo.net labels (Datta et al. 2006; 7-point scale) as an ids table with K = 7.

    Accepted format (the published lists differ, so this is ours): a text table, one image per
    line, fields separated by commas (if the line contains one) or whitespace; blank lines and
    ``#`` comments skipped; a first line whose second field is not a number is a header and
    skipped. Each line is one of

    * ``image_id c1 c2 c3 c4 c5 c6 c7`` — vote counts for scores 1..7 (dist, mos, std, n_votes
      computed from them);
    * ``image_id mean std`` or ``image_id mean std n_votes`` — only the statistics are known
      ("voting information is lost in some images", Jia §IV-A): ``dist_*`` are NaN, ``n_votes``
      NaN when not given.

    Both kinds may be mixed in one file. Images are ``<images_dir>/<image_id><image_ext>``
    (``images_dir`` default: ``images`` next to the label file).

    Args:
        split: ``"jia"`` (:func:`split_photonet`, seeded) or None (all "training").
    """
    if split not in ("jia", None):
        raise ValueError(f"split must be 'jia' or None, got {split!r}")
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"Photo.net label file not found: {str(path)!r}")
    img_dir = Path(images_dir).expanduser().resolve() if images_dir is not None else path.parent / "images"
    ids, counts, mos, std, nv, lines = [], [], [], [], [], []
    first = True
    for lineno, line in _text_lines(path):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        tok = [t.strip() for t in s.split(",")] if "," in s else s.split()
        if first:
            first = False
            if len(tok) >= 2 and not _is_number(tok[1]):
                continue  # header
        vals = []
        for j, t in enumerate(tok[1:]):
            try:
                vals.append(float(t))
            except ValueError:
                raise ValueError(f"{path}: line {lineno}: field {j + 2} is not a number: {t!r}") from None
            if not np.isfinite(vals[-1]):
                raise ValueError(f"{path}: line {lineno}: field {j + 2} is not a finite number: {t!r}")
        if not tok[0]:
            raise ValueError(f"{path}: line {lineno}: empty image id")
        if len(vals) == 7:
            if any(v < 0 or v != int(v) for v in vals):
                raise ValueError(f"{path}: line {lineno}: vote counts must be integers >= 0: {tok[1:]}")
            counts.append(vals)
            mos.append(np.nan), std.append(np.nan), nv.append(np.nan)
        elif len(vals) in (2, 3):
            m, sd = vals[0], vals[1]
            if not 1.0 <= m <= 7.0:
                raise ValueError(f"{path}: line {lineno}: mean score {m} outside the 1..7 scale")
            if sd < 0:
                raise ValueError(f"{path}: line {lineno}: negative standard deviation {sd}")
            if len(vals) == 3 and vals[2] < 0:
                raise ValueError(f"{path}: line {lineno}: negative vote count {vals[2]}")
            counts.append([np.nan] * 7)
            mos.append(m), std.append(sd), nv.append(vals[2] if len(vals) == 3 else np.nan)
        else:
            raise ValueError(
                f"{path}: line {lineno}: expected an image id followed by 7 vote counts, or by "
                f"mean and std (and optionally the number of votes); got {len(tok)} fields: {s[:80]!r}")
        ids.append(tok[0])
        lines.append(lineno)
    if not ids:
        raise _no_data(path)
    _check_unique(ids, lines, path)
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, 7)
    has_counts = ~np.isnan(counts).any(axis=1)
    dist, m2, s2, n2 = _histogram_stats(np.nan_to_num(counts))
    mos, std, nv = np.asarray(mos, float), np.asarray(std, float), np.asarray(nv, float)
    mos[has_counts], std[has_counts], nv[has_counts] = m2[has_counts], s2[has_counts], n2[has_counts]
    dist[~has_counts] = np.nan
    df = pd.DataFrame({
        "image_id": ids,
        "image_path": [str(img_dir / f"{i}{image_ext}") for i in ids],
        "mos": mos, "std": std, "n_votes": nv,
        **{f"dist_{k + 1}": dist[:, k] for k in range(7)},
        "theme": 0, "theme_index": 0, "set": "training",
    })
    df, no_votes = _drop_no_votes(df, path)
    df, missing = _drop_missing_files(df, path, check_files)
    if split == "jia":
        df = split_photonet(df, seed=seed)
    out = _finalize(df, 7)
    out.attrs.update(missing=list(missing), no_votes=list(no_votes), source=str(path))
    return out


# --------------------------------------------------------------------------------------------
# plain CSV
# --------------------------------------------------------------------------------------------
def read_label_csv(path: PathLike, images_dir: PathLike | None = None, id_column: str = "image_id",
                   path_column: str | None = None, mos_column: str = "mos", std_column: str = "std",
                   n_votes_column: str = "n_votes", dist_prefix: str = "dist_",
                   theme_column: str | None = None, set_column: str = "set", image_ext: str = ".jpg",
                   vocabulary: Mapping | None = None, check_files: bool = True,
                   sep: str = ",", encoding: str = "utf-8") -> pd.DataFrame:
    """Read a plain CSV of labels as an ids table.

    Required: ``id_column``; ``mos_column`` unless distribution columns ``<dist_prefix>1..K``
    are present (then mos = sum k p_k); ``path_column`` / ``theme_column`` when given.
    Optional (used when present, else NaN / defaults): ``std_column``, ``n_votes_column``, the
    distribution columns (normalised to sum 1), ``set_column`` (values training / validation /
    test; default all "training").

    Image paths: ``path_column`` values (relative ones resolved against ``images_dir``, default
    the CSV's folder), else ``<images_dir>/<id><image_ext>`` (``images_dir`` default: the CSV's
    folder; no extension is added to ids that already end with an image extension).

    Rows whose distribution columns are all zero have no votes: they are dropped and reported
    (``df.attrs["no_votes"]``), as in :func:`read_ava`.

    Raises:
        ValueError: naming the file (and the 1-based line and column where there is one): a
            required column is missing, an empty file, text that is not ``encoding``, a line
            with more or fewer fields than the header, an empty / NaN / non-numeric / infinite
            MOS, a negative or non-numeric vote count / std / distribution value, a non-integer
            theme, duplicate ids, bad ``set`` values.
    """
    import csv
    import io

    from ku.data.images import IMAGE_EXTENSIONS

    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"label file not found: {str(path)!r}")
    text = "\n".join(line for _, line in _text_lines(path, encoding))
    if not text.strip():
        raise _no_data(path)
    data_lines = None
    first_line = text.split("\n", 1)[0]
    header = next(csv.reader([first_line], delimiter=sep)) if len(sep) == 1 else re.split(sep, first_line)
    seen = set()
    for col in (c.strip() for c in header):
        if col in seen:  # pandas would rename the second one 'col.1' and use the first silently
            raise ValueError(f"{path}: line 1: column {col!r} appears more than once in the header; "
                             "rename or remove the duplicate")
        seen.add(col)
    if len(sep) == 1:  # field counts per line (pandas would silently shift or drop fields)
        rd = csv.reader(io.StringIO(text), delimiter=sep)
        header = next(rd)
        data_lines = []
        for row in rd:
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}: line {rd.line_num}: {len(row)} field(s), but the header has "
                                 f"{len(header)} ({sep.join(header)[:80]!r})")
            data_lines.append(rd.line_num)
    raw = pd.read_csv(io.StringIO(text), sep=sep, dtype={id_column: str}, keep_default_na=True,
                      index_col=False, engine="c" if len(sep) == 1 else "python")
    if data_lines is None or len(data_lines) != len(raw):
        data_lines = [i + 2 for i in range(len(raw))]  # header line, 1-based
    if len(raw) == 0:
        raise _no_data(path)

    def line_of(i):
        return data_lines[int(i)]

    def numbers(col, allow_nan, minimum=None, what="a finite number"):
        """Column as float64; bad values raise naming the line and the column."""
        vals = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=np.float64)
        given = raw[col].notna().to_numpy()
        bad = (given & ~np.isfinite(vals)) | (~given & (not allow_nan))
        if minimum is not None:
            with np.errstate(invalid="ignore"):
                bad |= given & np.isfinite(vals) & (vals < minimum)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            v = raw[col].iloc[i]
            v = "" if pd.isna(v) else (v.item() if hasattr(v, "item") else v)
            need = what if minimum is None else f"{what} >= {minimum:g}"
            raise ValueError(f"{path}: line {line_of(i)}: column {col!r} must be {need}, got {v!r}")
        return vals

    def need(col):
        if col not in raw.columns:
            raise ValueError(f"{path}: required column {col!r} not found (columns: {list(raw.columns)})")

    need(id_column)
    dcols = [(int(m.group(1)), c) for c in raw.columns
             if isinstance(c, str) and (m := re.fullmatch(re.escape(dist_prefix) + r"(\d+)", c))]
    dcols = [c for _, c in sorted(dcols)]
    if dcols:
        ks = sorted(int(c[len(dist_prefix):]) for c in dcols)
        if ks != list(range(1, len(ks) + 1)):
            raise ValueError(f"{path}: distribution columns must be {dist_prefix}1..{dist_prefix}K, got {dcols}")
    else:
        need(mos_column)
    if path_column is not None:
        need(path_column)
    if theme_column is not None:
        need(theme_column)
    ids = raw[id_column].astype(str).str.strip().tolist()
    if raw[id_column].isna().any():
        bad = int(np.flatnonzero(raw[id_column].isna().to_numpy())[0])
        raise ValueError(f"{path}: line {line_of(bad)}: empty value in column {id_column!r}")
    _check_unique(ids, data_lines, path)

    k = len(dcols)
    if k:
        h = np.stack([numbers(c, allow_nan=False, minimum=0.0) for c in dcols], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            dist = h / h.sum(axis=1, keepdims=True)
        dist[~np.isfinite(dist).all(axis=1)] = np.nan
        no_votes_mask = h.sum(axis=1) == 0
    else:
        dist = np.zeros((len(raw), 0))
        no_votes_mask = np.zeros(len(raw), dtype=bool)
    if mos_column in raw.columns:
        mos = numbers(mos_column, allow_nan=False)
    else:
        mos = dist @ np.arange(1, k + 1, dtype=np.float64)
    std = numbers(std_column, allow_nan=True, minimum=0.0) if std_column and std_column in raw.columns \
        else np.full(len(raw), np.nan)
    nv = numbers(n_votes_column, allow_nan=True, minimum=0.0) if n_votes_column and n_votes_column in raw.columns \
        else np.full(len(raw), np.nan)

    base = Path(images_dir).expanduser().resolve() if images_dir is not None else path.parent
    if path_column is not None:
        paths = [str(p if Path(p).is_absolute() else base / p) for p in raw[path_column].astype(str)]
    else:
        paths = [str(base / (i if os.path.splitext(i)[1].lower() in IMAGE_EXTENSIONS else i + image_ext))
                 for i in ids]
    if theme_column:
        tv = numbers(theme_column, allow_nan=True, what="an integer challenge id")
        tv = np.nan_to_num(tv, nan=0.0)
        if (np.abs(tv) > 2.0 ** 62).any():
            i = int(np.flatnonzero(np.abs(tv) > 2.0 ** 62)[0])
            raise ValueError(f"{path}: line {line_of(i)}: column {theme_column!r} is too large for a "
                             f"challenge id: {raw[theme_column].iloc[i]!r}")
        if (tv != np.round(tv)).any():
            i = int(np.flatnonzero(tv != np.round(tv))[0])
            raise ValueError(f"{path}: line {line_of(i)}: column {theme_column!r} must be an integer "
                             f"challenge id, got {raw[theme_column].iloc[i]!r}")
        theme = tv.astype(np.int64)
    else:
        theme = np.zeros(len(raw), np.int64)
    if vocabulary is None:
        vocabulary = theme_vocabulary(theme)
    if set_column and set_column in raw.columns:
        sets = raw[set_column].astype(str).str.strip().to_numpy()
        bad = ~np.isin(sets, SETS)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: line {line_of(i)}: column {set_column!r} must be one of {SETS}, got {sets[i]!r}")
    else:
        sets = np.full(len(raw), "training")
    df = pd.DataFrame({
        "image_id": ids, "image_path": paths, "mos": mos, "std": std, "n_votes": nv,
        **{f"dist_{j + 1}": dist[:, j] for j in range(k)},
        "theme": theme, "theme_index": theme_indices(theme, vocabulary), "set": sets,
    })
    no_votes = df.loc[no_votes_mask, "image_id"].tolist()
    if no_votes:
        log.warning("%d rows of %s have no votes (all %s* columns are 0): %s; rows dropped",
                    len(no_votes), path, dist_prefix, _short_list(no_votes))
        df = df.loc[~no_votes_mask]
    df, missing = _drop_missing_files(df, path, check_files)
    out = _finalize(df, k)
    out.attrs.update(missing=list(missing), no_votes=list(no_votes), source=str(path),
                     theme_vocabulary={int(a): int(b) for a, b in vocabulary.items()},
                     unknown_themes=_warn_unknown_themes(out["theme"], out["theme_index"], path))
    return out

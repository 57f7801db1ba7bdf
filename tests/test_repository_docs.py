"""The repository's text stands alone: no pointer to files outside it, to tracker issues, or to
internal work periods.

Docstrings, comments, README.md, docs/ and bench/ cite the papers' sections and files inside the
repository (``docs/released_code.md``, ``docs/design.md``, ``docs/bad_input.md``), and date their
measurements. External projects' issues are cited as ``owner/repo#N`` (a reader can open them).
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["ku", "scripts", "bench", "docs", "tests", "README.md", "notebooks/_build.py"]
SUFFIXES = {".py", ".md", ".txt", ".json", ".cfg", ".ini", ".toml"}
THIS_FILE = Path(__file__).resolve()

# name -> pattern; each says what a reader of the repository could not follow
FORBIDDEN = {
    "notes outside the repository": re.compile(
        r"research/|ku_anchor|ecosystem_anchor|DESIGN\.md|CONTRACTS\.md|\.\./shared|/work/shared"),
    "tracker issue number": re.compile(r"\b[Ii]ssues?\s+#?\d+"),
    "bare #number (not owner/repo#N)": re.compile(r"(?<![\w/.-])#\d+\b"),
    "internal work period": re.compile(r"\b[Ss]essions?\s+\d+|\b[Tt]his session\b"),
}


def scanned_files():
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            yield path
        elif path.is_dir():
            for f in sorted(path.rglob("*")):
                if (f.is_file() and f.suffix in SUFFIXES and "__pycache__" not in f.parts
                        and f.resolve() != THIS_FILE):
                    yield f


def violations(text, patterns=FORBIDDEN):
    """``[(line number, kind, line)]`` of every forbidden reference in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for kind, pattern in patterns.items():
            if pattern.search(line):
                found.append((number, kind, line.strip()))
    return found


def test_the_scan_sees_the_repository():
    files = {f.relative_to(ROOT).as_posix() for f in scanned_files()}
    for expected in ("README.md", "docs/released_code.md", "docs/design.md", "ku/training/__init__.py",
                     "bench/README.md", "tests/conftest.py"):
        assert expected in files
    assert "tests/test_repository_docs.py" not in files


@pytest.mark.parametrize("text, kind", [
    ("see research/ku_anchor.md §3.5", "notes outside the repository"),
    ("(measured in ``DESIGN.md`` §4)", "notes outside the repository"),
    ("the ids table of CONTRACTS.md", "notes outside the repository"),
    ("copied from /work/shared/papers", "notes outside the repository"),
    ("Input checks (issue 8):", "tracker issue number"),
    ("Issue 7 point 3: <= 1.3x", "tracker issue number"),
    ("as asked in #14", "bare #number (not owner/repo#N)"),
    ("re-measured in session 4", "internal work period"),
    ("Sessions 2-3 measured", "internal work period"),
    ("ratios re-measured this session", "internal work period"),
])
def test_patterns_catch_what_they_should(text, kind):
    assert [k for _, k, _ in violations(text)] == [kind]


@pytest.mark.parametrize("text", [
    "keras-team/keras#20585 is worked around here",
    "the author's answer in subpic/ava-mlsp#1",
    "Heavy objects are built once per test session",
    "measured 2026-11-23 (commit 27f5dba)",
    "on the paper's 250k images this is rarely an issue",
    "``docs/released_code.md`` §7",
])
def test_patterns_leave_legitimate_text_alone(text):
    assert violations(text) == []


def test_no_reference_outside_the_repository():
    bad = []
    for f in scanned_files():
        text = f.read_text(encoding="utf-8", errors="replace")
        bad += [f"{f.relative_to(ROOT)}:{n}: {kind}: {line}" for n, kind, line in violations(text)]
    assert not bad, ("references a reader of the repository cannot follow (cite docs/*.md and the "
                     "papers' sections, date measurements):\n" + "\n".join(bad))

"""README.md's paper rows of the MLSP results table use the names and numbers of
``ku.metrics.paper_results()`` (what ``ku evaluate --compare`` prints), so the two cannot drift."""
import re
from pathlib import Path

from ku.metrics import paper_results

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| paper: (?P<name>[^,|]+), [^|]*MLSP \| (?P<srcc>[\d.]+) \| (?P<plcc>[\d.]+) "
                 r"\| (?P<acc>[\d.]+)% \|", re.M)


def test_mlsp_paper_rows_match_paper_results():
    rows = list(ROW.finditer(README.read_text()))
    assert len(rows) >= 2, "README lost its MLSP paper rows"
    ref = paper_results().set_index("model")
    for m in rows:
        name = m["name"].strip()
        assert name in ref.index, f"README row {name!r} is not a ku.metrics.paper_results() name"
        r = ref.loc[name]
        assert float(m["srcc"]) == r["SRCC"] and float(m["plcc"]) == r["PLCC"], name
        assert abs(float(m["acc"]) / 100 - r["accuracy"]) < 1e-9, name

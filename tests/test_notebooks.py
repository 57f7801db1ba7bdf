"""Every notebook in notebooks/ runs top to bottom (small configuration: KU_NOTEBOOK_FAST=1) and
shows its figures: run with the Jupyter kernel's inline Matplotlib backend (as a reader runs
them), every code cell that draws (``plt.show()``) must have an image/png output."""
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
INLINE = "module://matplotlib_inline.backend_inline"


def test_there_is_a_notebook_per_paper():
    names = {p.stem for p in NOTEBOOKS}
    assert {"00_quickstart", "01_mlsp_hosu2019", "02_apm_murray2017", "03_theme_roi_jia2019"} <= names


def test_notebooks_are_what_the_build_script_writes():
    """notebooks/_build.py is where the notebooks are edited: the committed cells are its cells."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("notebook_build", NOTEBOOKS[0].parent / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert sorted(build.NOTEBOOKS) == [p.stem for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        committed = [(c.cell_type, c.source) for c in nbformat.read(path, as_version=4).cells]
        built = [(c["cell_type"], c["source"]) for c in build.NOTEBOOKS[path.stem]]
        assert committed == built, f"{path.name} differs from notebooks/_build.py: edit there, then run it"


def figure_cells(nb):
    """Indices of the code cells that draw a figure."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "plt.show()" in c.source]


def pngs(cell):
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_its_figures(path, tmp_path, monkeypatch):
    """Runs top to bottom and shows its figures (and notebook 02 prints APM-m's fusion weight).
    The teacher cache that a second run of notebook 02 reads is tested in test_apm_semantic."""
    monkeypatch.setenv("KU_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("KU_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", INLINE)  # figures land in the outputs, as in Jupyter
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{path.name} is committed with outputs; strip them (python notebooks/_build.py)"
    expected = figure_cells(nb)
    assert expected, f"{path.name} draws no figure"
    t = time.perf_counter()
    nb = _run(path, tmp_path)
    print(f"{path.name}: {time.perf_counter() - t:.0f} s (FAST)")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    missing = [i for i in expected if pngs(nb.cells[i]) == 0]
    assert not missing, (f"{path.name}: cells {missing} draw a figure but have no image/png "
                         f"output: {[nb.cells[i].source[:80] for i in missing]}")
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "np.int32(" not in text and "np.int64(" not in text and "np.float" not in text
    assert text.count("scaled down to") <= 1, "one summary line, not one line per image"
    if path.stem == "02_apm_murray2017":
        assert "fusion weight of the SPP branch" in text, text[-2000:]


def _run(path, workdir):
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


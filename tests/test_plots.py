"""ku/plots.py: axes are labelled, epoch ticks are integers (figures read without the code)."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from ku import plots  # noqa: E402


def test_training_curves_labels_and_integer_epochs(tmp_path):
    hist = {"loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.85], "learning_rate": [1e-3, 1e-3, 1e-4]}
    fig = plots.training_curves(hist, path=tmp_path / "c.png")
    assert (tmp_path / "c.png").is_file()
    for ax in fig.axes:
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel(), ax.get_title()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert {ax.get_ylabel() for ax in fig.axes} == {"loss", "learning rate"}


def test_distribution_bars_have_axis_labels():
    rng = np.random.default_rng(0)
    d = rng.dirichlet(np.ones(10), size=3)
    fig = plots.distributions(d, d[::-1], max_items=3)
    assert all(ax.get_xlabel() == "score" for ax in fig.axes)
    assert fig.axes[0].get_ylabel() == "fraction of votes"

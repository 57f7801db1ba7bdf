"""ku.data.demo: deterministic AVA-format demo set with known ground truth."""
import hashlib
import os

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from ku.data import demo
from ku.data.demo import degrade, demo_dir, load_demo, make_demo_set
from ku.data.images import check_images, read_image
from ku.data.readers import read_ava

N = 24


def _digest(root):
    """sha256 of every file of a demo set (relative path -> hash)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_demo_set(tmp_path_factory.mktemp("demo") / "a", n_images=N, seed=0)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """Large enough for statistics on theme effects (built in ~1 s); the full theme model."""
    root = make_demo_set(tmp_path_factory.mktemp("demo") / "m", n_images=120, seed=0, theme_effects=1.0)
    df = read_ava(root, split=None)
    truth = pd.read_csv(root / "demo_truth.csv", dtype={"image_id": str})
    assert (truth["theme"].to_numpy() == df.set_index("image_id").loc[truth["image_id"], "theme"].to_numpy()).all()
    return df.merge(truth.drop(columns=["theme"]), on="image_id", validate="1:1")


def test_deterministic_and_seed_dependent(small, tmp_path):
    again = make_demo_set(tmp_path / "b", n_images=N, seed=0)
    d1, d2 = _digest(small), _digest(again)
    assert d1 == d2  # identical AVA.txt, lists, truth and image bytes
    assert sum(k.startswith("images") for k in d1) == N
    other = make_demo_set(tmp_path / "c", n_images=N, seed=1)
    assert (other / "AVA.txt").read_text() != (small / "AVA.txt").read_text()


def test_layout_and_reader(small):
    for name in ["AVA.txt", "challenges.txt", "tags.txt", "demo_truth.csv", demo.MARKER,
                 "aesthetics_image_lists/generic_test.jpgl"]:
        assert (small / name).is_file(), name
    lines = (small / "AVA.txt").read_text().splitlines()
    assert len(lines) == N and all(len(line.split()) == 15 for line in lines)
    df = read_ava(small)  # split="hosu"
    assert len(df) == N and df.attrs["missing"] == [] and df.attrs["no_votes"] == []
    test_ids = (small / "aesthetics_image_lists" / "generic_test.jpgl").read_text().split()
    assert len(test_ids) == round(0.25 * N)
    assert set(df.loc[df["set"] == "test", "image_id"]) == set(test_ids)
    assert (df["set"] == "validation").sum() == 1
    assert df["n_votes"].between(100, 250).all()
    assert len(set(df["theme"])) >= 3 and (df["theme_index"] > 0).all()
    assert set(df.attrs["challenges"].values()) == {v[0] for v in demo.THEMES.values()}
    assert len(check_images(small / "images")) == 0


def test_image_sizes_and_truth(small):
    truth = pd.read_csv(small / "demo_truth.csv", dtype={"image_id": str})
    assert len(truth) == N
    for _, r in truth.iterrows():
        im = read_image(small / "images" / f"{r.image_id}.jpg")
        assert im.shape == (r.height, r.width, 3)
        assert 200 <= min(im.shape[:2]) and max(im.shape[:2]) <= 800
        if r.grey:
            assert (im[..., 0] == im[..., 1]).all()
    assert set(truth["degradation"]) <= {"none", *demo.DEGRADATIONS}
    assert truth["grey"].any() and not truth["grey"].all()


def test_size_distribution_default_parameters(medium):
    side = (medium["height"] + medium["width"]) / 2
    assert 270 < side.mean() < 400  # mostly small (CPU extraction on 8 crops per image)
    assert medium[["height", "width"]].min().min() >= 200 and medium[["height", "width"]].max().max() <= 800
    assert (medium["height"] != medium["width"]).mean() > 0.5  # varied aspect ratios


def test_scores_follow_the_model(medium):
    m = medium
    assert spearmanr(m["latent"], m["mos"])[0] > 0.95  # votes drawn around the latent score
    generic = m[(m["theme_name"] == "Free Study") & (m["degradation"] != "none")]
    assert spearmanr(generic["strength"], generic["mos"])[0] < -0.6  # stronger degradation, lower score
    # the score model, recomputed from the truth table (up to the N(0, 0.25^2) term)
    appeal = {s[0]: s[2] for s in demo.SOURCES}
    pred = [demo.BASE_SCORE + appeal[r.source] + demo.THEME_OFFSETS[r.theme]
            - demo.THEME_WEIGHTS[r.theme][r.degradation] * r.strength
            - (demo.OFF_TOPIC_PENALTY if demo.THEMES[r.theme][2] not in (None, r.degradation) else 0)
            for r in m.itertuples()]
    resid = m["latent"] - np.clip(pred, 1.5, 9.5)
    assert abs(resid.mean()) < 0.15 and 0.1 < resid.std() < 0.4
    # the recorded parts add up to the same model (theme_effects = 1)
    np.testing.assert_allclose(m["content"] + m["theme_term"], pred, atol=2e-6)


@pytest.mark.parametrize("theme,kind", [("Motion Blur", "motion_blur"), ("High Key", "overexposure"),
                                        ("Low Key", "underexposure")])
def test_theme_changes_what_is_rewarded(medium, theme, kind):
    d = medium[medium["degradation"] == kind]
    in_theme, generic = d[d["theme_name"] == theme], d[d["theme_name"] == "Free Study"]
    assert len(in_theme) >= 3 and len(generic) >= 3
    assert in_theme["mos"].mean() > generic["mos"].mean() + 1.0
    assert spearmanr(in_theme["strength"], in_theme["mos"])[0] > 0  # rewarded in its challenge
    assert spearmanr(generic["strength"], generic["mos"])[0] < 0  # punished elsewhere


def test_degrade_strength_is_monotone():
    rng = np.random.default_rng(0)
    im = (np.indices((64, 80)).sum(0) % 16 * 16).astype(np.uint8)
    im = np.dstack([im, im[::-1], 255 - im])
    lap = []
    for s in (0.2, 0.6, 1.0):
        out, name, param = degrade(im, "gaussian_blur", s, rng)
        assert out.shape == im.shape and out.dtype == np.uint8 and name == "sigma_px"
        lap.append(np.abs(np.diff(out.astype(float), axis=1)).mean())
    assert lap[0] > lap[1] > lap[2]
    dark = [degrade(im, "underexposure", s, rng)[0].mean() for s in (0.2, 1.0)]
    assert im.mean() > dark[0] > dark[1]
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(im, "sepia", 0.5, rng)


def test_cache_marker_and_rebuild(tmp_path, monkeypatch):
    monkeypatch.setenv("KU_CACHE_DIR", str(tmp_path / "cache"))
    root = make_demo_set(n_images=10, seed=3)
    assert root == demo_dir(10, 3) == tmp_path / "cache" / "demo-v2-n10-s3"
    assert demo_dir(10, 3, theme_effects=0.5) == tmp_path / "cache" / "demo-v2-n10-s3-t0.5"
    marker = root / demo.MARKER
    t0 = marker.stat().st_mtime_ns
    assert make_demo_set(n_images=10, seed=3) == root and marker.stat().st_mtime_ns == t0  # reused
    # an interrupted build (no marker) is rebuilt
    marker.unlink()
    (root / "AVA.txt").write_text("garbage\n")
    make_demo_set(n_images=10, seed=3)
    assert marker.is_file() and len((root / "AVA.txt").read_text().splitlines()) == 10
    make_demo_set(n_images=10, seed=3, force=True)
    assert marker.stat().st_mtime_ns != t0
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no leftover build folders
    # never overwrites foreign data
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        make_demo_set(foreign, n_images=10)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_load_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("KU_CACHE_DIR", str(tmp_path))
    df = load_demo(n_images=N, seed=0)
    assert len(df) == N and set(df["set"]) == {"training", "validation", "test"}
    m = load_demo(n_images=N, seed=0, split="murray")
    assert (m["set"] == "validation").sum() == 1 and (m["set"] == "test").sum() == 6


def test_theme_effects_change_votes_not_images(small, tmp_path):
    themed = make_demo_set(tmp_path / "t", n_images=N, seed=0, theme_effects=1.0)
    a, b = _digest(small), _digest(themed)
    images = [k for k in a if k.startswith("images")]
    assert len(images) == N and all(a[k] == b[k] for k in images)  # byte-identical images
    assert a["AVA.txt"] != b["AVA.txt"]  # different votes
    ta = pd.read_csv(small / "demo_truth.csv")
    tb = pd.read_csv(themed / "demo_truth.csv")
    np.testing.assert_array_equal(ta["content"], tb["content"])
    np.testing.assert_array_equal(ta["theme_term"], tb["theme_term"])
    # the default (theme_effects = 0) scores are content plus noise only
    np.testing.assert_allclose(ta["latent"], np.clip(ta["content"] + (ta["latent"] - ta["content"]), 1.5, 9.5))
    assert (ta["latent"] - ta["content"]).abs().max() < 1.5  # the N(0, 0.25^2) term, no theme part
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="theme_effects"):
            make_demo_set(tmp_path / "bad", n_images=N, theme_effects=bad)


@pytest.mark.parametrize("theme_effects,content_r2,oracle,oracle_theme", [
    (0.0, 0.947, 0.975, 0.975), (0.5, 0.637, 0.828, 0.977), (1.0, 0.244, 0.478, 0.985)])
def test_score_report_matches_the_documented_table(tmp_path, theme_effects, content_r2, oracle, oracle_theme):
    """The variance shares and oracle SRCCs of the default 320-image set are the ones the module
    docstring documents (a change of the generator must update the docs)."""
    root = make_demo_set(tmp_path / "d", seed=0, theme_effects=theme_effects)
    r = demo.score_report(root)
    assert r["n_images"] == 320 and r["n_test"] == 80
    assert r["content_r2"] == pytest.approx(content_r2, abs=6e-4)
    assert r["oracle_srcc"] == pytest.approx(oracle, abs=6e-4)
    assert r["oracle_theme_srcc"] == pytest.approx(oracle_theme, abs=6e-4)
    assert r["noise"] == pytest.approx(1 - r["full_r2"]) and r["noise"] < 0.1
    doc = demo.__doc__
    assert f"{content_r2:.3f}".lstrip("0") in doc or f"{content_r2:.2f}" in doc


def test_concurrent_builds_never_move_a_complete_set(tmp_path, monkeypatch):
    """Two processes building the same set: the later one keeps the finished set in place (a
    reader of the first one's images must not see them vanish)."""
    root = tmp_path / "d"
    real = demo._generate
    finished = {}

    def generate_then_someone_else_finishes(tmp, n, seed, te, scale):
        real(tmp, n, seed, te, scale)
        if not finished:  # while we generated, another process completed the same set
            finished["started"] = True
            finished["inode"] = make_demo_set(root, n_images=n, seed=seed, theme_effects=te).stat().st_ino

    monkeypatch.setattr(demo, "_generate", generate_then_someone_else_finishes)
    out = make_demo_set(root, n_images=10, seed=0)
    assert out.stat().st_ino == finished["inode"]  # the other build's folder, not moved aside
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # our copy discarded


def test_image_scale_renders_the_same_set_smaller(small, tmp_path, monkeypatch):
    scaled = make_demo_set(tmp_path / "z", n_images=N, seed=0, image_scale=0.85)
    for name in ["AVA.txt", "challenges.txt", "aesthetics_image_lists/generic_test.jpgl"]:
        assert (scaled / name).read_text() == (small / name).read_text(), name  # scores, themes, split
    t1 = pd.read_csv(small / "demo_truth.csv", dtype={"image_id": str})
    tz = pd.read_csv(scaled / "demo_truth.csv", dtype={"image_id": str})
    same = [c for c in t1.columns if c not in ("height", "width")]
    pd.testing.assert_frame_equal(t1[same], tz[same])
    np.testing.assert_array_equal(tz["height"], np.round(t1["height"] * 0.85).astype(int))
    np.testing.assert_array_equal(tz["width"], np.round(t1["width"] * 0.85).astype(int))
    for r in tz.itertuples():
        assert read_image(scaled / "images" / f"{r.image_id}.jpg").shape == (r.height, r.width, 3)
    # the default location names the scale; scale 1 keeps the marker of sets built before the option
    monkeypatch.setenv("KU_CACHE_DIR", str(tmp_path / "cache"))
    assert demo_dir(10, 3, image_scale=0.85) == tmp_path / "cache" / "demo-v2-n10-s3-z0.85"
    assert demo_dir(10, 3, theme_effects=0.5, image_scale=1.0) == tmp_path / "cache" / "demo-v2-n10-s3-t0.5"
    assert "image_scale" not in (small / demo.MARKER).read_text()
    with pytest.raises(ValueError, match="image_scale"):
        make_demo_set(tmp_path / "bad", n_images=N, image_scale=0.3)

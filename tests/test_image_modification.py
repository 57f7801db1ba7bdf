"""Image modification of Murray & Gordo 2017 §4.3: the distance to the target distribution goes
down, the change stays bounded, the heat map is where the pixels changed, the figure is written."""
import keras
import numpy as np
import pytest

from ku.image_modification import modify_image, plot_modification, shifted_target
from ku.layers import ImagePreprocessing
from ku.models import apm
from ku.models.masking import masked_model


@pytest.fixture(scope="module")
def model():
    inp = keras.Input((None, None, 3), name="image")
    x = ImagePreprocessing("caffe", name="preprocessing")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="c1",
                            kernel_initializer=keras.initializers.GlorotUniform(0))(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2",
                            kernel_initializer=keras.initializers.GlorotUniform(1))(x)
    net = masked_model(keras.Model(inp, x, name="tiny"), name="backbone")
    m = apm.apm_model(backbone_model=net, fc_units=32)
    # a deterministic head with every output unit alive
    rng = np.random.default_rng(0)
    fc1, fc2 = m.get_layer("apm_fc1"), m.get_layer("apm_fc2")
    fc1.set_weights([rng.normal(0, 0.3, fc1.kernel.shape), np.full(32, 0.1)])
    fc2.set_weights([rng.normal(0, 0.3, fc2.kernel.shape), np.full(10, 0.5)])
    return m


def test_shifted_target():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(shifted_target(p, "better"), [0, 0.1, 0.2, 0.3, 0.4, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(shifted_target(p, "worse"), [0.3, 0.3, 0.4, 0, 0, 0, 0, 0, 0, 0])
    q = np.zeros(10)
    q[-1] = 1
    np.testing.assert_allclose(shifted_target(q, "better"), q)  # top bin keeps its mass
    half = shifted_target(p, "better", shift=0.5)
    np.testing.assert_allclose(half, 0.5 * p + 0.5 * shifted_target(p, "better"))
    k = np.arange(1, 11)
    assert np.isclose(shifted_target(p, "better") @ k, p @ k + 1)
    with pytest.raises(ValueError, match="direction"):
        shifted_target(p, "up")


@pytest.mark.parametrize("direction, method", [("better", "normalized"), ("worse", "sign")])
def test_distance_to_target_decreases(model, direction, method, tmp_path):
    img = np.random.default_rng(1).uniform(0, 255, (40, 56, 3)).astype(np.float32)
    r = modify_image(model, img, direction, n_steps=15, step_size=2.0, max_change=12.0, method=method)
    assert r.distances.shape == (16,)
    assert r.distances[-1] < 0.7 * r.distances[0], r.distances
    if direction == "better":
        assert r.mean_after > r.mean_before
    else:
        assert r.mean_after < r.mean_before
    d = r.image - img
    assert np.abs(d).max() <= 12.0 + 1e-4
    assert r.image.min() >= 0 and r.image.max() <= 255
    assert r.heat_map.shape == (40, 56) and r.heat_map.max() > 0
    np.testing.assert_allclose(r.dist_before.sum(), 1, rtol=1e-5)
    np.testing.assert_allclose(r.dist_after.sum(), 1, rtol=1e-5)
    # the heat map without smoothing is the per-pixel change summed over channels
    r0 = modify_image(model, img, direction, n_steps=2, step_size=2.0, smooth_sigma=0, method=method)
    np.testing.assert_allclose(r0.heat_map, np.abs(r0.image - img).sum(-1), rtol=1e-5, atol=1e-4)
    path = tmp_path / f"mod_{direction}.png"
    plot_modification(r, path, title=direction)
    assert path.stat().st_size > 1000


def test_explicit_target_and_bad_input(model):
    img = np.full((32, 32, 3), 128, np.uint8)
    t = np.zeros(10)
    t[7] = 1
    r = modify_image(model, img, t, n_steps=3)
    np.testing.assert_allclose(r.target, t)
    with pytest.raises(ValueError, match="shape"):
        modify_image(model, img, np.ones(5) / 5, n_steps=1)
    with pytest.raises(ValueError, match="image"):
        modify_image(model, img[..., 0], "better")

"""ThemeEmbedding (Jia et al. 2019 §III-B): one-hot x FC done as a lookup."""
import keras
import numpy as np
import pytest

from ku.layers.theme_embedding import AVA_N_THEMES, ThemeEmbedding


def _layer(**kw):
    layer = ThemeEmbedding(**kw)
    layer.build((None,))
    rng = np.random.default_rng(0)
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return layer


def test_defaults_are_the_papers():
    layer = ThemeEmbedding()
    assert (layer.n_themes, layer.dim) == (1398, 256) == (AVA_N_THEMES, 256)
    layer.build((None,))
    assert [tuple(w.shape) for w in layer.weights] == [(1398, 256), (256,)]


@pytest.mark.parametrize("unknown", ["zero", "learned"])
def test_equals_one_hot_times_fc(unknown):
    layer = _layer(n_themes=20, dim=8, unknown=unknown)
    w, b = layer.get_weights()
    t = np.array([3, 19, 1, 0, 7, 3])
    onehot = np.eye(20, dtype=np.float64)[t]
    if unknown == "zero":
        onehot[:, 0] = 0.0  # unknown theme = all-zero code
    ref = onehot @ w + b
    np.testing.assert_allclose(np.asarray(layer(t)), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(layer(t[:, None])), ref, rtol=1e-6, atol=1e-6)
    # a Dense layer with the same weights on the one-hot codes gives the same numbers
    dense = keras.layers.Dense(8)
    dense.build((None, 20))
    dense.set_weights([w, b])
    np.testing.assert_allclose(np.asarray(layer(t)), np.asarray(dense(onehot.astype(np.float32))),
                               rtol=1e-6, atol=1e-6)


def test_unknown_path():
    layer = _layer(n_themes=10, dim=4)
    w, b = layer.get_weights()
    out = np.asarray(layer(np.array([0, -1, 10, 12345, 4])))
    for i in range(4):  # id 0 and out-of-range ids -> the bias alone
        np.testing.assert_allclose(out[i], b, rtol=1e-6)
    np.testing.assert_allclose(out[4], w[4] + b, rtol=1e-6)
    learned = _layer(n_themes=10, dim=4, unknown="learned")
    w, b = learned.get_weights()
    np.testing.assert_allclose(np.asarray(learned(np.array([0, 99])))[1], w[0] + b, rtol=1e-6)


def test_bad_args():
    with pytest.raises(ValueError, match="n_themes"):
        ThemeEmbedding(n_themes=0)
    with pytest.raises(ValueError, match="unknown"):
        ThemeEmbedding(unknown="mean")
    with pytest.raises(ValueError, match="theme indices"):
        _layer(n_themes=3, dim=2)(np.zeros((2, 2, 2), np.int32))


def test_save_reload(tmp_path):
    inp = keras.Input((), dtype="int32", name="theme")
    model = keras.Model(inp, ThemeEmbedding(30, 6, activation="relu", name="theme_fc")(inp))
    model.get_layer("theme_fc").set_weights(
        [np.random.default_rng(1).normal(size=w.shape).astype(np.float32) for w in model.get_weights()])
    path = tmp_path / "theme.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.get_layer("theme_fc").get_config() == model.get_layer("theme_fc").get_config()
    t = np.array([0, 5, 29, 31], np.int32)
    np.testing.assert_array_equal(np.asarray(reloaded(t)), np.asarray(model(t)))

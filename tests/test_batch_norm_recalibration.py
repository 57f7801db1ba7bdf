"""recalibrate_batch_norm (PreciseBN) against numpy population statistics written from its definition."""
import keras
import numpy as np
import pytest

from ku.training import recalibrate_batch_norm

EPS = 1e-3  # Keras' BatchNormalization epsilon


def _dense_chain(seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((6,))
    h = keras.layers.Dense(5, name="d1")(x)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Dropout(0.5)(h)  # off at inference: the statistics must not see it
    h = keras.layers.Dense(4, name="d2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    return keras.Model(x, keras.layers.Dense(1, name="out")(h))


def _bn_numpy(h, bn):
    gamma = bn.gamma.numpy() if bn.scale else 1.0
    beta = bn.beta.numpy() if bn.center else 0.0
    m, v = h.mean(axis=0), h.var(axis=0)
    return (h - m) / np.sqrt(v + EPS) * gamma + beta, m, v


def test_dense_chain_equals_numpy_population_statistics():
    model = _dense_chain()
    bn1, bn2 = model.get_layer("bn1"), model.get_layer("bn2")
    bn1.gamma.assign(np.linspace(0.5, 2, 5).astype("float32"))  # the second layer's inputs depend on it
    bn1.beta.assign(np.linspace(-1, 1, 5).astype("float32"))
    x = np.random.default_rng(1).normal(2.0, 3.0, (70, 6)).astype("float32")
    assert recalibrate_batch_norm(model, x, batch_size=16) == 2  # 70 = 4 full batches + 6
    w1, b1 = (v.numpy() for v in model.get_layer("d1").weights)
    w2, b2 = (v.numpy() for v in model.get_layer("d2").weights)
    a1, m1, v1 = _bn_numpy(x.astype(np.float64) @ w1 + b1, bn1)
    _, m2, v2 = _bn_numpy(np.maximum(a1, 0) @ w2 + b2, bn2)
    np.testing.assert_allclose(bn1.moving_mean.numpy(), m1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), v1, rtol=1e-5)
    np.testing.assert_allclose(bn2.moving_mean.numpy(), m2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn2.moving_variance.numpy(), v2, rtol=1e-4)


def test_feature_maps_use_batch_and_spatial_axes_and_frozen_layers_stay():
    keras.utils.set_random_seed(0)
    x_in = keras.Input((4, 5, 3))
    h = keras.layers.Conv2D(6, 1, use_bias=False, name="conv")(x_in)
    h = keras.layers.BatchNormalization(scale=False, name="bn")(h)
    frozen = keras.layers.BatchNormalization(name="frozen")
    frozen.trainable = False
    h = frozen(h)
    model = keras.Model(x_in, keras.layers.GlobalAveragePooling2D()(h))
    x = np.random.default_rng(2).normal(-1.0, 2.0, (9, 4, 5, 3)).astype("float32")
    before = frozen.moving_variance.numpy().copy()
    assert recalibrate_batch_norm(model, (x, np.zeros(9)), batch_size=4) == 1
    h = (x.astype(np.float64) @ model.get_layer("conv").kernel.numpy()[0, 0]).reshape(-1, 6)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), h.var(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(frozen.moving_variance.numpy(), before)


def test_dataset_input_and_max_batches():
    class Batches(keras.utils.PyDataset):
        def __init__(self, x):
            super().__init__()
            self.x = x

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return self.x[i * 10:(i + 1) * 10], np.zeros(10)

    model = _dense_chain(seed=3)
    x = np.random.default_rng(4).normal(size=(30, 6)).astype("float32")
    recalibrate_batch_norm(model, Batches(x), max_batches=2)
    h = x[:20].astype(np.float64) @ model.get_layer("d1").kernel.numpy() + model.get_layer("d1").bias.numpy()
    np.testing.assert_allclose(model.get_layer("bn1").moving_mean.numpy(), h.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_stale_moving_statistics_are_replaced():
    """After a few training steps the moving averages are mostly their start (0 / 1); afterwards the
    inference output equals the numpy forward with population statistics."""
    model = _dense_chain(seed=5)
    x = np.random.default_rng(6).normal(5.0, 4.0, (64, 6)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    stale = model.get_layer("bn1").moving_mean.numpy()
    recalibrate_batch_norm(model, x)
    fresh = model.get_layer("bn1").moving_mean.numpy()
    assert np.max(np.abs(fresh - stale)) > 1.0  # 4 steps of momentum 0.99 kept ~96% of the zero start
    bn1, bn2 = model.get_layer("bn1"), model.get_layer("bn2")
    w1, b1 = (v.numpy() for v in model.get_layer("d1").weights)
    w2, b2 = (v.numpy() for v in model.get_layer("d2").weights)
    wo, bo = (v.numpy() for v in model.get_layer("out").weights)
    a1, _, _ = _bn_numpy(x.astype(np.float64) @ w1 + b1, bn1)
    a2, _, _ = _bn_numpy(np.maximum(a1, 0) @ w2 + b2, bn2)
    np.testing.assert_allclose(model.predict(x, verbose=0), a2 @ wo + bo, rtol=1e-4, atol=1e-4)


def test_nested_trainable_batch_norm_is_refused():
    inner_in = keras.Input((3,))
    inner = keras.Model(inner_in, keras.layers.BatchNormalization()(inner_in), name="inner")
    x = keras.Input((3,))
    model = keras.Model(x, keras.layers.Dense(1)(inner(x)))
    with pytest.raises(ValueError, match="inner"):
        recalibrate_batch_norm(model, np.zeros((4, 3), "float32"))
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batch_norm(_dense_chain(), np.zeros((0, 6), "float32"))

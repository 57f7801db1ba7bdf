"""Per-layer learning-rate multipliers (ku.optimizers) against numpy / plain-Keras references."""
import numpy as np
import pytest
import keras

from ku.optimizers import LayerwiseAdam, LayerwiseSGD, lr_factors


def _model():
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="body")(inputs)
    outputs = keras.layers.Dense(2, name="new_fc")(x)
    return keras.Model(inputs, outputs)


def _grads(model, step):
    rng = np.random.default_rng(step)
    return [rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables]


def test_lr_factors_first_match_wins():
    m = _model()
    f = lr_factors(m.trainable_variables, {"new_fc/kernel": 3.0, "new_fc": 10.0})
    assert f == [1.0, 1.0, 3.0, 10.0]


def test_sgd_momentum_l2_multipliers_match_numpy():
    m = _model()
    w0 = [v.numpy().copy() for v in m.trainable_variables]
    lr, mom, wd = 0.1, 0.9, 0.01
    opt = LayerwiseSGD(lr, momentum=mom, weight_decay=wd, lr_multipliers={"new_fc": 10.0})
    factors = [1.0, 1.0, 10.0, 10.0]
    ref = [w.copy() for w in w0]
    buf = [np.zeros_like(w) for w in w0]
    for step in range(4):
        g = _grads(m, step)
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(x) for x in g], m.trainable_variables))
        for i in range(len(ref)):  # Keras' momentum form; coupled L2 decay as in Caffe / torch
            gi = g[i] + wd * ref[i]
            buf[i] = mom * buf[i] - lr * factors[i] * gi
            ref[i] = ref[i] + buf[i]
    for v, r in zip(m.trainable_variables, ref):
        np.testing.assert_allclose(v.numpy(), r, rtol=1e-5, atol=1e-6)
    # the multiplier really did something: the body moved less per unit gradient than new_fc
    assert not np.allclose(ref[0], w0[0]) and not np.allclose(ref[2], w0[2])


def test_adam_multipliers_equal_separate_adams():
    m, a, b = _model(), _model(), _model()
    for src in (a, b):
        src.set_weights(m.get_weights())
    opt = LayerwiseAdam(1e-3, lr_multipliers={"new_fc": 10.0})
    ref_body, ref_new = keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-2)
    for step in range(3):
        g = [keras.ops.convert_to_tensor(x) for x in _grads(m, step)]
        opt.apply_gradients(zip(g, m.trainable_variables))
        ref_body.apply_gradients(zip(g[:2], a.trainable_variables[:2]))
        ref_new.apply_gradients(zip(g[2:], b.trainable_variables[2:]))
    got = [v.numpy() for v in m.trainable_variables]
    want = [v.numpy() for v in a.trainable_variables[:2]] + [v.numpy() for v in b.trainable_variables[2:]]
    for x, y in zip(got, want):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_fit_save_reload_continues_identically(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(32, 2)).astype("float32")
    m = _model()
    m.compile(optimizer=LayerwiseSGD(0.05, momentum=0.9, weight_decay=1e-4,
                                     lr_multipliers={"new_fc": 10.0}), loss="mse")
    m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    path = tmp_path / "m.keras"
    m.save(path)
    r = keras.models.load_model(path)  # no custom_objects: registered
    assert isinstance(r.optimizer, LayerwiseSGD)
    assert r.optimizer.lr_multipliers == {"new_fc": 10.0}
    assert r.optimizer.l2_weight_decay == pytest.approx(1e-4)
    m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    r.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for u, v in zip(m.get_weights(), r.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_bad_multipliers_name_the_argument():
    with pytest.raises(ValueError, match="lr_multipliers"):
        LayerwiseAdam(1e-3, lr_multipliers={"(": 2.0})
    with pytest.raises(ValueError, match="lr_multipliers"):
        LayerwiseSGD(1e-3, lr_multipliers={"a": -1.0})
    with pytest.raises(TypeError, match="lr_multipliers"):
        LayerwiseAdam(1e-3, lr_multipliers=[("a", 2.0)])

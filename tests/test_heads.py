"""Tests of ku.models.heads (Hosu et al. 2019 §3.2: Single-1FC, Single-3FC, Multi-3FC, Pool-3FC).

Numerical references are plain numpy forward passes written from the paper's / released code's
layer definitions (Dense -> ReLU -> BN(inference) -> Dropout(identity); same-padded convs; 3x3
average pooling that ignores padding), applied to the models' own weights.
"""
import h5py
import keras
import numpy as np
import pytest

from ku.layers import FeatureStandardization, SplitFeatures
from ku.models import heads
from ku.models.heads import (
    DROPOUT_PLUS,
    fc3_sizes,
    load_released_weights,
    multi_3fc,
    pool_3fc,
    single_1fc,
    single_3fc,
)

EPS = 1e-3  # Keras BatchNormalization default epsilon (as in Keras 2)


# ----------------------------------------------------------------------------- helpers
def _randomize(model, seed):
    """Give every weight a random, valid value (so BN statistics are not the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for v in layer.weights:
            shape = tuple(v.shape)
            if v.name == "moving_variance":
                val = rng.uniform(0.5, 2.0, shape)
            elif v.name == "gamma":
                val = rng.uniform(0.5, 1.5, shape)
            elif v.name in ("moving_mean", "beta", "bias"):
                val = rng.normal(0.0, 0.3, shape)
            else:  # kernels
                fan_in = int(np.prod(shape[:-1]))
                val = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            v.assign(val.astype("float32"))
    return model


def _w(model, name):
    return {v.name: v.numpy().astype(np.float64) for v in model.get_layer(name).weights}


def _dense(x, w):
    return x @ w["kernel"] + w["bias"]


def _bn(x, w):
    gamma = w.get("gamma", 1.0)
    return gamma * (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + EPS) + w["beta"]


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_fc3(model, x, prefix="head", output="mos"):
    for i in range(3):
        x = _bn(np.maximum(_dense(x, _w(model, f"{prefix}_fc{i}")), 0.0), _w(model, f"{prefix}_bn{i}"))
    z = _dense(x, _w(model, f"{prefix}_out"))
    return z if output == "mos" else _softmax(z)


def _np_conv_same(x, kernel):
    """x (B,H,W,C), kernel (kh,kw,C,F); stride 1, TF 'same' padding, no bias."""
    kh, kw = kernel.shape[:2]
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    xp = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    h, w = x.shape[1:3]
    out = 0.0
    for dy in range(kh):
        for dx in range(kw):
            out = out + xp[:, dy : dy + h, dx : dx + w, :] @ kernel[dy, dx]
    return out


def _np_avgpool3_same(x):
    """3x3 average pooling, stride 1, 'same': the mean over the valid (unpadded) pixels."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ones = np.pad(np.ones(x.shape[1:3]), 1)
    h, w = x.shape[1:3]
    s = sum(xp[:, dy : dy + h, dx : dx + w, :] for dy in range(3) for dx in range(3))
    n = sum(ones[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return s / n[None, :, :, None]


def _np_conv_bn(model, x, name):
    y = _np_conv_same(x, _w(model, f"{name}_conv")["kernel"])
    return np.maximum(_bn(y, _w(model, f"{name}_bn")), 0.0)


def _np_pool_3fc(model, x, output="mos"):
    b1 = _np_conv_bn(model, x, "branch_1x1")
    b3 = _np_conv_bn(model, x, "3x3_1x1")
    b3 = np.concatenate([_np_conv_bn(model, b3, "3x3_1x3"), _np_conv_bn(model, b3, "3x3_3x1")], -1)
    bp = _np_conv_bn(model, _np_avgpool3_same(x), "branch_pool")
    mixed = np.concatenate([b1, b3, bp], axis=-1)
    return _np_fc3(model, mixed.mean(axis=(1, 2)), output=output)


def _write_keras2_weights(model, path, rename=None, reverse_weights=False, chunk_layer_names=False):
    """Write ``model``'s weights in the exact Keras 2.2.4 ``save_weights`` HDF5 layout."""
    rename = rename or (lambda n: n)
    names = [rename(layer.name) for layer in model.layers]
    with h5py.File(path, "w") as f:
        encoded = np.array([n.encode("utf8") for n in names])
        if chunk_layer_names:  # Keras 2 splits attributes that exceed the HDF5 header limit
            half = len(encoded) // 2
            f.attrs["layer_names0"] = encoded[:half]
            f.attrs["layer_names1"] = encoded[half:]
        else:
            f.attrs["layer_names"] = encoded
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer, lname in zip(model.layers, names):
            g = f.create_group(lname)
            weights = list(layer.weights)
            if reverse_weights:
                weights = weights[::-1]
            wnames = [f"{lname}/{v.name}:0".encode("utf8") for v in weights]
            g.attrs["weight_names"] = np.asarray(wnames)  # empty float array when weightless
            for wn, v in zip(wnames, weights):
                g.create_dataset(wn, data=v.numpy())  # "<layer>/<layer>/<weight>:0"


def _small_heads():
    """name -> (builder(output), input sample shape); small sizes for speed."""
    return {
        "single_1fc": (lambda output: single_1fc(24, output=output), (24,)),
        "single_3fc": (lambda output: single_3fc(24, x_size=32, output=output), (24,)),
        "multi_3fc": (lambda output: multi_3fc([8, 16, 12], output=output), (36,)),
        "pool_3fc": (
            lambda output: pool_3fc((5, 5, 12), n_kernels=8, x_size=16, output=output),
            (5, 5, 12),
        ),
    }


def _x(shape, n=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype("float32")


# ----------------------------------------------------------------------------- structure
def test_fc3_sizes_rule():
    assert fc3_sizes(2048) == (2048, 1024, 256)
    assert fc3_sizes(3072) == (3072, 1536, 384)
    assert fc3_sizes(128) == (128, 64, 16)
    assert fc3_sizes(12) == (12, 6, 1)  # floor division ...
    assert fc3_sizes(4) == (4, 2, 1)  # ... at least one unit
    with pytest.raises(ValueError, match="x_size"):
        fc3_sizes(0)


def test_parameter_counts_full_size():
    """Released heads (docs/released_code.md §6.2-6.3): 37,044,737 and 63,828,481 parameters."""
    assert single_3fc(16928).count_params() == 37_044_737
    assert pool_3fc((5, 5, 16928)).count_params() == 63_828_481


def test_single_3fc_layers_as_released():
    m = single_3fc(64)
    expected = ["features"] + [f"head_{k}{i}" for i in range(3) for k in ("fc", "bn", "do")] + ["head_out"]
    assert [layer.name for layer in m.layers] == expected
    assert [m.get_layer(f"head_fc{i}").units for i in range(3)] == [2048, 1024, 256]
    assert [m.get_layer(f"head_do{i}").rate for i in range(3)] == [0.25, 0.25, 0.5]
    assert m.get_layer("head_out").units == 1
    assert m.get_layer("head_out").get_config()["activation"] == "linear"
    plus = single_3fc(64, dropout=DROPOUT_PLUS)
    assert [plus.get_layer(f"head_do{i}").rate for i in range(3)] == [0.5, 0.5, 0.75]
    no_do = single_3fc(64, dropout=(0.0, 0.25, 0.0))  # rate 0 -> no Dropout layer (released)
    assert [layer.name for layer in no_do.layers if "_do" in layer.name] == ["head_do1"]


def test_pool_3fc_layers_as_released():
    """Names and order of the released wide head. The order is Keras' depth-first functional
    order (identical algorithm in Keras 2.2.4 and Keras 3), i.e. the order the released
    ``model_best_weights.h5`` was written and loaded (by_name=False) in."""
    m = pool_3fc((5, 5, 32), n_kernels=16, x_size=32)
    expected = [
        "features",
        "3x3_1x1_conv", "3x3_1x1_bn", "3x3_1x1",
        "3x3_1x3_conv", "3x3_3x1_conv", "avg_pool_2d",
        "branch_1x1_conv", "3x3_1x3_bn", "3x3_3x1_bn", "branch_pool_conv",
        "branch_1x1_bn", "3x3_1x3", "3x3_3x1", "branch_pool_bn",
        "branch_1x1", "branch_3x3", "branch_pool",
        "mixed_final", "final_GAP",
        "head_fc0", "head_bn0", "head_do0", "head_fc1", "head_bn1", "head_do1",
        "head_fc2", "head_bn2", "head_do2", "head_out",
    ]  # fmt: skip
    assert [layer.name for layer in m.layers] == expected
    convs = {
        "branch_1x1": ((1, 1), 16),
        "3x3_1x1": ((1, 1), 16),
        "3x3_1x3": ((1, 3), 8),
        "3x3_3x1": ((3, 1), 8),
        "branch_pool": ((1, 1), 16),
    }
    for name, (ks, filters) in convs.items():
        conv, bn = m.get_layer(f"{name}_conv"), m.get_layer(f"{name}_bn")
        assert tuple(conv.kernel_size) == ks and conv.filters == filters
        assert conv.padding == "same" and tuple(conv.strides) == (1, 1) and not conv.use_bias
        assert not bn.scale and bn.center
        assert [v.name for v in bn.weights] == ["beta", "moving_mean", "moving_variance"]
    pool = m.get_layer("avg_pool_2d")
    assert tuple(pool.pool_size) == (3, 3) and tuple(pool.strides) == (1, 1) and pool.padding == "same"
    assert tuple(m.get_layer("mixed_final").output.shape) == (None, 5, 5, 48)
    assert [m.get_layer(f"head_fc{i}").units for i in range(3)] == [32, 16, 4]
    # the paper's reading of Fig. 6 (X = 3072) is available
    paper = pool_3fc((5, 5, 8), n_kernels=1024, x_size=3072)
    assert [paper.get_layer(f"head_fc{i}").units for i in range(3)] == [3072, 1536, 384]


def test_pool_3fc_accepts_any_spatial_size():
    m = pool_3fc((None, None, 6), n_kernels=4, x_size=8)
    for hw in [(5, 5), (3, 7)]:
        assert m(_x(hw + (6,), n=2), training=False).shape == (2, 1)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("output", ["mos", "distribution"])
def test_single_heads_match_numpy(output):
    x = _x((24,))
    m1 = _randomize(single_1fc(24, output=output), 1)
    z = _dense(x.astype(np.float64), _w(m1, "head_out"))
    ref1 = z if output == "mos" else _softmax(z)
    np.testing.assert_allclose(m1(x, training=False), ref1, rtol=1e-4, atol=1e-4)

    m3 = _randomize(single_3fc(24, x_size=32, output=output), 2)
    np.testing.assert_allclose(
        m3(x, training=False), _np_fc3(m3, x.astype(np.float64), output=output), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("output", ["mos", "distribution"])
def test_pool_3fc_matches_numpy(output):
    m = _randomize(pool_3fc((5, 5, 12), n_kernels=8, x_size=16, output=output), 3)
    x = _x((5, 5, 12))
    np.testing.assert_allclose(
        m(x, training=False), _np_pool_3fc(m, x.astype(np.float64), output), rtol=1e-4, atol=1e-4
    )


def test_multi_3fc_is_a_linear_combination_of_per_block_3fc():
    blocks = [8, 16, 12]
    m = multi_3fc(blocks)
    # structure: one 3FC per block with X = b_i, one score each, one linear combination
    for i, b in enumerate(blocks):
        assert [m.get_layer(f"block{i}_fc{k}").units for k in range(3)] == list(fc3_sizes(b))
        assert m.get_layer(f"block{i}_out").units == 1
    assert tuple(m.get_layer("head_out").kernel.shape) == (3, 1)
    assert m.get_layer("head_out").get_config()["activation"] == "linear"
    x = _x((36,)).astype(np.float64)
    bounds = np.cumsum([0] + blocks)

    def per_block(model):
        return np.concatenate(
            [_np_fc3(model, x[:, a:b], prefix=f"block{i}") for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))],
            axis=1,
        )

    # at initialisation the combination is the plain average of the block scores
    np.testing.assert_allclose(m(x, training=False), per_block(m).mean(1, keepdims=True), rtol=1e-4, atol=1e-4)
    _randomize(m, 4)
    ref = _dense(per_block(m), _w(m, "head_out"))
    np.testing.assert_allclose(m(x, training=False), ref, rtol=1e-4, atol=1e-4)
    # the split is real: changing block 1's features changes only block 1's score
    sub = keras.Model(m.input, m.get_layer("block_scores").output)
    x2 = x.copy()
    x2[:, 8:24] += 1.0
    d = np.abs(np.asarray(sub(x2, training=False)) - np.asarray(sub(x, training=False))).max(0)
    assert d[1] > 1e-3 and d[0] == 0 and d[2] == 0


def test_multi_3fc_single_block_and_bad_width():
    m = multi_3fc([6])
    assert m(_x((6,)), training=False).shape == (4, 1)
    with pytest.raises(ValueError, match="sum"):
        SplitFeatures([4, 4])(keras.Input((9,)))
    with pytest.raises(ValueError, match="block_channels"):
        multi_3fc([8, 0])


@pytest.mark.parametrize("head", sorted(_small_heads()))
def test_distribution_output_sums_to_one(head):
    build, shape = _small_heads()[head]
    m = build("distribution")
    p = np.asarray(m(_x(shape, n=5), training=False))
    assert p.shape == (5, 10)
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert single_3fc(8, x_size=8, output="distribution", n_bins=7).output.shape == (None, 7)


@pytest.mark.parametrize("output", ["mos", "distribution"])
@pytest.mark.parametrize("head", sorted(_small_heads()))
def test_save_reload_keras(head, output, tmp_path):
    build, shape = _small_heads()[head]
    m = _randomize(build(output), 5)
    x = _x(shape)
    path = tmp_path / f"{head}.keras"
    m.save(path)
    r = keras.saving.load_model(path)
    assert [layer.name for layer in r.layers] == [layer.name for layer in m.layers]
    np.testing.assert_allclose(r(x, training=False), m(x, training=False), rtol=1e-6, atol=1e-6)


def test_split_features_config_round_trip():
    layer = SplitFeatures([3, 5], name="s")
    clone = SplitFeatures.from_config(layer.get_config())
    assert clone.sizes == [3, 5] and clone.name == "s"
    parts = clone(np.arange(16, dtype="float32").reshape(2, 8))
    np.testing.assert_array_equal(parts[1], np.arange(16).reshape(2, 8)[:, 3:])


@pytest.mark.parametrize("head", sorted(_small_heads()))
def test_inference_is_deterministic(head):
    build, shape = _small_heads()[head]
    m = build("mos")
    x = _x(shape, n=8)
    np.testing.assert_array_equal(m(x, training=False), m(x, training=False))
    np.testing.assert_array_equal(m.predict(x, verbose=0), m.predict(x, verbose=0))
    if head != "single_1fc":  # dropout is active in training mode
        assert not np.allclose(m(x, training=True), m(x, training=True))


def test_bad_arguments():
    with pytest.raises(ValueError, match="output"):
        single_3fc(8, output="score")
    with pytest.raises(ValueError, match="dropout"):
        single_3fc(8, dropout=(0.1, 0.2))
    with pytest.raises(ValueError, match="n_bins"):
        single_1fc(8, output="distribution", n_bins=1)
    with pytest.raises(ValueError, match="input_shape"):
        pool_3fc((5, 16928))


# ----------------------------------------------------------------------------- released weights
def _released_pair(kind):
    if kind == "single_3fc":
        build, shape = (lambda: single_3fc(64)), (64,)
    else:
        build, shape = (lambda: pool_3fc((5, 5, 32), n_kernels=16, x_size=32)), (5, 5, 32)
    return _randomize(build(), 6), build(), _x(shape)


@pytest.mark.parametrize("kind", ["single_3fc", "pool_3fc"])
def test_load_released_weights_by_name(kind, tmp_path):
    src, dst, x = _released_pair(kind)
    path = tmp_path / "model_best_weights.h5"
    _write_keras2_weights(src, path)
    with h5py.File(path, "r") as f:  # the layout the loader is meant for
        assert "head_fc0/head_fc0/kernel:0" in f
        assert list(f["head_bn0"].attrs["weight_names"]) == [
            b"head_bn0/gamma:0", b"head_bn0/beta:0", b"head_bn0/moving_mean:0", b"head_bn0/moving_variance:0"
        ]
        if kind == "pool_3fc":
            assert "branch_1x1_bn/branch_1x1_bn/gamma:0" not in f
            assert "branch_1x1_bn/branch_1x1_bn/beta:0" in f
    assert not np.allclose(dst(x, training=False), src(x, training=False))
    assert load_released_weights(dst, path) == "name"
    np.testing.assert_allclose(dst(x, training=False), src(x, training=False), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["single_3fc", "pool_3fc"])
def test_load_released_weights_by_order(kind, tmp_path):
    src, dst, x = _released_pair(kind)
    path = tmp_path / "renamed.h5"
    _write_keras2_weights(src, path, rename=lambda n: "old_" + n)
    assert load_released_weights(dst, path) == "order"
    np.testing.assert_allclose(dst(x, training=False), src(x, training=False), rtol=1e-6, atol=1e-6)


def test_load_released_weights_variants(tmp_path):
    """Chunked ``layer_names0/1`` attribute, weights listed in another order within a layer,
    a full Keras 2 model file (``model_weights`` group), and a head nested in a bigger model."""
    src, dst, x = _released_pair("single_3fc")
    path = tmp_path / "w.h5"
    _write_keras2_weights(src, path, reverse_weights=True, chunk_layer_names=True)
    assert load_released_weights(dst, path) == "name"
    np.testing.assert_allclose(dst(x, training=False), src(x, training=False), rtol=1e-6, atol=1e-6)

    full = tmp_path / "full.h5"
    _write_keras2_weights(src, tmp_path / "tmp.h5")
    with h5py.File(tmp_path / "tmp.h5", "r") as a, h5py.File(full, "w") as b:
        a.copy(a["/"], b, name="model_weights")
        for k, v in a.attrs.items():
            b["model_weights"].attrs[k] = v
        b.attrs["model_config"] = b"{}"
    nested_head = single_3fc(64)
    inp = keras.Input((64,))
    outer = keras.Model(inp, nested_head(keras.layers.Identity(name="pre")(inp)))
    assert load_released_weights(outer, full) == "name"
    np.testing.assert_allclose(outer(x, training=False), src(x, training=False), rtol=1e-6, atol=1e-6)


def test_load_released_weights_errors(tmp_path):
    src, _, _ = _released_pair("single_3fc")
    path = tmp_path / "w.h5"
    _write_keras2_weights(src, path)
    wrong = single_3fc(32)
    before = [v.numpy().copy() for v in wrong.weights]
    with pytest.raises(ValueError) as err:
        load_released_weights(wrong, path)
    msg = str(err.value)
    assert "w.h5" in msg and "head_fc0/kernel (32, 2048)" in msg and "(64, 2048)" in msg
    for v, b in zip(wrong.weights, before):  # nothing was assigned
        np.testing.assert_array_equal(v.numpy(), b)

    other = pool_3fc((5, 5, 64), n_kernels=4, x_size=8)  # different names and layer count
    with pytest.raises(ValueError, match="missing in the file.*branch_1x1_conv"):
        load_released_weights(other, path)

    extra = single_1fc(64)  # head_out exists but the file has more layers
    with pytest.raises(ValueError, match="not in the model.*head_fc0"):
        load_released_weights(extra, path)

    with pytest.raises(FileNotFoundError, match="nope.h5"):
        load_released_weights(src, tmp_path / "nope.h5")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ValueError, match="bad.h5"):
        load_released_weights(src, bad)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_group("x")
    with pytest.raises(ValueError, match="layer_names"):
        load_released_weights(src, empty)
    assert heads.load_released_weights is load_released_weights


# ----------------------------------------------------------------------------- input standardisation
def _planted_linear(n=320, channels=32, seed=0):
    """Features ~ N(0, 1), MOS = 5 + a fixed linear function of them + noise (std 0.1)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, channels))
    w = rng.normal(size=channels) / np.sqrt(channels)
    y = 5.0 + x @ w + 0.1 * rng.normal(size=n)
    return x.astype("float32"), y.astype("float32")


def _fit_head(build, x, y, n_train=256, epochs=30, adapt=False, seed=3):
    """Seeded Adam(1e-2) fit on the first ``n_train`` rows, output bias at the training mean;
    returns (model, predictions of the other rows)."""
    keras.utils.set_random_seed(seed)
    model = build()
    if adapt:
        heads.adapt_head_input(model, x[:n_train])
    out = model.get_layer("head_out")
    kernel, bias = out.get_weights()
    out.set_weights([kernel, np.full_like(bias, y[:n_train].mean())])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x[:n_train], y[:n_train], batch_size=32, epochs=epochs, shuffle=False, verbose=0)
    return model, model.predict(x[n_train:], verbose=0).ravel()


_TINY_HEADS = {
    "single_1fc": lambda norm: single_1fc(32, input_normalization=norm),
    "single_3fc": lambda norm: single_3fc(32, x_size=32, input_normalization=norm),
}


@pytest.mark.parametrize("head", sorted(_TINY_HEADS))
def test_input_normalization_trains_on_tiny_features(head):
    """Features of scale 1e-5 (like a random backbone's): the plain head predicts a constant
    (Single-1FC cannot grow its weights 1e5-fold; Single-3FC's BN moving variance is still near
    1 at inference), the standardised head learns the planted linear MOS."""
    from ku.metrics import srcc

    x, y = _planted_linear()
    tiny = x * 1e-5 + 3e-5
    y_test = y[256:]
    _, plain = _fit_head(lambda: _TINY_HEADS[head](False), tiny, y)
    model, normed = _fit_head(lambda: _TINY_HEADS[head](True), tiny, y, adapt=True)
    assert plain.std() < 1e-3 * y_test.std()
    assert normed.std() > 0.3 * y_test.std()
    assert srcc(y_test, normed) >= 0.8
    layer = model.get_layer("input_norm")
    np.testing.assert_allclose(layer.mean.numpy(), tiny[:256].mean(0), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(1 / layer.inv_std.numpy(), tiny[:256].std(0), rtol=1e-4)


@pytest.mark.parametrize("head", sorted(_TINY_HEADS))
def test_input_normalization_leaves_standardised_runs_unchanged(head):
    """On features already standardised with the training statistics the adapted layer is the
    identity (to float rounding), so a seeded run gives the plain head's predictions."""
    x, y = _planted_linear()
    x64 = x.astype(np.float64)
    x = ((x64 - x64[:256].mean(0)) / x64[:256].std(0)).astype("float32")
    _, plain = _fit_head(lambda: _TINY_HEADS[head](False), x, y, epochs=5)
    model, normed = _fit_head(lambda: _TINY_HEADS[head](True), x, y, epochs=5, adapt=True)
    layer = model.get_layer("input_norm")
    np.testing.assert_allclose(layer.mean.numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(layer.inv_std.numpy(), 1.0, atol=1e-6)
    assert plain.std() > 0.1  # the comparison below is between predictions that vary
    np.testing.assert_allclose(normed, plain, rtol=0, atol=1e-4 * plain.std() + 1e-5)


def test_input_normalization_is_identity_until_adapted():
    for head in sorted(_small_heads()):
        build, shape = _small_heads()[head]
        keras.utils.set_random_seed(4)
        plain = build("mos")
        keras.utils.set_random_seed(4)
        kwargs = {"single_1fc": (24,), "single_3fc": (24,), "multi_3fc": ([8, 16, 12],),
                  "pool_3fc": ((5, 5, 12),)}[head]
        extra = {"single_3fc": {"x_size": 32}, "pool_3fc": {"n_kernels": 8, "x_size": 16}}.get(head, {})
        normed = getattr(heads, head)(*kwargs, input_normalization=True, **extra)
        assert normed.get_layer("input_norm").weights[0].shape == (shape[-1],)
        assert normed.count_params() == plain.count_params() + 2 * shape[-1]
        x = _x(shape, n=6)
        np.testing.assert_allclose(normed(x, training=False), plain(x, training=False), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("head", sorted(_small_heads()))
def test_input_normalization_save_reload(head, tmp_path):
    """An adapted head saves and reloads (.keras and .weights.h5) with its statistics."""
    args = {"single_1fc": ((24,), {}), "single_3fc": ((24,), {"x_size": 32}),
            "multi_3fc": (([8, 16, 12],), {}), "pool_3fc": (((5, 5, 12),), {"n_kernels": 8, "x_size": 16})}
    pos, kw = args[head]
    shape = _small_heads()[head][1]
    model = getattr(heads, head)(*pos, input_normalization=True, **kw)
    feats = _x(shape, n=40, seed=1) * np.linspace(0.1, 4.0, shape[-1]) + 2.0
    heads.adapt_head_input(model, feats)
    x = _x(shape, n=5, seed=2) * 3.0 + 2.0
    before = np.asarray(model(x, training=False))
    model.save(tmp_path / "h.keras")
    reloaded = keras.saving.load_model(tmp_path / "h.keras")
    np.testing.assert_allclose(reloaded(x, training=False), before, rtol=1e-6, atol=1e-6)
    assert isinstance(reloaded.get_layer("input_norm"), FeatureStandardization)
    model.save_weights(tmp_path / "h.weights.h5")
    fresh = getattr(heads, head)(*pos, input_normalization=True, **kw)
    assert not np.allclose(fresh(x, training=False), before)
    fresh.load_weights(tmp_path / "h.weights.h5")
    np.testing.assert_allclose(fresh(x, training=False), before, rtol=1e-6, atol=1e-6)


def test_feature_statistics_from_a_store(tmp_path):
    """Store statistics cover all augmentations (and positions) of the selected rows only and
    equal numpy's; a row subset is seeded; arrays and stores agree."""
    from ku.data.store import FeatureStore

    rng = np.random.default_rng(0)
    feats = (rng.normal(size=(30, 8, 2, 2, 6)) * np.arange(1, 7) + np.arange(6) * 10).astype("float32")
    ids = [f"im{i}" for i in range(30)]
    path = tmp_path / "f.h5"
    with FeatureStore.create(path, ids, 8, (2, 2, 6), dtype="float32") as store:
        store.write_rows(0, feats)
    train_ids = ids[5:25]
    ref = feats[5:25].reshape(-1, 6).astype(np.float64)
    mean, std = heads.feature_statistics(path, train_ids, chunk_bytes=1000)  # many chunks
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, ref.std(0), rtol=1e-10)
    all_mean, _ = heads.feature_statistics(path)
    np.testing.assert_allclose(all_mean, feats.reshape(-1, 6).mean(0, dtype=np.float64), rtol=1e-10)
    amean, astd = heads.feature_statistics(feats[5:25], chunk_bytes=500)
    np.testing.assert_allclose(amean, mean, rtol=1e-10)
    np.testing.assert_allclose(astd, std, rtol=1e-10)
    sub1 = heads.feature_statistics(path, ids, max_rows=10, seed=1)
    sub2 = heads.feature_statistics(path, ids, max_rows=10, seed=1)
    np.testing.assert_array_equal(sub1[0], sub2[0])
    assert not np.allclose(sub1[0], all_mean, rtol=1e-6)

    model = pool_3fc((2, 2, 6), n_kernels=4, x_size=8, input_normalization=True)
    heads.adapt_head_input(model, path, train_ids)
    np.testing.assert_allclose(model.get_layer("input_norm").mean.numpy(), mean, rtol=1e-6)
    with pytest.raises(KeyError, match="nope"):
        heads.feature_statistics(path, ["nope"])


def test_feature_standardization_constant_channels_and_errors():
    x = np.random.default_rng(0).normal(size=(50, 4)).astype("float32")
    x[:, 1] = 7.0  # constant channel (e.g. a dead unit)
    x[:, 2] = 0.0
    x[:, 3] *= 1e-4  # nearly constant: scaled at most 100x as much as a typical channel
    model = single_1fc(4, input_normalization=True)
    heads.adapt_head_input(model, x)
    inv = model.get_layer("input_norm").inv_std.numpy()
    rms = np.sqrt(np.mean(np.square(x.std(0, dtype=np.float64))))
    assert inv[1] == 0 and inv[2] == 0
    np.testing.assert_allclose(inv[0], 1 / x[:, 0].std(dtype=np.float64), rtol=1e-5)
    np.testing.assert_allclose(inv[3], 1 / (1e-2 * rms), rtol=1e-5)
    heads.adapt_head_input(model, x, min_std=0)
    np.testing.assert_allclose(model.get_layer("input_norm").inv_std.numpy()[3],
                               1 / x[:, 3].std(dtype=np.float64), rtol=1e-4)
    z = np.asarray(model.get_layer("input_norm")(np.full((1, 4), 1e6, "float32")))
    assert np.all(np.isfinite(z)) and z[0, 1] == 0 and z[0, 2] == 0

    with pytest.raises(ValueError, match="input_normalization=True"):
        heads.adapt_head_input(single_1fc(4), x)
    with pytest.raises(ValueError, match="5 channels.*has 4"):
        heads.adapt_head_input(model, np.ones((3, 5), "float32"))
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="array: 1 non-finite"):
        heads.adapt_head_input(model, bad)
    with pytest.raises(ValueError, match="shape"):
        heads.feature_statistics(np.ones(5))
    layer = model.get_layer("input_norm")
    with pytest.raises(ValueError, match="shape"):
        layer.set_statistics(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        layer.set_statistics(np.zeros(4), -np.ones(4))
    with pytest.raises(ValueError, match="min_std"):
        layer.set_statistics(np.zeros(4), np.ones(4), min_std=2)
    with pytest.raises(ValueError, match="scale"):
        layer.set_statistics(np.zeros(4), np.ones(4), scale=0)
    clone = FeatureStandardization.from_config(layer.get_config())
    assert clone.name == "input_norm"


def test_feature_standardization_scale_sets_the_output_deviation():
    """``scale=1/sqrt(C)``: every channel's training deviation is 1/sqrt(C), so the standardised
    vector has a mean squared norm of 1 (what APM's FC layers expect from an L2-normalised vector)."""
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(400, 64)) * rng.uniform(0.01, 3, 64) + rng.normal(size=64)).astype("float32")
    model = single_1fc(64, input_normalization=True)
    heads.adapt_head_input(model, x, scale=1 / np.sqrt(64))
    z = np.asarray(model.get_layer("input_norm")(x), np.float64)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1 / 8, rtol=1e-4)
    np.testing.assert_allclose(np.mean(np.sum(z ** 2, axis=1)), 1.0, rtol=1e-4)


def test_load_released_weights_into_a_standardised_head(tmp_path):
    """The released files have no input standardisation: it is skipped and reset to identity."""
    src, _, x = _released_pair("single_3fc")
    path = tmp_path / "w.h5"
    _write_keras2_weights(src, path)
    dst = single_3fc(64, input_normalization=True)
    heads.adapt_head_input(dst, np.random.default_rng(0).normal(3.0, 2.0, size=(20, 64)))
    assert load_released_weights(dst, path) == "name"
    np.testing.assert_array_equal(dst.get_layer("input_norm").inv_std.numpy(), 1.0)
    np.testing.assert_allclose(dst(x, training=False), src(x, training=False), rtol=1e-6, atol=1e-6)

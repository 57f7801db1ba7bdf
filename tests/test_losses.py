"""ku.losses: values against the numpy metrics / the papers' equations, gradients, serialization."""
import math

import keras
import numpy as np
import pytest
from scipy.special import log_softmax

from grads import gradient
from ku import losses as L
from ku import metrics as M

K = 10


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    t = rng.dirichlet(np.full(K, 0.8), size=16).astype("float32")
    p = rng.dirichlet(np.full(K, 2.0), size=16).astype("float32")
    t[0] = np.eye(K, dtype="float32")[4]  # a one-hot target with empty bins
    return t, p


def _huber_numpy(t, p, sigma):
    """Murray eq. 1 written independently: 0.5 x^2 if |x| <= d, d(|x| - d/2) else; summed."""
    d = 1.0 / sigma ** 2
    x = np.abs(p.astype(np.float64) - t)
    return np.where(x <= d, 0.5 * x ** 2, d * (x - 0.5 * d)).sum(axis=1)


# every loss with the numpy reference of its per-sample values
CASES = [
    (L.EMDLoss(r=2), lambda t, p: M.emd(t, p, r=2, reduction="none")),
    (L.EMDLoss(r=1), lambda t, p: M.emd(t, p, r=1, reduction="none")),
    (L.CDLoss(), lambda t, p: M.cd_loss(t, p, reduction="none")),
    (L.KLDivergenceLoss(eps=1e-7), lambda t, p: M.kl_divergence(t, p, eps=1e-7, reduction="none")),
    (L.EuclideanLoss(squared=False), lambda t, p: M.euclidean_distance(t, p, reduction="none")),
    (L.EuclideanLoss(), lambda t, p: 0.5 * M.euclidean_distance(t, p, reduction="none") ** 2),
    (L.HuberBinLoss(sigma=3.0), lambda t, p: _huber_numpy(t, p, 3.0)),
    (L.HuberBinLoss(sigma=1.5), lambda t, p: _huber_numpy(t, p, 1.5)),
    (L.SoftCrossEntropy(), lambda t, p: -(t * np.log(p.astype(np.float64) + 1e-7)).sum(axis=1)),
    (L.SoftCrossEntropy(from_logits=True), lambda t, z: -(t * log_softmax(z, axis=1)).sum(axis=1)),
]
IDS = [f"{type(c[0]).__name__}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize("loss,ref", CASES, ids=IDS)
def test_loss_matches_numpy_reference(loss, ref, pair):
    t, p = pair
    expected = ref(t, p)
    per_sample = type(loss).from_config({**loss.get_config(), "reduction": None})(t, p)
    np.testing.assert_allclose(np.asarray(per_sample), expected, rtol=2e-5, atol=2e-6)
    assert float(loss(t, p)) == pytest.approx(expected.mean(), rel=2e-5, abs=2e-6)


def test_function_forms_equal_classes(pair):
    t, p = pair
    np.testing.assert_allclose(L.emd_loss(t, p, r=1), M.emd(t, p, r=1, reduction="none"),
                               rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(L.cd_loss(t, p), L.CDLoss(reduction=None)(t, p), rtol=1e-6)
    np.testing.assert_allclose(L.huber_bin_loss(t, p), _huber_numpy(t, p, 3.0), rtol=2e-5)
    # CDLoss = K * EMD(r=2)^2 (Murray eq. 3 vs Jia eq. 7)
    np.testing.assert_allclose(L.cd_loss(t, p), K * np.square(L.emd_loss(t, p)), rtol=1e-5)


def test_losses_by_hand_three_bins():
    t = np.array([[0.2, 0.5, 0.3]], "float32")
    q = np.array([[0.5, 0.3, 0.2]], "float32")
    # |q - t| = [0.3, 0.2, 0.1], delta = 1/9: two linear bins, one quadratic bin
    d = 1 / 9
    huber = d * (0.3 - d / 2) + d * (0.2 - d / 2) + 0.5 * 0.1 ** 2
    assert float(L.HuberBinLoss()(t, q)) == pytest.approx(huber, rel=1e-5)
    # CDF differences [-0.3, -0.1, 0]
    assert float(L.EMDLoss()(t, q)) == pytest.approx(math.sqrt(0.1 / 3), rel=1e-5)
    assert float(L.EMDLoss(r=1)(t, q)) == pytest.approx(0.4 / 3, rel=1e-5)
    assert float(L.CDLoss()(t, q)) == pytest.approx(0.1, rel=1e-5)
    assert float(L.EuclideanLoss()(t, q)) == pytest.approx(0.5 * 0.14, rel=1e-5)


def test_huber_against_keras_huber_and_limits(pair):
    t, p = pair
    # keras.losses.Huber averages over bins; ours sums (Murray: "the sum of the losses")
    kh = keras.losses.Huber(delta=1 / 9, reduction=None)(t, p)
    np.testing.assert_allclose(L.huber_bin_loss(t, p), K * np.asarray(kh), rtol=2e-5)
    # delta -> infinity: the Huber loss becomes the (0.5 ||x||^2) Euclidean loss
    np.testing.assert_allclose(L.huber_bin_loss(t, p, sigma=1e-3), L.euclidean_loss(t, p),
                               rtol=1e-6)
    assert L.HuberBinLoss(sigma=3).delta == pytest.approx(1 / 9)


def test_soft_cross_entropy_identities(pair):
    t, p = pair
    # xent = KL + entropy(t) (same eps)
    ent = -(t * np.log(t.astype(np.float64) + 1e-7)).sum(axis=1)
    np.testing.assert_allclose(L.soft_cross_entropy(t, p),
                               np.asarray(L.kl_divergence_loss(t, p)) + ent, rtol=1e-4, atol=1e-5)
    # from logits == from softmax probabilities
    z = np.log(p) + 3.0
    np.testing.assert_allclose(L.soft_cross_entropy(t, z, from_logits=True),
                               L.soft_cross_entropy(t, p), rtol=1e-4, atol=1e-5)
    # soft targets agree with Keras' categorical cross-entropy on normalised inputs
    kc = keras.losses.CategoricalCrossentropy(reduction=None)(t, p)
    np.testing.assert_allclose(L.soft_cross_entropy(t, p), kc, rtol=1e-4, atol=1e-5)


def test_identical_inputs_give_zero(pair):
    t, _ = pair
    for loss in (L.EMDLoss(), L.EMDLoss(r=1), L.CDLoss(), L.KLDivergenceLoss(),
                 L.EuclideanLoss(), L.EuclideanLoss(squared=False), L.HuberBinLoss()):
        assert float(loss(t, t)) == pytest.approx(0.0, abs=1e-6), loss.name


ALL_LOSSES = [L.EMDLoss(), L.EMDLoss(r=1), L.EMDLoss(r=3), L.HuberBinLoss(), L.CDLoss(),
              L.KLDivergenceLoss(), L.SoftCrossEntropy(), L.SoftCrossEntropy(from_logits=True),
              L.EuclideanLoss(), L.EuclideanLoss(squared=False)]
ALL_IDS = [f"{type(x).__name__}-{i}" for i, x in enumerate(ALL_LOSSES)]


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=ALL_IDS)
def test_gradients_finite(loss):
    onehot = np.eye(K, dtype="float32")[[0, 4, 9]]
    soft = np.random.default_rng(1).dirichlet(np.ones(K), 3).astype("float32")
    for y_true, start in ((onehot, np.zeros_like(onehot)),  # all-zero predictions
                          (onehot, onehot),  # prediction == target (roots at 0)
                          (soft, soft)):
        value = loss(y_true, start)
        grad = gradient(lambda y_pred: loss(y_true, y_pred), start)
        assert np.isfinite(float(value)), loss.name
        assert grad is not None and np.all(np.isfinite(grad)), loss.name
    # the gradient at all-zero predictions is not zero everywhere (training can start)
    assert np.abs(gradient(lambda y_pred: loss(onehot, y_pred), np.zeros_like(onehot))).max() > 0


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=ALL_IDS)
def test_get_config_round_trip(loss):
    cfg = loss.get_config()
    again = type(loss).from_config(cfg)
    assert again.get_config() == cfg
    ser = keras.losses.serialize(loss)
    back = keras.losses.deserialize(ser)
    assert type(back) is type(loss) and back.get_config() == cfg


def test_save_and_reload_compiled_models(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = rng.dirichlet(np.ones(K), size=8).astype("float32")
    for i, loss in enumerate(ALL_LOSSES):
        inp = keras.Input((6,))
        act = None if getattr(loss, "from_logits", False) else "softmax"
        model = keras.Model(inp, keras.layers.Dense(K, activation=act)(inp))
        model.compile(optimizer="sgd", loss=loss)
        path = tmp_path / f"m{i}.keras"
        model.save(path)
        reloaded = keras.models.load_model(path)
        assert type(reloaded.loss) is type(loss)
        assert reloaded.loss.get_config() == loss.get_config()
        expected = float(loss(y, model(x)))
        assert float(reloaded.loss(y, reloaded(x))) == pytest.approx(expected, rel=1e-6)


def test_get_loss():
    assert isinstance(L.get_loss("mse"), keras.losses.MeanSquaredError)
    assert L.get_loss("emd").r == 2 and L.get_loss("EMD1").r == 1
    assert L.get_loss("huber").sigma == 3.0
    assert L.get_loss("huber", sigma=2).sigma == 2.0
    assert isinstance(L.get_loss("cdloss"), L.CDLoss)
    assert isinstance(L.get_loss("kl"), L.KLDivergenceLoss)
    assert isinstance(L.get_loss("xent"), L.SoftCrossEntropy)
    assert L.get_loss("eucl").squared is True
    loss = L.EMDLoss()
    assert L.get_loss(loss) is loss
    for name in L.LOSS_NAMES:
        assert isinstance(L.get_loss(name), keras.losses.Loss)
    with pytest.raises(ValueError, match="unknown loss name 'nope'"):
        L.get_loss("nope")


def test_bad_inputs():
    with pytest.raises(ValueError, match="y_true has 10 bins but y_pred has 7"):
        L.EMDLoss()(np.ones((2, 10)) / 10, np.ones((2, 7)) / 7)
    with pytest.raises(ValueError, match="r must be >= 1"):
        L.EMDLoss(r=0.5)
    with pytest.raises(ValueError, match="sigma"):
        L.HuberBinLoss(sigma=0)

"""APM on the demo set with tiny settings: APM-m training with per-layer rates and late fusion
(§4.1), and the pipeline's batched predictions equal single-image predictions (masking, end to
end), on a random VGG16 (what is tested does not depend on the backbone; the masked ResNets are
tested in test_apm.py). Semantic pre-training: tests/test_apm_semantic.py."""
import numpy as np
import pytest

from ku.data.aspect_batches import aspect_batches, load_image
from ku.models import apm
from ku.training import fit_apm

SIDE = 48


@pytest.fixture(scope="module")
def demo():
    from ku.data.demo import load_demo

    ids = load_demo(split="murray")
    return {s: ids[ids.set == s].reset_index(drop=True) for s in ("training", "validation", "test")}


def test_apm_m_training_fusion_and_batched_prediction(demo):
    train, val = demo["training"].head(8), demo["validation"].head(6)
    model = apm.apm_model("vgg16", None, fc_units=16, global_max_branch=True)
    apm.init_output_bias(model, 0.1)
    spp_fc_before = model.get_layer("apm_fc1").get_weights()[0].copy()
    branch_before = model.get_layer("max_branch_fc1").get_weights()[0].copy()
    opt = apm.apm_optimizer("sgd", 1e-4, lr_multipliers={apm.new_layer_pattern(): 10.0}, decay_steps=None)
    hist = fit_apm(model, train, val, shorter_side=SIDE, batch_size=4, epochs=1, optimizer=opt, verbose=0)
    assert {"loss", "val_loss"} <= set(hist.history)
    d_spp = np.abs(model.get_layer("apm_fc1").get_weights()[0] - spp_fc_before).max()
    d_branch = np.abs(model.get_layer("max_branch_fc1").get_weights()[0] - branch_before).max()
    assert d_branch > 0 and d_spp > 0

    data = aspect_batches(val, 3, shorter_side=SIDE)
    out, rows = apm.predict_batches(model, data)
    assert rows.tolist() == list(range(len(val)))
    # batched + padded by the pipeline == each image alone (masking, end to end)
    alone = apm.predict_images(model, [load_image(p, SIDE) for p in val.image_path])
    for k in ("distribution", "max_distribution"):
        np.testing.assert_allclose(out[k], alone[k], rtol=1e-4, atol=1e-5 * max(1e-3, np.abs(alone[k]).max()))
    y = apm.apm_targets(val)
    w, table = apm.fit_fusion_weight(out["distribution"], out["max_distribution"], y)
    assert 0 <= w <= 1 and np.isclose(table.loss.min(), table.loss[table.weight == w].iloc[0])
    fused = apm.fuse_distributions(out["distribution"], out["max_distribution"], w)
    from ku.metrics import evaluate

    row = evaluate(None, None, dist_true=y, dist_pred=fused)
    assert np.isfinite(row[["KL", "CDLoss", "MSE"]].to_numpy(dtype=float)).all()

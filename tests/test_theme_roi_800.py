"""Jia et al. 2019 at the paper's size (§III-D, §IV-B): 800 x 800 canvas, 146 x 146 ROI output,
weights copied from a plain keras.applications InceptionV3, SavedModel export with a dynamic batch.
(Separate module: one 800 x 800 forward pass per image costs seconds on a CPU.)"""
import os
import textwrap

import h5py
import keras
import numpy as np

from ku.models.theme_roi import theme_roi_model

import procs


def randomize(model, seed=0):
    """Random weights (batch-norm statistics included)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([(rng.uniform(0.5, 2.0, w.shape) if i == len(ws) - 1 and
                                isinstance(layer, keras.layers.BatchNormalization)
                                else rng.normal(0, 0.05, w.shape)).astype(np.float32)
                               for i, w in enumerate(ws)])


# ---------------------------------------------------------------------------------------------
# the paper's size: 800 canvas, 146 ROI, weights copied from a plain InceptionV3, export
# ---------------------------------------------------------------------------------------------
def test_800_146_weights_and_export(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    plain = keras.applications.InceptionV3(include_top=False, weights=None)
    randomize(plain, seed=7)
    path = tmp_path / "iv3_notop.h5"  # keras.applications layout, as the ImageNet file
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, plain)
    model = theme_roi_model(weights=path, canvas=800, roi_size=146)
    assert model.get_layer("image").output.shape == (None, 800, 800, 3)
    assert model.get_layer("roi_pooling").output.shape == (None, 146, 146, 64)
    # every layer of the plain network except the replaced max pooling, same weights, same order
    ours = [w for w in model.weights if not w.path.startswith(("theme_fc/", "distribution/"))]
    assert len(ours) == len(plain.weights) == 376
    for a, b in zip(ours, plain.weights):
        assert a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    export = tmp_path / "sm"
    model.export(str(export), format="tf_saved_model", verbose=False)
    # load and run in a process that never imports ku, with a batch of 2 (signature batch: None)
    code = textwrap.dedent(f"""
        import sys
        import numpy as np, tensorflow as tf
        m = tf.saved_model.load({str(export)!r})
        spec = m.serve.concrete_functions[0].structured_input_signature[0][0]
        assert [t.shape[0] for t in spec] == [None, None, None], spec
        x = np.zeros((2, 800, 800, 3), np.float32)
        x[:, :150, :120] = np.random.default_rng(0).uniform(0, 255, (2, 150, 120, 3))
        p = m.serve([x, np.tile([[150, 120]], (2, 1)).astype(np.int32), np.arange(2, dtype=np.int32)]).numpy()
        assert p.shape == (2, 10), p.shape
        np.save({str(tmp_path)!r} + "/p.npy", p)
        assert "ku" not in sys.modules
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = procs.run(procs.python("-c", code), env=env, cwd=None, log_dir=tmp_path, name="export_800")
    assert run.returncode == 0, run.stderr[-3000:]
    x = np.zeros((1, 800, 800, 3), np.float32)
    x[:, :150, :120] = np.random.default_rng(0).uniform(0, 255, (2, 150, 120, 3))[:1]
    p = np.asarray(model({"image": x, "valid_size": np.array([[150, 120]], np.int32),
                          "theme": np.zeros(1, np.int32)}))
    np.testing.assert_allclose(p[0], np.load(tmp_path / "p.npy")[0], rtol=1e-5, atol=1e-6)

"""Gradients in the tests on any Keras backend (TensorFlow, JAX, PyTorch)."""
import keras
import numpy as np


def gradient(f, x):
    """``d f(x) / d x`` of a scalar function ``f`` of one array, as numpy (float32 ``x``)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            s = f(xt)
        return tape.gradient(s, xt).numpy()
    if backend == "jax":
        import jax

        # one compilation of the whole function (op by op, every primitive compiles for its shape)
        return np.asarray(jax.jit(jax.grad(f))(np.asarray(x)))
    if backend == "torch":
        import torch

        xt = torch.tensor(np.asarray(x), requires_grad=True)
        f(xt).backward()
        return xt.grad.cpu().numpy()
    raise NotImplementedError(f"gradient: backend {backend!r}")

"""Modify an image so that a fixed aesthetic model predicts a slightly better or worse
distribution, and show where the pixels changed (Murray & Gordo 2017 §4.3, Fig. 5).

"we assign new distributions to our testing images, which are slightly better or slightly worse
than the original predictions of the model. We then modify the images by gradient descent such
that the predicted distributions of the modified images better matches those new distributions.
The model is kept constant." The heat map shows "the regions that were modified the most".

ku's choices where the paper gives no detail (all arguments):

* **Target** (:func:`shifted_target`): ``"better"`` moves every vote one bin up (the mass of bin
  ``i`` goes to ``i + 1``, the top bin keeps its own), ``"worse"`` one bin down; with
  ``shift=a`` only the fraction ``a`` of the mass moves (``(1 - a) p + a * shifted(p)``). The
  predicted mean moves by about ``+-a`` point. Or give a distribution directly.
* **Objective**: the training loss of APM, Huber per bin (eq. 1, sigma = 3), between the model's
  L1-normalised prediction and the target (``loss="l2"``: squared error).
* **Steps**: ``n_steps`` steps of gradient descent on the pixels, each step's gradient scaled so
  that its largest pixel change is ``step_size`` (0..255 units; ``method="sign"``: the sign of the
  gradient times ``step_size``, as iterative FGSM). After each step the total change per pixel
  is clipped to ``max_change`` and the image to 0..255.
* **Heat map**: per-pixel absolute change summed over the 3 channels, Gaussian-smoothed with
  ``smooth_sigma`` (default 1% of the longer side) -- in 0..255 units, not normalised.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ModificationResult", "shifted_target", "modify_image", "plot_modification"]


def shifted_target(p, direction: str = "better", shift: float = 1.0) -> np.ndarray:
    """A distribution a bit better / worse than ``p`` (``(K,)``): votes moved one bin up / down.

    ``better``: ``t_1 = (1-a) p_1``, ``t_i = (1-a) p_i + a p_{i-1}`` (``1 < i < K``), ``t_K = p_K +
    a p_{K-1}``; ``worse`` is the mirror image. ``a = shift`` in [0, 1]. ``p`` is L1-normalised first.
    """
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum() if p.sum() > 0 else np.full_like(p, 1.0 / p.size)
    a = float(shift)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"shifted_target: shift must be in [0, 1], got {shift!r}")
    moved = np.zeros_like(p)
    if direction == "better":
        moved[1:] += p[:-1]
        moved[-1] += p[-1]
    elif direction == "worse":
        moved[:-1] += p[1:]
        moved[0] += p[0]
    else:
        raise ValueError(f"shifted_target: direction must be 'better' or 'worse', got {direction!r}")
    return (1.0 - a) * p + a * moved


@dataclasses.dataclass
class ModificationResult:
    """What :func:`modify_image` returns.

    Attributes:
        original: the input image, float32 ``(H, W, 3)`` 0..255.
        image: the modified image, float32 ``(H, W, 3)`` 0..255.
        heat_map: ``(H, W)`` smoothed per-pixel absolute change (sum over channels).
        dist_before, dist_after: L1-normalised predictions ``(K,)`` before / after.
        target: the target distribution ``(K,)``.
        distances: objective value before the first step and after every step ``(n_steps + 1,)``.
        mean_before, mean_after, mean_target: eq. 2 means.
    """

    original: np.ndarray
    image: np.ndarray
    heat_map: np.ndarray
    dist_before: np.ndarray
    dist_after: np.ndarray
    target: np.ndarray
    distances: np.ndarray
    mean_before: float
    mean_after: float
    mean_target: float


def _pick(out, output):
    if isinstance(out, dict):
        if output not in out:
            raise ValueError(f"modify_image: the model has outputs {sorted(out)}, not {output!r}")
        return out[output]
    if isinstance(out, (list, tuple)):
        return out[0]
    return out


def modify_image(model, image, target="better", *, shift: float = 1.0, step_size: float = 1.0,
                 n_steps: int = 20, max_change: float = 8.0, method: str = "normalized",
                 loss: str = "huber", output: str = "distribution",
                 smooth_sigma: Optional[float] = None) -> ModificationResult:
    """Gradient descent on an image's pixels towards a target distribution (§4.3).

    Args:
        model: an APM-type model ``[image (1,H,W,3), valid_size (1,2)] -> (1, K)`` (or a dict of
            outputs; ``output`` picks one). Kept fixed (inference mode).
        image: ``(H, W, 3)`` RGB in 0..255 (any numeric dtype).
        target: ``"better"`` / ``"worse"`` (:func:`shifted_target` of the prediction, ``shift``)
            or a ``(K,)`` distribution.
        step_size: largest per-pixel change of one step (0..255 units).
        n_steps: number of steps.
        max_change: bound on the total change of any pixel value (L-infinity ball).
        method: ``"normalized"`` (gradient / max |gradient| * step_size) or ``"sign"``.
        loss: ``"huber"`` (eq. 1, sigma 3) or ``"l2"``.
        smooth_sigma: Gaussian sigma of the heat map in pixels (default 1% of the longer side).

    Returns:
        :class:`ModificationResult`.
    """
    import cv2
    from keras import ops

    from ku.layers.l1_normalization import l1_normalize
    from ku.losses import huber_bin_loss

    x0 = np.asarray(image, dtype=np.float32)
    if x0.ndim != 3 or x0.shape[-1] != 3:
        raise ValueError(f"modify_image: image must be (H, W, 3), got shape {x0.shape}")
    if method not in ("normalized", "sign"):
        raise ValueError(f"modify_image: method must be 'normalized' or 'sign', got {method!r}")
    if loss not in ("huber", "l2"):
        raise ValueError(f"modify_image: loss must be 'huber' or 'l2', got {loss!r}")
    if n_steps < 0 or step_size <= 0 or max_change <= 0:
        raise ValueError("modify_image: n_steps >= 0, step_size > 0 and max_change > 0 are required")
    sizes = ops.convert_to_tensor(np.array([x0.shape[:2]], np.int32))

    def predict(x):
        return l1_normalize(ops.cast(_pick(model([x, sizes], training=False), output), "float32"))

    p_before = ops.convert_to_numpy(predict(ops.convert_to_tensor(x0[None])))[0].astype(np.float64)
    if isinstance(target, str):
        t = shifted_target(p_before, target, shift)
    else:
        t = np.asarray(target, dtype=np.float64)
        if t.shape != p_before.shape:
            raise ValueError(f"modify_image: target has shape {t.shape}, the model predicts {p_before.shape}")
        t = t / t.sum()
    t_target = ops.convert_to_tensor(t[None].astype(np.float32))

    def objective(x):
        p = predict(x)
        if loss == "huber":  # eq. 1 with sigma = 3 (delta = 1/9), the training loss
            return ops.sum(huber_bin_loss(t_target, p, sigma=3.0))
        return ops.sum(ops.square(p - t_target))

    step = _value_and_gradient(objective)
    x = ops.convert_to_tensor(x0[None])
    lo, hi = np.maximum(x0 - max_change, 0.0)[None], np.minimum(x0 + max_change, 255.0)[None]
    distances = []
    for _ in range(int(n_steps)):
        value, g = step(x)
        distances.append(float(ops.convert_to_numpy(value)))
        g = ops.convert_to_numpy(g)
        if method == "sign":
            update = np.sign(g) * step_size
        else:
            m = np.abs(g).max()
            update = g / m * step_size if m > 0 else np.zeros_like(g)
        x = ops.convert_to_tensor(np.clip(ops.convert_to_numpy(x) - update, lo, hi).astype(np.float32))
    distances.append(float(ops.convert_to_numpy(objective(x))))
    x1 = ops.convert_to_numpy(x)[0]
    p_after = ops.convert_to_numpy(predict(x))[0].astype(np.float64)

    change = np.abs(x1 - x0).sum(axis=-1).astype(np.float32)
    sigma = smooth_sigma if smooth_sigma is not None else 0.01 * max(x0.shape[:2])
    heat = cv2.GaussianBlur(change, (0, 0), sigmaX=float(sigma)) if sigma > 0 else change
    scores = np.arange(1, t.size + 1)
    return ModificationResult(
        original=x0, image=x1, heat_map=heat, dist_before=p_before, dist_after=p_after, target=t,
        distances=np.array(distances), mean_before=float(p_before @ scores),
        mean_after=float(p_after @ scores), mean_target=float(t @ scores))


def _value_and_gradient(objective):
    """``x -> (objective(x), d objective / d x)`` for a scalar ``objective`` of one tensor,
    compiled on the current Keras backend (a ``tf.GradientTape`` in a ``tf.function``,
    ``jax.jit(jax.value_and_grad(...))`` or torch autograd)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = objective(x)
            return value, tape.gradient(value, x)

        return step
    if backend == "jax":
        import jax

        return jax.jit(jax.value_and_grad(objective))
    if backend == "torch":
        def step(x):
            x = x.detach().requires_grad_(True)
            value = objective(x)
            value.backward()
            return value.detach(), x.grad

        return step
    raise NotImplementedError(f"modify_image: no gradient for the Keras backend {backend!r}")


def plot_modification(result: ModificationResult, path=None, *, title: Optional[str] = None):
    """Figure of §4.3 / Fig. 5: original, modified image, heat map (over the greyed original)
    and the distributions before / after / target with their means. Saves to ``path`` (any
    matplotlib format) when given; returns the figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    axes[0].imshow(np.clip(result.original, 0, 255).astype(np.uint8))
    axes[0].set_title(f"original (mean {result.mean_before:.2f})")
    axes[1].imshow(np.clip(result.image, 0, 255).astype(np.uint8))
    axes[1].set_title(f"modified (mean {result.mean_after:.2f})")
    grey = result.original.mean(axis=-1)
    axes[2].imshow(grey, cmap="gray", vmin=0, vmax=255)
    im = axes[2].imshow(result.heat_map, cmap="jet", alpha=0.55)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    axes[2].set_title("change (sum |dx| over RGB, smoothed)")
    for ax in axes[:3]:
        ax.axis("off")
    k = np.arange(1, result.target.size + 1)
    w = 0.28
    axes[3].bar(k - w, result.dist_before, w, label="before")
    axes[3].bar(k, result.dist_after, w, label="after")
    axes[3].bar(k + w, result.target, w, label=f"target (mean {result.mean_target:.2f})")
    axes[3].set_xticks(k)
    axes[3].set_xlabel("score")
    axes[3].legend(fontsize=8)
    axes[3].set_title("predicted distributions")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig

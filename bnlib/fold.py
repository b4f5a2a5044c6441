"""Folding an inference-mode batch norm into the layer before it.

In eval mode batch norm is an affine map per output channel, so it can be
merged into the preceding Linear or Conv layer (``bn-fold``):

.. math:: s = \\frac{\\gamma}{\\sqrt{\\hat\\sigma^2 + \\epsilon}}, \\qquad
          W' = W \\cdot s \\text{ (per output channel)}, \\qquad
          b' = (b - \\hat\\mu)\\, s + \\beta

Only valid in inference mode: in training mode the statistics depend on the batch.
"""

from __future__ import annotations

import numpy as np

from . import _checks


def fold_batchnorm(weight, bias, gamma, beta, running_mean, running_var, *, eps: float, out_axis: int = 0):
    """Return ``(weight', bias')`` of a layer that equals layer-then-BN in eval mode.

    Parameters
    ----------
    weight : ndarray
        PyTorch Linear ``(out, in)`` or Conv ``(out, in, kh, kw)`` with
        ``out_axis=0``; a Keras Dense kernel ``(in, out)`` or Conv2D kernel
        ``(kh, kw, in, out)`` with ``out_axis=-1``.
    bias : ndarray, (out,), or None
        None means a layer without bias (zeros).
    gamma, beta, running_mean, running_var : ndarray, (out,)
    eps : float
        The batch-norm layer's eps (1e-5 in PyTorch, 1e-3 in Keras).
    out_axis : int
        Axis of ``weight`` that indexes output channels.

    Returns
    -------
    weight2 : ndarray, shape of weight
    bias2 : ndarray, (out,)
    """
    w = _checks.as_float_array(weight, "weight")
    if w.ndim < 2 or not -w.ndim <= out_axis < w.ndim:
        raise ValueError(
            f"weight must have at least 2 dimensions and out_axis must index one of them; "
            f"got weight of shape {w.shape} and out_axis={out_axis}"
        )
    ax = out_axis % w.ndim
    C = w.shape[ax]
    per = dict(num_features=C, dtype=w.dtype, axis=ax, x_shape=w.shape)
    b = np.zeros(C, w.dtype) if bias is None else _checks.per_feature(bias, "bias", **per)
    gamma = _checks.per_feature(gamma, "gamma", **per)
    beta = _checks.per_feature(beta, "beta", **per)
    rm = _checks.per_feature(running_mean, "running_mean", **per)
    rv = _checks.per_feature(running_var, "running_var", **per)
    s = gamma / np.sqrt(rv + w.dtype.type(_checks.positive_eps(eps)))
    shape = [1] * w.ndim
    shape[ax] = C
    return w * s.reshape(shape), (b - rm) * s + beta

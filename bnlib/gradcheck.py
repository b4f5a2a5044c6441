"""Numerical gradient checking, as in the chapter "Deriving the backward pass".

A backward pass is trusted when it agrees with central differences:

.. math:: \\frac{\\partial L}{\\partial x_i} \\approx
          \\frac{L(x + h e_i) - L(x - h e_i)}{2h}  \\quad (\\text{grad-central})

with :math:`L(x) = \\sum f(x) \\odot g` for an upstream gradient ``g``, and
compared by the relative error

.. math:: \\text{rel}(a, b) = \\frac{\\lVert a - b \\rVert_2}{\\max(10^{-8}, \\lVert a \\rVert_2 + \\lVert b \\rVert_2)}
          \\quad (\\text{grad-relerr})

In float64 a correct gradient gives about 1e-8 or less; above 1e-4 it is almost
certainly wrong. (:func:`~bnlib.gradcheck_batchnorm` floors the denominator of ``dx``'s
error at ``||gamma / sqrt(var + eps) * dout||``, its natural scale, so that a
batch of two, where ``dx`` is exactly 0, is not reported as wrong.) The error is taken over the whole array, not element by
element (as CS231n's ``max |a-b| / (|a|+|b|)``): batch norm's ``dx`` has entries
that are truly near zero (for two values per channel, all of them), where an
element-wise ratio compares rounding noise with rounding noise.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from .functional import batchnorm_backward, batchnorm_forward


def numerical_gradient(f, x, dout, *, h: float = 1e-5) -> np.ndarray:
    """Central-difference gradient of ``sum(f(x) * dout)`` with respect to ``x``.

    Parameters
    ----------
    f : callable
        ``f(x) -> ndarray``; called ``2 * x.size`` times.
    x : ndarray, float64
        Perturbed **in place**, one entry at a time, and restored.
    dout : ndarray, shape of ``f(x)``
        Upstream gradient.
    h : float
        Step (``grad-central``).

    Returns
    -------
    grad : ndarray, shape of x
    """
    x = _checks.as_float_array(x, "x")
    dout = _checks.as_float_array(dout, "dout")
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = np.asarray(f(x), dtype=np.float64).copy()
        x[i] = old - h
        minus = np.asarray(f(x), dtype=np.float64).copy()
        x[i] = old
        if plus.shape != dout.shape:
            raise ValueError(f"f(x) must have the shape of dout, {dout.shape}; got {plus.shape}")
        grad[i] = np.sum((plus - minus) * dout) / (2 * h)
        it.iternext()
    return grad


def rel_error(a, b, *, floor: float = 1e-8) -> float:
    """Relative error between two arrays, ``||a-b|| / max(floor, ||a|| + ||b||)`` (``grad-relerr``).

    ``floor`` is the scale below which differences count as absolute: when both
    arrays are rounding noise around 0, pass the size the arrays would have if
    they were not (as :func:`gradcheck_batchnorm` does for ``dx``).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error needs arrays of the same shape; got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.linalg.norm(a - b) / max(floor, np.linalg.norm(a) + np.linalg.norm(b)))


def gradcheck_batchnorm(
    x, gamma, beta, dout=None, *, axis: int = 1, eps: float = 1e-5, backward=batchnorm_backward, h: float = 1e-5, seed=0
) -> dict:
    """Compare a batch-norm backward pass with central differences.

    Parameters
    ----------
    x : ndarray, float64
    gamma, beta : ndarray, (C,)
    dout : ndarray, shape of x, optional
        Upstream gradient; a seeded standard normal one by default.
    axis, eps : as :func:`bnlib.batchnorm_forward`
    backward : callable
        ``backward(dout, cache) -> (dx, dgamma, dbeta)``, the one under test
        (a learner's, or :func:`bnlib.batchnorm_backward_staged`).
    h : float
    seed : int
        Seed for the default ``dout``.

    Returns
    -------
    dict
        ``{"dx": err, "dgamma": err, "dbeta": err}`` relative errors.
    """
    x = np.array(_checks.as_float_array(x, "x"), dtype=np.float64)
    gamma = np.array(gamma, dtype=np.float64)
    beta = np.array(beta, dtype=np.float64)
    if dout is None:
        dout = np.random.default_rng(seed).standard_normal(x.shape)
    out, cache = batchnorm_forward(x, gamma, beta, axis=axis, eps=eps)
    dout = np.asarray(dout, dtype=np.float64)
    dx, dgamma, dbeta = backward(dout, cache)

    def run(xx, gg, bb):
        return batchnorm_forward(xx, gg, bb, axis=axis, eps=eps)[0]

    num = {
        "dx": numerical_gradient(lambda v: run(v, gamma, beta), x, dout, h=h),
        "dgamma": numerical_gradient(lambda v: run(x, v, beta), gamma, dout, h=h),
        "dbeta": numerical_gradient(lambda v: run(x, gamma, v), beta, dout, h=h),
    }
    got = {"dx": dx, "dgamma": dgamma, "dbeta": dbeta}
    # dx is gamma / sqrt(var + eps) * (dout - two correction terms); with two values per
    # channel the corrections cancel dout exactly and dx is rounding noise around 0, where
    # a relative error compares noise with noise. Its natural scale, ||gamma * inv_std * dout||,
    # is the floor of its denominator.
    gain = (cache.gamma * cache.inv_std).reshape([-1 if i == cache.axis else 1 for i in range(x.ndim)])
    floors = {"dx": max(1e-8, float(np.linalg.norm(gain * dout))), "dgamma": 1e-8, "dbeta": 1e-8}
    return {
        k: rel_error(np.asarray(got[k]), num[k], floor=floors[k]) if np.shape(got[k]) == num[k].shape else float("inf")
        for k in num
    }

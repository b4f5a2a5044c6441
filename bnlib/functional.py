"""Batch normalization as plain functions: the pair every chapter derives.

``batchnorm_forward(x, gamma, beta) -> (out, cache)`` and
``batchnorm_backward(dout, cache) -> (dx, dgamma, dbeta)`` follow CS231n's
layer convention: the cache is the whole contract between the two.

Shapes: ``x`` has the batch on axis 0 and the features (channels) on ``axis``;
statistics are taken over every other axis. ``C = x.shape[axis]`` and
``n = x.size // C`` is the number of values per channel (``N`` for ``(N, D)``,
``N*H*W`` for ``(N, C, H, W)``).

Equation labels (``bn-mean`` ...) refer to the chapters "The batch-norm forward
pass" and "Deriving the backward pass" of the course book.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _checks, _kernels
from .conventions import get_convention


class BatchNormCache(NamedTuple):
    """What the backward pass needs from a training-mode forward pass.

    Attributes
    ----------
    xhat : ndarray, shape of x
        Normalized input, :math:`\\hat x = (x - \\mu) / \\sqrt{\\sigma^2 + \\epsilon}`.
    gamma : ndarray, (C,)
    inv_std : ndarray, (C,)
        :math:`1 / \\sqrt{\\sigma^2 + \\epsilon}`.
    mean, var : ndarray, (C,)
        Batch mean and biased batch variance.
    axis : int
        Feature axis, non-negative.
    eps : float
    """

    xhat: np.ndarray
    gamma: np.ndarray
    inv_std: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    axis: int
    eps: float


# ---------------------------------------------------------------- layout ----
def _as3d(a: np.ndarray, axis: int) -> np.ndarray:
    """View ``a`` as ``(A, C, B)``: everything before the feature axis, the
    features, everything after. A view, not a copy, for contiguous input."""
    shape = a.shape
    return a.reshape(int(np.prod(shape[:axis])), shape[axis], -1)


def _channel_sum(a3: np.ndarray) -> np.ndarray:
    """Per-channel sum of an ``(A, C, B)`` array, shape ``(C,)``."""
    return a3.sum(axis=(0, 2))


def _channel_dot(a3: np.ndarray, b3: np.ndarray) -> np.ndarray:
    """Per-channel sum of ``a * b`` without an input-sized temporary, shape ``(C,)``."""
    return np.einsum("acb,acb->c", a3, b3)


def _col(v: np.ndarray) -> np.ndarray:
    """A ``(C,)`` vector as ``(C, 1)``, to broadcast over an ``(A, C, B)`` view."""
    return v[:, None]


def _prepare(x, gamma, beta, axis, eps):
    x = _checks.as_float_array(x, "x")
    ax = _checks.feature_axis(axis, x.ndim, x.shape)
    C = x.shape[ax]
    gamma = _checks.per_feature(gamma, "gamma", C, x.dtype, ax, x.shape)
    beta = _checks.per_feature(beta, "beta", C, x.dtype, ax, x.shape)
    return x, ax, gamma, beta, _checks.positive_eps(eps)


def _check_out(out, name, shape, dtype, *inputs):
    """Validate a caller-supplied output buffer as numpy ufuncs do: exact shape
    and dtype, C-contiguous, writeable, and sharing no memory with an input."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy ndarray or None; got an object of type {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(
            f"{name} must have shape {tuple(shape)} and dtype {np.dtype(dtype)}; "
            f"got shape {out.shape} and dtype {out.dtype}"
        )
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be a writeable C-contiguous array; got one that is not")
    for inp_name, inp in inputs:
        if inp is not None and np.shares_memory(out, inp):
            raise ValueError(
                f"{name} shares memory with {inp_name}; expected a separate buffer "
                "(in-place batch norm is not supported, the input is read after the output is written)"
            )
    return out


# ------------------------------------------------------------ statistics ----
def _statistics(x3: np.ndarray, x: np.ndarray, lay: _kernels.Layout | None = None, xc=None):
    """Mean and biased variance per channel, two-pass (``bn-mean``, ``bn-var``).

    Returns ``(mean, var, xc)`` where ``xc = x - mean`` is the centred input,
    a C-contiguous ``(A, C, B)`` array the caller may overwrite: ``xc`` itself
    when given, else a new one (the only input-sized array this function
    allocates). The second pass centres a block and adds up its squares while
    the block is in cache.
    """
    if lay is None:
        lay = _kernels.Layout(x3.shape, x3.dtype, x3)
    n = x3.shape[0] * x3.shape[2]
    mean = _kernels.channel_mean(lay, x3)
    if not np.isfinite(mean).all():
        _checks.check_finite(x, "x")
        _checks.raise_overflow(x, "x")
    xc = np.empty(x3.shape, dtype=x3.dtype) if xc is None else xc.reshape(x3.shape)
    var = _kernels.center_sumsq(lay, x3, mean, xc) / x.dtype.type(n)
    if not np.isfinite(var).all():
        _checks.raise_overflow(x, "x")
    return mean, var, xc


def batch_statistics(x, *, axis: int = 1):
    """Per-channel batch mean and biased variance.

    .. math:: \\mu_c = \\frac1n \\sum_i x_{ic}, \\qquad
              \\sigma^2_c = \\frac1n \\sum_i (x_{ic} - \\mu_c)^2
              \\quad (\\text{bn-mean}, \\text{bn-var})

    The variance is computed from centred values (two passes), never as
    ``E[x^2] - E[x]^2``, which cancels for inputs like mean 1e4, std 1e-2.

    Parameters
    ----------
    x : ndarray, (N, C, ...) or (N, ..., C)
    axis : int
        The feature axis.

    Returns
    -------
    mean, var : ndarray, (C,)
    n : int
        Number of values per channel, ``x.size // C``.
    """
    x = _checks.as_float_array(x, "x")
    ax = _checks.feature_axis(axis, x.ndim, x.shape)
    x3 = _as3d(x, ax)
    mean, var, _ = _statistics(x3, x)
    return mean, var, x3.shape[0] * x3.shape[2]


def _single_value_error(x: np.ndarray) -> ValueError:
    return ValueError(
        "Expected more than 1 value per channel when training, "
        f"got input of shape {tuple(x.shape)} (1 value per channel). "
        "Use a batch of at least 2, or inference mode (running statistics)."
    )


# --------------------------------------------------------------- forward ----
def _forward(x, gamma, beta, ax, eps, *, allow_single_value=False, out=None, xhat_out=None):
    x3 = _as3d(x, ax)
    out = _check_out(out, "out", x.shape, x.dtype, ("x", x), ("gamma", gamma), ("beta", beta))
    xhat_out = _check_out(xhat_out, "xhat_out", x.shape, x.dtype, ("x", x), ("out", out))
    if x3.shape[0] * x3.shape[2] == 1 and not allow_single_value:
        raise _single_value_error(x)
    lay = _kernels.Layout(x3.shape, x3.dtype, x3)
    mean, var, xhat3 = _statistics(x3, x, lay, xhat_out)
    inv_std = 1.0 / np.sqrt(var + x.dtype.type(eps))
    # the centred input becomes xhat in place; out = xhat * gamma + beta.
    # Two input-sized arrays in all: xhat (kept in the cache) and out.
    out3 = np.empty(x3.shape, dtype=x3.dtype) if out is None else out.reshape(x3.shape)
    _kernels.scale_affine(lay, xhat3, inv_std, gamma, beta, out3)
    cache = BatchNormCache(xhat3.reshape(x.shape), gamma, inv_std, mean, var, ax, eps)
    return (out3.reshape(x.shape) if out is None else out), cache


def batchnorm_forward(x, gamma, beta, *, axis: int = 1, eps: float = 1e-5, out=None, xhat_out=None):
    """Training-mode batch normalization, over every axis but ``axis``.

    .. math:: \\hat x = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
              y = \\gamma \\hat x + \\beta \\quad (\\text{bn-xhat}, \\text{bn-out})

    with :math:`\\mu, \\sigma^2` the batch mean and **biased** variance of each
    channel (:func:`batch_statistics`).

    Parameters
    ----------
    x : ndarray, float32 or float64
        ``(N, D)``, ``(N, C, L)``, ``(N, C, H, W)`` with ``axis=1``, or
        ``(N, H, W, C)`` with ``axis=-1``; any rank >= 2.
    gamma, beta : ndarray, (C,)
        Scale and shift, ``C = x.shape[axis]``.
    axis : int
        The feature (channel) axis; not 0, the batch axis.
    eps : float
        Added to the variance inside the square root; > 0.
    out : ndarray, optional
        Where to write the output, as numpy ufuncs' ``out=``: shape and dtype
        of ``x``, C-contiguous, sharing no memory with ``x``; it is returned.
        A buffer reused across calls means the call allocates no input-sized
        array, so it never faults in fresh pages, whatever the allocator does.
        What that saves depends on the allocator's state: glibc may hand the
        allocating call fresh pages every step (measured here in a loop of
        these calls alone: about 1000 page faults, 4.5 ms of 24 ms forward +
        backward on (4096, 1024) float32) or recycle pages that other arrays
        freed, and then the allocating call faults none.
    xhat_out : ndarray, optional
        Buffer for the cache's ``xhat`` (same rules); pass the previous
        cache's ``xhat`` once that cache is no longer needed.

    Returns
    -------
    out : ndarray, same shape and dtype as x (``out`` itself when given)
    cache : BatchNormCache
        For :func:`batchnorm_backward`.

    Raises
    ------
    ValueError
        If a channel has a single value (as PyTorch: the variance would be 0
        and the output would be ``beta`` whatever the input), if ``x`` holds
        NaN or inf, or if shapes do not match.
    TypeError
        If ``x`` is not a real floating-point array.

    Examples
    --------
    >>> import numpy as np, bnlib
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> out, _ = bnlib.batchnorm_forward(x, np.ones(2), np.zeros(2), eps=1e-12)
    >>> out.round(6)
    array([[-1., -1.],
           [ 1.,  1.]])
    """
    x, ax, gamma, beta, eps = _prepare(x, gamma, beta, axis, eps)
    return _forward(x, gamma, beta, ax, eps, out=out, xhat_out=xhat_out)


# -------------------------------------------------------------- backward ----
def _check_backward(dout, cache):
    if not isinstance(cache, BatchNormCache):
        raise TypeError(
            "cache must be the BatchNormCache returned by batchnorm_forward; "
            f"got an object of type {type(cache).__name__}"
        )
    dout = _checks.as_float_array(dout, "dout")
    if dout.shape != cache.xhat.shape:
        raise ValueError(
            f"dout must have the shape of the forward input, {cache.xhat.shape}, "
            f"as recorded in the cache; got dout of shape {dout.shape}. "
            "Was the cache made by another call?"
        )
    return dout


def batchnorm_backward(dout, cache: BatchNormCache, *, out=None):
    """Gradients of training-mode batch norm, closed form.

    .. math::
        \\frac{\\partial L}{\\partial \\beta} = \\sum_i g_i, \\qquad
        \\frac{\\partial L}{\\partial \\gamma} = \\sum_i g_i \\hat x_i,

        \\frac{\\partial L}{\\partial x_i} = \\frac{\\gamma}{\\sqrt{\\sigma^2+\\epsilon}}
        \\Big(g_i - \\frac1n\\sum_j g_j - \\hat x_i \\frac1n \\sum_j g_j \\hat x_j\\Big)
        \\quad (\\text{bn-dbeta}, \\text{bn-dgamma}, \\text{bn-dx})

    where sums run over the ``n`` values of a channel and ``g = dout``. The
    path through the variance contributes no term in ``dmu`` because
    :math:`\\partial \\sigma^2 / \\partial \\mu = 0`.

    Parameters
    ----------
    dout : ndarray, shape of the forward input
        Upstream gradient :math:`\\partial L / \\partial y`.
    cache : BatchNormCache
        From :func:`batchnorm_forward`.
    out : ndarray, optional
        Where to write ``dx`` (numpy ``out=`` rules: shape of ``x``, the
        result dtype of ``dout`` and the cache, C-contiguous, sharing no
        memory with ``dout`` or ``cache.xhat``); it is returned as ``dx``.

    Returns
    -------
    dx : ndarray, shape of x (``out`` itself when given)
    dgamma, dbeta : ndarray, (C,)
    """
    dout = _check_backward(dout, cache)
    out = _check_out(
        out, "out", dout.shape, np.result_type(dout, cache.xhat), ("dout", dout), ("cache.xhat", cache.xhat)
    )
    ax = cache.axis
    g3 = _as3d(dout, ax)
    xhat3 = _as3d(cache.xhat, ax)
    n = g3.shape[0] * g3.shape[2]
    lay = _kernels.Layout(g3.shape, np.result_type(dout, cache.xhat), g3, xhat3)
    dbeta, dgamma = _kernels.grad_sums(lay, g3, xhat3)  # one pass over dout and xhat
    if not np.isfinite(dbeta).all():
        _checks.check_finite(dout, "dout")
    # dx = k * (g - mean(g) - xhat * mean(g * xhat)), k = gamma * inv_std,
    # built in place in one output-sized array, the only one allocated.
    dx3 = np.empty(g3.shape, dtype=lay.dtype) if out is None else out.reshape(g3.shape)
    _kernels.grad_input(lay, g3, xhat3, dbeta / n, dgamma / n, cache.gamma * cache.inv_std, dx3)
    return (dx3.reshape(dout.shape) if out is None else out), dgamma, dbeta


def batchnorm_backward_staged(dout, cache: BatchNormCache):
    """Gradients of training-mode batch norm, node by node through the graph.

    The forward pass as a computational graph (chapter "Deriving the backward
    pass", ``bn-graph``), per channel over its ``n`` values::

        mu      = sum(x) / n                 (1)
        xmu     = x - mu                     (2)
        sq      = xmu ** 2                   (3)
        var     = sum(sq) / n                (4)
        sqrtvar = sqrt(var + eps)            (5)
        ivar    = 1 / sqrtvar                (6)
        xhat    = xmu * ivar                 (7)
        gammax  = gamma * xhat               (8)
        out     = gammax + beta              (9)

    This function walks it backwards, one local derivative per node. It is
    slower than :func:`batchnorm_backward` and agrees with it to about 1e-12
    in float64; it exists to be read next to the derivation.

    Parameters and returns as :func:`batchnorm_backward`.
    """
    dout = _check_backward(dout, cache)
    ax = cache.axis
    g = _as3d(dout, ax)
    xhat = _as3d(cache.xhat, ax)
    n = g.shape[0] * g.shape[2]
    gamma, ivar, var, eps = _col(cache.gamma), _col(cache.inv_std), _col(cache.var), cache.eps
    sqrtvar = np.sqrt(var + eps)
    xmu = xhat * sqrtvar

    def per_channel_sum(a):
        return a.sum(axis=(0, 2), keepdims=True)[0]  # (C, 1)

    # (9) out = gammax + beta
    dbeta = per_channel_sum(g)
    dgammax = g
    # (8) gammax = gamma * xhat
    dgamma = per_channel_sum(dgammax * xhat)
    dxhat = dgammax * gamma
    # (7) xhat = xmu * ivar  (xmu feeds two nodes: here and (3))
    divar = per_channel_sum(dxhat * xmu)
    dxmu1 = dxhat * ivar
    # (6) ivar = 1 / sqrtvar
    dsqrtvar = -1.0 / sqrtvar**2 * divar
    # (5) sqrtvar = sqrt(var + eps)
    dvar = 0.5 / np.sqrt(var + eps) * dsqrtvar
    # (4) var = sum(sq) / n
    dsq = np.ones_like(g) / n * dvar
    # (3) sq = xmu ** 2
    dxmu2 = 2.0 * xmu * dsq
    # (2) xmu = x - mu  (x feeds two nodes: here and (1))
    dx1 = dxmu1 + dxmu2
    dmu = -per_channel_sum(dxmu1 + dxmu2)
    # (1) mu = sum(x) / n
    dx2 = np.ones_like(g) / n * dmu
    dx = dx1 + dx2
    return dx.reshape(dout.shape), dgamma[:, 0], dbeta[:, 0]


# ------------------------------------------------------------- inference ----
def batchnorm_inference(x, gamma, beta, running_mean, running_var, *, axis: int = 1, eps: float = 1e-5):
    """Inference-mode batch norm: normalize with given running statistics.

    .. math:: y = \\gamma \\frac{x - \\hat\\mu}{\\sqrt{\\hat\\sigma^2 + \\epsilon}} + \\beta
              \\quad (\\text{bn-inference})

    Each example's output depends on that example alone, so the same example
    gives the same output whatever batch it comes in.

    Parameters
    ----------
    x : ndarray, (N, C, ...) or (N, ..., C)
    gamma, beta, running_mean, running_var : ndarray, (C,)
        ``running_var`` must be >= 0.
    axis : int
    eps : float

    Returns
    -------
    out : ndarray, shape and dtype of x
    """
    x, ax, gamma, beta, eps = _prepare(x, gamma, beta, axis, eps)
    C = x.shape[ax]
    rm = _checks.per_feature(running_mean, "running_mean", C, x.dtype, ax, x.shape)
    rv = _checks.per_feature(running_var, "running_var", C, x.dtype, ax, x.shape)
    if (rv < 0).any() or not np.isfinite(rv).all() or not np.isfinite(rm).all():
        raise ValueError(f"running_var must be finite and >= 0 and running_mean finite; got running_mean={rm}, running_var={rv}")
    scale = gamma / np.sqrt(rv + x.dtype.type(eps))
    shift = beta - rm * scale
    x3 = _as3d(x, ax)
    out3 = x3 * _col(scale)
    out3 += _col(shift)
    if not np.isfinite(np.sum(out3)):
        _checks.check_finite(x, "x")
    return out3.reshape(x.shape)


def batchnorm_inference_backward(dout, x, gamma, running_mean, running_var, *, axis: int = 1, eps: float = 1e-5):
    """Gradients of :func:`batchnorm_inference`: the statistics are constants.

    .. math:: \\frac{\\partial L}{\\partial x} = \\frac{\\gamma}{\\sqrt{\\hat\\sigma^2+\\epsilon}} g,\\quad
              \\frac{\\partial L}{\\partial \\gamma} = \\sum g\\,\\hat x,\\quad
              \\frac{\\partial L}{\\partial \\beta} = \\sum g

    Returns
    -------
    dx : ndarray, shape of x
    dgamma, dbeta : ndarray, (C,)
    """
    x, ax, gamma, _, eps = _prepare(x, gamma, np.zeros_like(gamma, dtype=float), axis, eps)
    dout = _checks.as_float_array(dout, "dout")
    if dout.shape != x.shape:
        raise ValueError(f"dout must have the shape of x, {x.shape}; got {dout.shape}")
    C = x.shape[ax]
    rm = _checks.per_feature(running_mean, "running_mean", C, x.dtype, ax, x.shape)
    rv = _checks.per_feature(running_var, "running_var", C, x.dtype, ax, x.shape)
    inv_std = 1.0 / np.sqrt(rv + x.dtype.type(eps))
    g3, x3 = _as3d(dout, ax), _as3d(x, ax)
    xhat3 = (x3 - _col(rm)) * _col(inv_std)
    dbeta = _channel_sum(g3)
    dgamma = _channel_dot(g3, xhat3)
    dx3 = g3 * _col(gamma * inv_std)
    return dx3.reshape(x.shape), dgamma, dbeta


# ---------------------------------------------------- running statistics ----
def update_running_stats(
    running_mean,
    running_var,
    batch_mean,
    batch_var,
    n: int,
    *,
    convention="torch",
    momentum=None,
    num_batches_tracked: int | None = None,
):
    """One update of the running mean and variance, in a framework's convention.

    .. math::
        \\hat\\mu \\leftarrow k\\,\\hat\\mu + w\\,\\mu_B, \\qquad
        \\hat\\sigma^2 \\leftarrow k\\,\\hat\\sigma^2 + w\\,s^2_B
        \\quad (\\text{running-mean}, \\text{running-var})

    PyTorch: ``w = momentum`` (default 0.1), ``k = 1 - w`` and
    ``s^2_B = var * n / (n - 1)`` (unbiased, ``n`` values per channel).
    Keras: ``k = momentum`` (default 0.99), ``w = 1 - k`` and ``s^2_B = var``
    (biased). See :mod:`bnlib.conventions`.

    Parameters
    ----------
    running_mean, running_var : ndarray, (C,)
    batch_mean, batch_var : ndarray, (C,)
        From :func:`batch_statistics` (``batch_var`` biased).
    n : int
        Values per channel in the batch (``N*H*W`` for images, not ``N``).
    convention : {"torch", "keras"} or Convention
    momentum : float in [0, 1], None or "cumulative"
        None takes the convention's default. ``"cumulative"`` is PyTorch's
        ``momentum=None``: ``w = 1 / num_batches_tracked``.
    num_batches_tracked : int
        Batches seen **including this one**; needed for ``"cumulative"``.

    Returns
    -------
    new_mean, new_var : ndarray, (C,)
    """
    conv = get_convention(convention)
    if momentum is None:
        momentum = conv.momentum
    if isinstance(momentum, str) and momentum == "cumulative":
        if not conv.allows_cumulative:
            raise ValueError(f"the {conv.name} convention has no cumulative moving average; got momentum='cumulative'")
        if not isinstance(num_batches_tracked, (int, np.integer)) or num_batches_tracked < 1:
            raise ValueError(
                "momentum='cumulative' needs num_batches_tracked >= 1 (batches seen, this one included); "
                f"got num_batches_tracked={num_batches_tracked!r}"
            )
        keep, new = 1.0 - 1.0 / num_batches_tracked, 1.0 / num_batches_tracked
    else:
        keep, new = conv.update_weights(_checks.momentum_value(momentum))
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be the number of values per channel, an int >= 1; got n={n!r}")
    batch_var = np.asarray(batch_var)
    if conv.unbiased_running_var:
        if n < 2:
            raise ValueError(f"the unbiased variance var*n/(n-1) needs n >= 2 values per channel; got n={n}")
        batch_var = batch_var * (n / (n - 1))
    return running_mean * keep + batch_mean * new, running_var * keep + batch_var * new

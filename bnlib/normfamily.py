"""Layer norm and group norm: batch norm's statistics taken over other axes.

Batch norm normalizes each channel over the batch. Layer norm normalizes each
sample over its last ``normalized_ndim`` axes (PyTorch's ``normalized_shape``);
group norm normalizes each sample over groups of ``C / num_groups`` channels
and their spatial positions. Instance norm is group norm with
``num_groups = C``; layer norm over ``(C, H, W)`` differs from group norm with
``num_groups = 1`` only in the shape of ``gamma`` and ``beta``.

The arithmetic is batch norm's: with :math:`\\mu, \\sigma^2` the mean and
**biased** variance of the ``m`` values of one row (a sample for layer norm, a
sample and group for group norm),

.. math:: \\hat x = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
          y = \\gamma \\hat x + \\beta,

and, with :math:`d = \\gamma \\odot g` for the upstream gradient ``g``,

.. math:: \\frac{\\partial L}{\\partial x} = \\frac{1}{\\sqrt{\\sigma^2+\\epsilon}}
          \\Big(d - \\frac1m\\sum d - \\hat x\\, \\frac1m \\sum d\\, \\hat x\\Big),

the sums running over the row. ``gamma`` and ``beta`` are per element of the
normalized shape (layer norm) or per channel (group norm), so their gradients
sum over the other axes. Computed in the dtype of ``x``, as
:func:`bnlib.batchnorm_forward`.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from . import _checks


class LayerNormCache(NamedTuple):
    """What :func:`layernorm_backward` needs from :func:`layernorm_forward`.

    Attributes
    ----------
    xhat : ndarray, shape of x
        Normalized input.
    gamma : ndarray, ``x.shape[-normalized_ndim:]``
    inv_std : ndarray, ``x.shape[:-normalized_ndim]``
        :math:`1 / \\sqrt{\\sigma^2 + \\epsilon}` of each sample.
    mean, var : ndarray, ``x.shape[:-normalized_ndim]``
        Mean and biased variance of each sample.
    normalized_ndim : int
    eps : float
    """

    xhat: np.ndarray
    gamma: np.ndarray
    inv_std: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    normalized_ndim: int
    eps: float


class GroupNormCache(NamedTuple):
    """What :func:`groupnorm_backward` needs from :func:`groupnorm_forward`.

    Attributes
    ----------
    xhat : ndarray, shape of x
        Normalized input.
    gamma : ndarray, (C,)
    inv_std : ndarray, (N, num_groups)
        :math:`1 / \\sqrt{\\sigma^2 + \\epsilon}` of each sample and group.
    mean, var : ndarray, (N, num_groups)
        Mean and biased variance of each sample and group.
    num_groups : int
    eps : float
    """

    xhat: np.ndarray
    gamma: np.ndarray
    inv_std: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    num_groups: int
    eps: float


# ---------------------------------------------------------------- checks ----
def _positive_int(v, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {v!r} of type {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be an int >= 1; got {name}={v!r}")
    return int(v)


def _param(v, name: str, shape: tuple, what: str) -> np.ndarray:
    arr = _checks.as_float_array(v, name)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} to match {what}; got {name} of shape {arr.shape}")
    return arr


def _check_dout(dout, cache, cls, forward: str) -> np.ndarray:
    if not isinstance(cache, cls):
        raise TypeError(f"cache must be the {cls.__name__} returned by {forward}; got an object of type {type(cache).__name__}")
    dout = _checks.as_float_array(dout, "dout")
    if dout.shape != cache.xhat.shape:
        raise ValueError(
            f"dout must have the shape of the forward input, {cache.xhat.shape}, "
            f"as recorded in the cache; got dout of shape {dout.shape}. "
            "Was the cache made by another call?"
        )
    return dout


# ----------------------------------------------------------------- rows ----
def _normalize_rows(x: np.ndarray, x2: np.ndarray, eps: float):
    """Mean, biased variance (two-pass), ``1/sqrt(var + eps)`` and xhat of each row of ``x2``."""
    m = x2.shape[1]
    mean = x2.sum(axis=1) / x.dtype.type(m)
    if not np.isfinite(mean).all():
        _checks.check_finite(x, "x")
        _checks.raise_overflow(x, "x")
    xc = x2 - mean[:, None]
    var = np.einsum("rk,rk->r", xc, xc) / x.dtype.type(m)
    if not np.isfinite(var).all():
        _checks.raise_overflow(x, "x")
    inv_std = 1.0 / np.sqrt(var + x.dtype.type(eps))
    xc *= inv_std[:, None]
    return mean, var, inv_std, xc


def _row_backward(d2: np.ndarray, xhat2: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
    """``inv_std * (d - mean(d) - xhat * mean(d * xhat))`` per row, for ``d = gamma * dout``."""
    m = d2.shape[1]
    mean_d = d2.sum(axis=1) / m
    mean_dx = np.einsum("rk,rk->r", d2, xhat2) / m
    return inv_std[:, None] * (d2 - mean_d[:, None] - xhat2 * mean_dx[:, None])


# ------------------------------------------------------------ layer norm ----
def layernorm_forward(x, gamma, beta, *, normalized_ndim: int = 1, eps: float = 1e-5):
    """Layer normalization over the last ``normalized_ndim`` axes of ``x``.

    .. math:: \\hat x = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
              y = \\gamma \\hat x + \\beta

    with :math:`\\mu, \\sigma^2` the mean and **biased** variance of each
    sample's ``x.shape[-normalized_ndim:]`` block, as
    ``torch.nn.functional.layer_norm(x, x.shape[-normalized_ndim:], gamma, beta, eps)``.
    No batch statistics: each sample is normalized on its own, the same in
    training and inference.

    Parameters
    ----------
    x : ndarray, float32 or float64
        Any rank >= ``normalized_ndim``, e.g. ``(N, D)`` or ``(N, L, D)``.
    gamma, beta : ndarray, ``x.shape[-normalized_ndim:]``
        Scale and shift, one per element of the normalized shape.
    normalized_ndim : int
        How many trailing axes are normalized together; >= 1.
    eps : float
        Added to the variance inside the square root; > 0.

    Returns
    -------
    out : ndarray, same shape and dtype as x
    cache : LayerNormCache
        For :func:`layernorm_backward`.

    Raises
    ------
    ValueError
        If shapes do not match, ``x`` has fewer than ``normalized_ndim`` axes,
        ``x`` holds NaN or inf, or ``eps`` is not a finite number > 0.
    TypeError
        If ``x``, ``gamma`` or ``beta`` is not a real floating-point array, or
        ``normalized_ndim`` is not an int.

    Examples
    --------
    >>> import numpy as np, bnlib
    >>> x = np.array([[1.0, 3.0], [10.0, 30.0]])
    >>> out, _ = bnlib.layernorm_forward(x, np.ones(2), np.zeros(2), eps=1e-12)
    >>> out.round(6)
    array([[-1.,  1.],
           [-1.,  1.]])
    """
    x = _checks.as_float_array(x, "x")
    nd = _positive_int(normalized_ndim, "normalized_ndim")
    if x.ndim < nd:
        raise ValueError(
            f"x must have at least normalized_ndim = {nd} dimension(s); got shape {tuple(x.shape)} with {x.ndim} dimension(s)"
        )
    shape = tuple(x.shape[x.ndim - nd :])
    what = f"x.shape[-{nd}:] = {shape} (normalized_ndim={nd}) for x of shape {tuple(x.shape)}"
    gamma = _param(gamma, "gamma", shape, what).astype(x.dtype, copy=False)
    beta = _param(beta, "beta", shape, what).astype(x.dtype, copy=False)
    eps = _checks.positive_eps(eps)
    lead = tuple(x.shape[: x.ndim - nd])
    x2 = x.reshape(int(np.prod(lead)), int(np.prod(shape)))
    mean, var, inv_std, xhat2 = _normalize_rows(x, x2, eps)
    xhat = xhat2.reshape(x.shape)
    out = xhat * gamma + beta
    cache = LayerNormCache(xhat, gamma, inv_std.reshape(lead), mean.reshape(lead), var.reshape(lead), nd, eps)
    return out, cache


def layernorm_backward(dout, cache: LayerNormCache):
    """Gradients of layer norm, closed form.

    .. math::
        \\frac{\\partial L}{\\partial \\beta} = \\sum_s g_s, \\qquad
        \\frac{\\partial L}{\\partial \\gamma} = \\sum_s g_s \\hat x_s,

        \\frac{\\partial L}{\\partial x} = \\frac{1}{\\sqrt{\\sigma^2+\\epsilon}}
        \\Big(d - \\frac1m\\sum d - \\hat x\\, \\frac1m \\sum d\\, \\hat x\\Big),
        \\quad d = \\gamma \\odot g

    where ``g = dout``, :math:`\\sum_s` runs over the samples (the leading
    axes) and the sums inside the bracket over the ``m`` elements of one
    sample's normalized block.

    Parameters
    ----------
    dout : ndarray, shape of the forward input
        Upstream gradient :math:`\\partial L / \\partial y`.
    cache : LayerNormCache
        From :func:`layernorm_forward`.

    Returns
    -------
    dx : ndarray, shape of x
    dgamma, dbeta : ndarray, shape of gamma
    """
    dout = _check_dout(dout, cache, LayerNormCache, "layernorm_forward")
    nd = cache.normalized_ndim
    xhat = cache.xhat
    lead_axes = tuple(range(xhat.ndim - nd))
    dbeta = dout.sum(axis=lead_axes)
    if not np.isfinite(dbeta).all():
        _checks.check_finite(dout, "dout")
    dgamma = (dout * xhat).sum(axis=lead_axes)
    rows = cache.inv_std.size
    d2 = (dout * cache.gamma).reshape(rows, -1)
    dx = _row_backward(d2, xhat.reshape(rows, -1), cache.inv_std.reshape(rows))
    return dx.reshape(dout.shape), dgamma, dbeta


# ------------------------------------------------------------ group norm ----
def groupnorm_forward(x, gamma, beta, num_groups: int, *, eps: float = 1e-5):
    """Group normalization of ``(N, C, *spatial)`` input.

    The ``C`` channels are split into ``num_groups`` groups of ``C / num_groups``
    consecutive channels; each sample and group is normalized over its channels
    and spatial positions,

    .. math:: \\hat x = \\frac{x - \\mu_{ng}}{\\sqrt{\\sigma^2_{ng} + \\epsilon}}, \\qquad
              y_{nc} = \\gamma_c \\hat x_{nc} + \\beta_c

    (biased variance), as ``torch.nn.functional.group_norm(x, num_groups, gamma, beta, eps)``.
    ``num_groups = C`` is instance norm; ``num_groups = 1`` is layer norm over
    ``(C, *spatial)`` with per-channel ``gamma`` and ``beta``.

    Parameters
    ----------
    x : ndarray, float32 or float64
        ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``, ...; rank >= 2.
    gamma, beta : ndarray, (C,)
        Per-channel scale and shift, ``C = x.shape[1]``.
    num_groups : int
        Number of groups; >= 1 and a divisor of ``C``.
    eps : float
        Added to the variance inside the square root; > 0.

    Returns
    -------
    out : ndarray, same shape and dtype as x
    cache : GroupNormCache
        For :func:`groupnorm_backward`.

    Raises
    ------
    ValueError
        If ``x`` has fewer than 2 dimensions, ``num_groups`` does not divide
        ``C``, shapes do not match, ``x`` holds NaN or inf, or ``eps`` is not a
        finite number > 0.
    TypeError
        If ``x``, ``gamma`` or ``beta`` is not a real floating-point array, or
        ``num_groups`` is not an int.

    Examples
    --------
    >>> import numpy as np, bnlib
    >>> x = np.array([[[1.0, 3.0], [10.0, 30.0]]])  # N=1, C=2, L=2
    >>> out, _ = bnlib.groupnorm_forward(x, np.ones(2), np.zeros(2), num_groups=2, eps=1e-12)
    >>> out.round(6)
    array([[[-1.,  1.],
            [-1.,  1.]]])
    """
    x = _checks.as_float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(
            f"x must have at least 2 dimensions (N, C, *spatial); got shape {tuple(x.shape)} with {x.ndim} dimension(s)"
        )
    G = _positive_int(num_groups, "num_groups")
    N, C = x.shape[0], x.shape[1]
    if C % G:
        raise ValueError(
            f"num_groups must divide the number of channels C = x.shape[1] = {C} for x of shape "
            f"{tuple(x.shape)}; got num_groups={G}, which leaves a remainder of {C % G}"
        )
    what = f"x.shape[1] = {C} for x of shape {tuple(x.shape)}"
    gamma = _param(gamma, "gamma", (C,), what).astype(x.dtype, copy=False)
    beta = _param(beta, "beta", (C,), what).astype(x.dtype, copy=False)
    eps = _checks.positive_eps(eps)
    x2 = x.reshape(N * G, -1)
    mean, var, inv_std, xhat2 = _normalize_rows(x, x2, eps)
    xhat = xhat2.reshape(x.shape)
    bshape = (1, C) + (1,) * (x.ndim - 2)
    out = xhat * gamma.reshape(bshape) + beta.reshape(bshape)
    cache = GroupNormCache(xhat, gamma, inv_std.reshape(N, G), mean.reshape(N, G), var.reshape(N, G), G, eps)
    return out, cache


def groupnorm_backward(dout, cache: GroupNormCache):
    """Gradients of group norm, closed form.

    .. math::
        \\frac{\\partial L}{\\partial \\beta_c} = \\sum_{n, s} g_{ncs}, \\qquad
        \\frac{\\partial L}{\\partial \\gamma_c} = \\sum_{n, s} g_{ncs} \\hat x_{ncs},

        \\frac{\\partial L}{\\partial x} = \\frac{1}{\\sqrt{\\sigma^2_{ng}+\\epsilon}}
        \\Big(d - \\frac1m\\sum d - \\hat x\\, \\frac1m \\sum d\\, \\hat x\\Big),
        \\quad d_{nc} = \\gamma_c g_{nc}

    where ``g = dout``, ``s`` runs over spatial positions and the sums inside
    the bracket over the ``m = (C / num_groups) * prod(spatial)`` values of one
    sample and group.

    Parameters
    ----------
    dout : ndarray, shape of the forward input
        Upstream gradient :math:`\\partial L / \\partial y`.
    cache : GroupNormCache
        From :func:`groupnorm_forward`.

    Returns
    -------
    dx : ndarray, shape of x
    dgamma, dbeta : ndarray, (C,)
    """
    dout = _check_dout(dout, cache, GroupNormCache, "groupnorm_forward")
    xhat = cache.xhat
    axes = (0,) + tuple(range(2, xhat.ndim))
    dbeta = dout.sum(axis=axes)
    if not np.isfinite(dbeta).all():
        _checks.check_finite(dout, "dout")
    dgamma = (dout * xhat).sum(axis=axes)
    C = xhat.shape[1]
    rows = cache.inv_std.size
    d2 = (dout * cache.gamma.reshape((1, C) + (1,) * (xhat.ndim - 2))).reshape(rows, -1)
    dx = _row_backward(d2, xhat.reshape(rows, -1), cache.inv_std.reshape(rows))
    return dx.reshape(dout.shape), dgamma, dbeta

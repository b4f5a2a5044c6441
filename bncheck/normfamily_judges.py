"""The judges of the layer-norm and group-norm exercise (chapter 9): reference, comparison, diagnosis.

As :mod:`bncheck.judges`: it runs in the learner's own kernel when they check
their work, and in the grader's process during grading (never in a graded
kernel). Each ``_judge_<kind>(params, results)`` regenerates the probe's
inputs from ``params``, computes :mod:`bnlib.normfamily`'s reference, and
raises :class:`CheckFailed` naming the mistake of the catalog whose answer
matches the learner's.

A backward check runs the learner's forward pass first (the cache is the
learner's own), so its judge checks that forward output before the
gradients: a backward pass fed the cache of a wrong forward pass cannot be
right, and the learner is told to fix the forward pass first, with the
forward's mistake named.
"""

from __future__ import annotations

import numpy as np

from bnlib.normfamily import groupnorm_backward, groupnorm_forward, layernorm_backward, layernorm_forward

from .judges import _compare, _need, _shape
from .probes import CheckFailed, groupnorm_inputs, layernorm_inputs


def _normalized(x, mu, var, eps):
    return (x - mu) / np.sqrt(var + eps)


def _common_mistakes(x, mu, var, m, eps, affine, where: str, plain=lambda a: a) -> dict:
    """Mistakes of the arithmetic, the statistics being right: ``m`` values per mean, ``where`` says which.

    ``affine`` scales and shifts a normalized ``x`` (and brings it to the input's shape), ``plain`` only reshapes.
    """
    return {
        "unbiased-variance": (
            lambda: affine((x - mu) / np.sqrt(var * m / (m - 1) + eps)),
            f"you normalized with the unbiased variance (divided by m-1 = {m - 1}). Normalization divides by "
            f"m = {m}, the number of values {where} (np.var's default, ddof=0).",
        ),
        "eps-outside-sqrt": (
            lambda: affine((x - mu) / (np.sqrt(var) + eps)),
            "eps is added outside the square root. It belongs inside: (x - mean) / sqrt(var + eps).",
        ),
        "no-eps": (
            lambda: affine((x - mu) / np.sqrt(var)),
            "eps is missing: divide by sqrt(var + eps), with the eps argument you were given.",
        ),
        "divided-by-variance": (
            lambda: affine((x - mu) / (var + eps)),
            "you divided by the variance; divide by the standard deviation sqrt(var + eps).",
        ),
        "no-gamma-beta": (
            lambda: plain(_normalized(x, mu, var, eps)),
            "the output is the normalized x-hat; scale it by gamma and shift it by beta.",
        ),
    }


def _stats(x, axes):
    return x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)


def _forward_first(got_out, ref_out, mistakes, forward: str) -> None:
    """Judge the forward output a backward check recorded; a wrong one fails the backward check, named."""
    try:
        _compare(got_out, ref_out, f"the output of {forward}", mistakes)
    except CheckFailed as e:
        raise CheckFailed(
            f"your backward pass is checked on the cache your {forward} returns, and {forward} is wrong. "
            f"{e.message[0].upper() + e.message[1:]} Fix {forward} first.",
            e.mistake,
        ) from None


# ---------------------------------------------------------- layer norm ----
def _layernorm_mistakes(x, gamma, beta, eps) -> dict:
    m = x.shape[-1]

    def affine(xhat):
        return gamma * xhat + beta

    mu, var = _stats(x, -1)
    mistakes = _common_mistakes(x, mu, var, m, eps, affine, "in a row (the last axis, D)")
    b_mu, b_var = _stats(x, 0)
    mistakes["statistics-over-batch"] = (
        lambda: affine(_normalized(x, b_mu, b_var, eps)),
        "the statistics were taken over the batch axis 0, as batch norm does (one mean per feature). "
        "Layer norm normalizes each example on its own: one mean and variance per row, over the last axis "
        "(x.mean(axis=-1, keepdims=True)).",
    )
    a_mu, a_var = _stats(x, None)
    mistakes["statistics-over-everything"] = (
        lambda: affine(_normalized(x, a_mu, a_var, eps)),
        "one mean and variance were taken over the whole array; layer norm takes one per row, over the last axis only.",
    )
    if x.ndim == 3:
        s_mu, s_var = _stats(x, (1, 2))
        mistakes["statistics-over-sequence"] = (
            lambda: affine(_normalized(x, s_mu, s_var, eps)),
            "the statistics were taken over each sequence's whole (L, D) block; here layer norm normalizes each "
            "position's D features on its own: over the last axis only.",
        )
        mistakes["statistics-over-time"] = (
            lambda: affine(_normalized(x, *_stats(x, 1), eps)),
            "the statistics were taken over the time axis 1 (one mean per sequence and feature); "
            "layer norm takes them over the last axis, D.",
        )
    mistakes["gamma-beta-swapped"] = (
        lambda: beta * _normalized(x, mu, var, eps) + gamma,
        "gamma and beta are swapped: the output is gamma * x_hat + beta.",
    )
    return mistakes


def _judge_layernorm(params, results):
    x, gamma, beta, eps, _ = layernorm_inputs(params["seed"], params["layout"], params.get("shape"))
    (got,) = _need(results, "out")
    _shape(got, x.shape, "the output")
    ref, _ = layernorm_forward(x, gamma, beta, eps=eps)
    _compare(got, ref, "the output of layernorm_forward", _layernorm_mistakes(x, gamma, beta, eps))


def _dx_mistakes(dout, gamma_b, xhat, inv_rows, to_rows, batch_axes, row: str) -> dict:
    """Wrong dx of a norm whose statistics are per row of ``to_rows(array)`` (a 2-D view)."""
    shape = dout.shape

    def closed(g, mean_path=True, var_path=True):
        g2, xh2 = to_rows(g), to_rows(xhat)
        t = g2.copy()
        if mean_path:
            t = t - g2.mean(axis=1, keepdims=True)
        if var_path:
            t = t - xh2 * (g2 * xh2).mean(axis=1, keepdims=True)
        return (inv_rows[:, None] * t).reshape(shape)

    d = gamma_b * dout
    inv = (inv_rows[:, None] * np.ones_like(to_rows(xhat))).reshape(shape)
    return {
        "only-direct-path": (
            lambda: closed(d, False, False),
            f"only the direct path gamma * dout / sqrt(var + eps) is there; the mean and the variance of {row} "
            "depend on x too: dx needs the terms -mean(d) and -x_hat * mean(d * x_hat), d = gamma * dout, "
            f"the means taken over {row}.",
        ),
        "missing-mean-path": (
            lambda: closed(d, mean_path=False),
            f"the path through the mean is missing: dx needs the term -mean(d), d = gamma * dout, the mean over {row} "
            "(every x_i moves the mean).",
        ),
        "missing-variance-path": (
            lambda: closed(d, var_path=False),
            f"the path through the variance is missing: dx needs the term -x_hat * mean(d * x_hat), d = gamma * dout, "
            f"the mean over {row}.",
        ),
        "gamma-factored-out": (
            lambda: gamma_b * closed(dout),
            f"gamma was taken out of the means, as batch norm allows. Here gamma varies within {row}, so it cannot: "
            "with d = gamma * dout, dx = (d - mean(d) - x_hat * mean(d * x_hat)) / sqrt(var + eps).",
        ),
        "missing-gamma": (
            lambda: closed(dout),
            "dx lacks the factor gamma: the gradient flows back through out = gamma * x_hat + beta, "
            "so start from d = gamma * dout.",
        ),
        "sums-over-batch-axis": (
            lambda: gamma_b * inv * (dout - dout.mean(axis=batch_axes, keepdims=True)
                                     - xhat * (dout * xhat).mean(axis=batch_axes, keepdims=True)),
            f"the means in dx were taken over the batch, as in batch norm's backward pass; here the statistics are "
            f"those of {row}, and so are the means of the gradient.",
        ),
    }


def _param_mistakes(dout, xhat, axes, dgamma_ref, dbeta_ref):
    dbeta = {
        "dbeta-dgamma-swapped": (lambda: dgamma_ref, "you returned dgamma where dbeta belongs (the order is dx, dgamma, dbeta)."),
        "dbeta-mean-not-sum": (lambda: dout.mean(axis=axes), "dbeta is a mean of dout; it is the sum."),
    }
    dgamma = {  # judged after dbeta, which was right: a dgamma equal to dbeta is a sum without x_hat, not a swap
        "dgamma-without-xhat": (lambda: dout.sum(axis=axes), "dgamma must be the sum of dout * x_hat."),
        "dgamma-mean-not-sum": (lambda: (dout * xhat).mean(axis=axes), "dgamma is a mean of dout * x_hat; it is the sum."),
    }
    return dbeta, dgamma


def _judge_layernorm_forward_part(params, results):
    """The forward output a failed backward check recorded: named as the cause when wrong."""
    x, gamma, beta, eps, _ = layernorm_inputs(params["seed"], params["layout"], params.get("shape"))
    (out,) = _need(results, "out")
    _shape(out, x.shape, "the output")
    _forward_first(out, layernorm_forward(x, gamma, beta, eps=eps)[0], _layernorm_mistakes(x, gamma, beta, eps),
                   "layernorm_forward")


def _judge_layernorm_backward(params, results):
    x, gamma, beta, eps, dout = layernorm_inputs(params["seed"], params["layout"], params.get("shape"))
    out, dx, dgamma, dbeta = _need(results, "out", "dx", "dgamma", "dbeta")
    D = x.shape[-1]
    _shape(out, x.shape, "the output"), _shape(dx, x.shape, "dx")
    _shape(dgamma, (D,), "dgamma"), _shape(dbeta, (D,), "dbeta")
    ref_out, cache = layernorm_forward(x, gamma, beta, eps=eps)
    _forward_first(out, ref_out, _layernorm_mistakes(x, gamma, beta, eps), "layernorm_forward")
    dx_ref, dgamma_ref, dbeta_ref = layernorm_backward(dout, cache)
    lead = tuple(range(x.ndim - 1))
    db_m, dg_m = _param_mistakes(dout, cache.xhat, lead, dgamma_ref, dbeta_ref)
    _compare(dbeta, dbeta_ref, "dbeta", db_m)
    _compare(dgamma, dgamma_ref, "dgamma", dg_m)
    _compare(dx, dx_ref, "dx", _dx_mistakes(dout, gamma, cache.xhat, cache.inv_std.reshape(-1),
                                            lambda a: a.reshape(-1, D), (0,), "each row (the last axis)"))


# ---------------------------------------------------------- group norm ----
def _groupnorm_mistakes(x, gamma, beta, G, eps) -> dict:
    N, C, H, W = x.shape
    K = C // G
    g, b = gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1)

    def affine(xhat):
        return g * xhat + b

    def grouped(view, axes):
        """Normalize ``view`` (a reshaped x) over ``axes``, back to x's shape."""
        mu, var = _stats(view, axes)
        return affine(_normalized(view, mu, var, eps).reshape(x.shape))

    x5 = x.reshape(N, G, K, H, W)
    mu5, var5 = _stats(x5, (2, 3, 4))
    mistakes = _common_mistakes(x5, mu5, var5, K * H * W, eps, lambda xh: affine(xh.reshape(x.shape)),
                                f"in a group of one sample ({K} channels times H*W = {H * W} positions)",
                                plain=lambda xh: xh.reshape(x.shape))
    mistakes["groups-interleaved"] = (
        lambda: _interleaved(x, G, eps, affine),
        f"the channels were split into groups interleaved (channel c in group c % {G}); group norm's groups are "
        f"{G} blocks of {K} consecutive channels: x.reshape(N, {G}, {K}, H, W), statistics over axes (2, 3, 4).",
    )
    mistakes["groups-along-wrong-axis"] = (
        lambda: grouped(x.reshape(N, -1, G), 1),
        f"the groups were cut along the wrong axis: x.reshape(N, -1, {G}) with statistics over axis 1 puts values "
        f"{G} apart in the flattened (C*H*W) sample into one group. Split the channel axis: x.reshape(N, {G}, -1) "
        "(or (N, G, C // G, H, W)), statistics over everything but N and G.",
    )
    mistakes["statistics-per-pixel"] = (
        lambda: grouped(x5, 2),
        "the statistics were taken over a group's channels at each pixel; group norm takes them over the group's "
        "channels and all its H*W positions together.",
    )
    mistakes["statistics-over-batch"] = (
        lambda: grouped(x5, (0, 2, 3, 4)),
        "the statistics of each group were taken over the whole batch; group norm normalizes each sample on its own: "
        "one mean per sample and group.",
    )
    mistakes["batch-norm-instead"] = (
        lambda: grouped(x, (0, 2, 3)),
        "this is batch norm (one mean per channel over N, H and W); group norm takes one mean per sample and group.",
    )
    mistakes["layer-norm-instead"] = (
        lambda: grouped(x, (1, 2, 3)),
        f"num_groups was ignored: the statistics were taken over each sample's whole (C, H, W) block (one group); "
        f"use {G} groups of {K} channels.",
    )
    mistakes["instance-norm-instead"] = (
        lambda: grouped(x, (2, 3)),
        f"each channel was normalized on its own (instance norm, a group per channel); use {G} groups of {K} channels.",
    )
    mistakes["gamma-beta-swapped"] = (
        lambda: b * _normalized(x5, mu5, var5, eps).reshape(x.shape) + g,
        "gamma and beta are swapped: the output is gamma * x_hat + beta.",
    )
    return mistakes


def _interleaved(x, G, eps, affine):
    N, C, H, W = x.shape
    xi = x.reshape(N, C // G, G, H, W)
    mu, var = _stats(xi, (1, 3, 4))
    return affine(_normalized(xi, mu, var, eps).reshape(x.shape))


def _judge_groupnorm(params, results):
    x, gamma, beta, G, eps, _ = groupnorm_inputs(params["seed"], params.get("shape"), params.get("num_groups"))
    (got,) = _need(results, "out")
    _shape(got, x.shape, "the output")
    ref, _ = groupnorm_forward(x, gamma, beta, G, eps=eps)
    _compare(got, ref, "the output of groupnorm_forward", _groupnorm_mistakes(x, gamma, beta, G, eps))


def _judge_groupnorm_forward_part(params, results):
    """The forward output a failed backward check recorded: named as the cause when wrong."""
    x, gamma, beta, G, eps, _ = groupnorm_inputs(params["seed"], params.get("shape"), params.get("num_groups"))
    (out,) = _need(results, "out")
    _shape(out, x.shape, "the output")
    _forward_first(out, groupnorm_forward(x, gamma, beta, G, eps=eps)[0], _groupnorm_mistakes(x, gamma, beta, G, eps),
                   "groupnorm_forward")


def _judge_groupnorm_backward(params, results):
    x, gamma, beta, G, eps, dout = groupnorm_inputs(params["seed"], params.get("shape"), params.get("num_groups"))
    out, dx, dgamma, dbeta = _need(results, "out", "dx", "dgamma", "dbeta")
    N, C = x.shape[:2]
    _shape(out, x.shape, "the output"), _shape(dx, x.shape, "dx")
    _shape(dgamma, (C,), "dgamma"), _shape(dbeta, (C,), "dbeta")
    ref_out, cache = groupnorm_forward(x, gamma, beta, G, eps=eps)
    _forward_first(out, ref_out, _groupnorm_mistakes(x, gamma, beta, G, eps), "groupnorm_forward")
    dx_ref, dgamma_ref, dbeta_ref = groupnorm_backward(dout, cache)
    db_m, dg_m = _param_mistakes(dout, cache.xhat, (0, 2, 3), dgamma_ref, dbeta_ref)
    _compare(dbeta, dbeta_ref, "dbeta", db_m)
    _compare(dgamma, dgamma_ref, "dgamma", dg_m)
    _compare(dx, dx_ref, "dx", _dx_mistakes(dout, gamma.reshape(1, C, 1, 1), cache.xhat, cache.inv_std.reshape(-1),
                                            lambda a: a.reshape(N * G, -1), (0, 2, 3),
                                            "each sample's group (its channels and positions)"))

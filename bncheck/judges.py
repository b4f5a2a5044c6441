"""The judges of the numpy exercises: reference, comparison, diagnosis.

It runs in the learner's own kernel when they check their work, and in the
grader's process during grading (never in a graded kernel). Each
``_judge_<kind>(params, results)`` regenerates the probe's inputs from
``params``, computes bnlib's reference, and raises :class:`CheckFailed`
naming the mistake of the catalog whose answer matches the learner's.
"""

from __future__ import annotations

import numpy as np

from bnlib.functional import batch_statistics, batchnorm_backward, batchnorm_forward
from bnlib.gradcheck import numerical_gradient
from bnlib.layer import BatchNorm

from . import registry
from .probes import (
    CheckFailed,
    _close,
    backward_inputs,
    gradient_probe,
    layer_setup,
    make_inputs,
    numgrad_setup,
    scaler_data,
)


def judge(kind: str, params: dict, results: dict) -> None:
    """Judge one check's ``results`` (arrays from the probe); raise CheckFailed if wrong."""
    registry.judge_function(kind)(params, results)


def judge_partial(kind: str, params: dict, results: dict) -> None:
    """Judge what a check recorded before it failed (a backward check's forward output); raise CheckFailed if
    that part is wrong. Never a pass: the check's own failure is reported when this raises nothing."""
    partial = registry.partial_judge_function(kind)
    if partial is not None and results:
        partial(params, results)


def _need(results: dict, *names):
    missing = [n for n in names if n not in results]
    if missing:
        raise CheckFailed(f"the check recorded no {', '.join(missing)}", "incomplete-record")
    return [np.asarray(results[n], dtype=np.float64) for n in names]


def _compare(got: np.ndarray, expected: np.ndarray, what: str, mistakes, *, rtol: float = 1e-6, atol: float = 1e-8):
    """Raise CheckFailed naming the first mistake whose answer matches ``got``.

    ``mistakes`` is ``{name: (compute, explanation)}`` or a list of such pairs
    (so that one name can cover several candidates).
    """
    if _close(got, expected, rtol, atol):
        return
    for name, (compute, explanation) in (mistakes.items() if isinstance(mistakes, dict) else mistakes):
        try:
            candidate = np.asarray(compute(), dtype=np.float64)
        except Exception:  # a mistake that cannot be computed here does not apply
            continue
        if candidate.shape == got.shape and _close(got, candidate, rtol, atol) and not _close(candidate, expected, rtol, atol):
            raise CheckFailed(f"wrong {what}: {explanation}", name)
    err = float(np.max(np.abs(got - expected)))
    raise CheckFailed(
        f"{what} differs from the reference by up to {err:.3g} (tolerance {atol:g} + {rtol:g} * |reference|); "
        "no common mistake matches: print your intermediate values and compare with the chapter's equations",
        "wrong-values",
    )


# ------------------------------------------------------------ forward -----
def _reduce_axes(layout: str):
    return (0,) if layout == "ND" else (0, 2, 3)


def _forward_mistakes(x, gamma, beta, eps, layout):
    red = _reduce_axes(layout)
    shp = (1, -1) + (1,) * (x.ndim - 2)
    g, b = gamma.reshape(shp), beta.reshape(shp)
    mu = x.mean(axis=red, keepdims=True)
    var = x.var(axis=red, keepdims=True)
    n = x.size // x.shape[1]

    def affine(xhat):
        return g * xhat + b

    mistakes = {
        "unbiased-variance": (
            lambda: affine((x - mu) / np.sqrt(var * n / (n - 1) + eps)),
            f"you normalized with the unbiased variance (divided by n-1 = {n - 1}). "
            f"Batch norm divides by n = {n}, the number of values per feature (np.var's default, ddof=0).",
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
            lambda: (x - mu) / np.sqrt(var + eps),
            "the output is the normalized x-hat; scale it by gamma and shift it by beta.",
        ),
        "gamma-beta-swapped": (
            lambda: b * ((x - mu) / np.sqrt(var + eps)) + g,
            "gamma and beta are swapped: the output is gamma * x_hat + beta.",
        ),
        "shift-before-scale": (
            lambda: g * ((x - mu) / np.sqrt(var + eps) + b),
            "beta is added before scaling by gamma; the output is gamma * x_hat + beta.",
        ),
    }
    if layout == "ND":
        f_mu, f_var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
        mistakes["statistics-over-features"] = (
            lambda: affine((x - f_mu) / np.sqrt(f_var + eps)),
            "statistics were taken over the feature axis (each example's own mean); "
            "batch norm takes them over the batch, axis 0, one mean per feature.",
        )
    else:
        p_mu, p_var = x.mean(axis=0, keepdims=True), x.var(axis=0, keepdims=True)
        mistakes["statistics-over-batch-only"] = (
            lambda: affine((x - p_mu) / np.sqrt(p_var + eps)),
            "statistics were taken over the batch axis only (one mean per channel and pixel); "
            "spatial batch norm takes them over N, H and W: one mean per channel, n = N*H*W values.",
        )
        s_mu, s_var = x.mean(axis=(1, 2, 3), keepdims=True), x.var(axis=(1, 2, 3), keepdims=True)
        mistakes["statistics-over-channels"] = (
            lambda: affine((x - s_mu) / np.sqrt(s_var + eps)),
            "statistics were taken per example (over C, H, W); batch norm takes them per channel over N, H and W.",
        )
        mistakes["gamma-on-wrong-axis"] = (
            lambda: gamma.reshape(1, 1, 1, -1)[..., : x.shape[3]] * ((x - mu) / np.sqrt(var + eps))
            + beta.reshape(1, 1, 1, -1)[..., : x.shape[3]],
            "gamma and beta were broadcast along the last axis (W); reshape them to (1, C, 1, 1).",
        )
    return mistakes


def _judge_forward(params, results):
    x, gamma, beta, eps = make_inputs(params["seed"], params["layout"], params.get("shape"))
    (got,) = _need(results, "out")
    _shape(got, x.shape, "the output")
    ref, _ = batchnorm_forward(x, gamma, beta, axis=1, eps=eps)
    _compare(got, ref, "the output", _forward_mistakes(x, gamma, beta, eps, params["layout"]))


def _shape(arr, shape, what):
    if arr.shape != tuple(shape):
        raise CheckFailed(f"{what} must have shape {tuple(shape)}; got shape {arr.shape}", "wrong-shape")


# ----------------------------------------------------------- backward -----
def _backward_mistakes(dout, x, gamma, eps):
    mu, var = x.mean(axis=0), x.var(axis=0)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mu) * inv
    k = gamma * inv
    mg, mgx = dout.mean(axis=0), (dout * xhat).mean(axis=0)
    n = x.shape[0]
    return {
        "missing-mean-path": (
            lambda: k * (dout - xhat * mgx),
            "the path through the mean is missing: dx needs the term -mean(dout) (every x_i moves the mean).",
        ),
        "missing-variance-path": (
            lambda: k * (dout - mg),
            "the path through the variance is missing: dx needs the term -x_hat * mean(dout * x_hat).",
        ),
        "only-direct-path": (
            lambda: k * dout,
            "only the direct path gamma / sqrt(var + eps) * dout is there; the batch statistics depend on x too.",
        ),
        "missing-gamma": (
            lambda: inv * (dout - mg - xhat * mgx),
            "dx lacks the factor gamma: the gradient flows back through out = gamma * x_hat + beta.",
        ),
        "unbiased-variance": (
            lambda: _unbiased_dx(dout, x, gamma, eps),
            f"your gradient is that of batch norm with the unbiased variance (n-1 = {n - 1}); use the biased one.",
        ),
    }


def _unbiased_dx(dout, x, gamma, eps):
    n = x.shape[0]
    var = x.var(axis=0) * n / (n - 1)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - x.mean(axis=0)) * inv
    return gamma * inv * (dout - dout.mean(axis=0) - xhat * (dout * xhat).sum(axis=0) / (n - 1))


def _judge_backward(params, results):
    dout, x, gamma, eps = backward_inputs(params["seed"], params.get("shape"))
    dx, dgamma, dbeta = _need(results, "dx", "dgamma", "dbeta")
    D = x.shape[1]
    _shape(dx, x.shape, "dx"), _shape(dgamma, (D,), "dgamma"), _shape(dbeta, (D,), "dbeta")
    _, cache = batchnorm_forward(x, gamma, np.zeros(D), axis=1, eps=eps)
    dx_ref, dgamma_ref, dbeta_ref = batchnorm_backward(dout, cache)
    xhat = cache.xhat
    _compare(dbeta, dbeta_ref, "dbeta", {
        "dbeta-dgamma-swapped": (lambda: dgamma_ref, "you returned dgamma where dbeta belongs (the order is dx, dgamma, dbeta)."),
        "dbeta-mean-not-sum": (lambda: dout.mean(axis=0), "dbeta is the mean of dout over the batch; it is the sum."),
    })
    _compare(dgamma, dgamma_ref, "dgamma", {
        "dbeta-dgamma-swapped": (lambda: dbeta_ref, "you returned dbeta where dgamma belongs (the order is dx, dgamma, dbeta)."),
        "dgamma-without-xhat": (lambda: dout.sum(axis=0), "dgamma must be sum(dout * x_hat) over the batch."),
        "dgamma-uses-x": (lambda: (dout * x).sum(axis=0), "dgamma uses x; it must use the normalized x_hat: sum(dout * x_hat)."),
        "dgamma-mean-not-sum": (lambda: (dout * xhat).mean(axis=0), "dgamma is a mean over the batch; it is the sum."),
    })
    _compare(dx, dx_ref, "dx", _backward_mistakes(dout, x, gamma, eps))


# --------------------------------------------------- running statistics ---
def _simulate(batches, *, convention, momentum, eps, C, mistake=None):
    """Running mean and variance after ``batches``, with an optional mistake.

    The mistakes are the ones learners make when they write the update:
    flipping the momentum convention, the wrong variance for the running
    average, a Bessel factor with N instead of the values per channel.
    """
    torch_like = convention == "torch"
    rm, rv = np.zeros(C), np.ones(C)
    for x in batches:
        mean, var, n = batch_statistics(x, axis=1)
        N = x.shape[0]
        if mistake == "not-updated":
            continue
        w_new = momentum if torch_like else 1.0 - momentum
        if mistake == "momentum-flipped":
            w_new = 1.0 - w_new
        unbiased = torch_like
        if mistake == "bessel-flipped":
            unbiased = not unbiased
        if unbiased:
            factor = (N / (N - 1)) if mistake == "bessel-with-N" else n / (n - 1)
            var = var * factor
        rm = (1 - w_new) * rm + w_new * mean
        rv = (1 - w_new) * rv + w_new * var
    return rm, rv


_LAYER_MISTAKES = {
    "not-updated": "the running statistics were not updated by the training-mode calls.",
    "momentum-flipped": "the momentum convention is flipped: PyTorch's momentum weights the NEW batch "
    "(running = (1 - m) * running + m * batch), Keras's weights the OLD value (running = m * running + (1 - m) * batch).",
    "bessel-flipped": "the Bessel correction is the wrong way round: PyTorch's running variance is unbiased "
    "(var * n / (n - 1)), Keras's moving variance is biased.",
    "bessel-with-N": "the Bessel factor used N (the batch size) instead of n = N*H*W, the number of values per channel.",
}


def _judge_running_layer(params, results):
    convention, steps = params["convention"], params["steps"]
    C, momentum, eps, batches = layer_setup(params["seed"], convention, params["layout"], steps)
    ref = BatchNorm(C, axis=1, eps=eps, momentum=momentum, convention=convention)
    for i, x in enumerate(batches):
        what = f"the training-mode output of step {i + 1}"
        (got,) = _need(results, f"train{i}")
        _shape(got, x.shape, what)
        _compare(got, ref(x), what, {})
    rm, rv, rm2, rv2 = _need(results, "rm", "rv", "rm_after_eval", "rv_after_eval")
    mistakes = {
        name: (lambda name=name: np.concatenate(_simulate(batches, convention=convention, momentum=momentum, eps=eps, C=C,
                                                          mistake=name)), text)
        for name, text in _LAYER_MISTAKES.items()
    }
    _compare(np.concatenate([rm, rv]), np.concatenate([ref.running_mean, ref.running_var]),
             f"the running statistics after {steps} training steps ({convention} convention)", mistakes)
    x = batches[0][::-1].copy()
    ref.eval()
    (got,) = _need(results, "eval")
    _compare(got, ref(x), "the inference-mode output", {
        "batch-stats-in-inference": (
            lambda: batchnorm_forward(x, ref.gamma, ref.beta, axis=1, eps=eps)[0],
            "in inference mode (training=False) the layer must use the running statistics, not the batch's.",
        ),
    })
    if not (_close(rm2, rm) and _close(rv2, rv)):
        raise CheckFailed("an inference-mode call changed the running statistics; only training-mode calls update them",
                          "updated-in-inference")


# ------------------------------------------------------------ scalers -----
def _judge_scaler(params, results):
    kind = params["kind"]
    Xtr, Xte = scaler_data(params["seed"])
    X = np.concatenate([Xtr, Xte])
    got_tr, got_te = _need(results, "train", "test")
    _shape(got_tr, Xtr.shape, "the scaled training data"), _shape(got_te, Xte.shape, "the scaled test data")
    if kind == "standard":
        def ref(A, B, ddof=0, centre=True):
            m, sd = A.mean(axis=0), A.std(axis=0, ddof=ddof)
            return (B - (m if centre else 0.0)) / np.where(sd == 0, 1.0, sd)
        wrong = {
            "unbiased-std": (lambda A, B: ref(A, B, ddof=1),
                             "you used the unbiased standard deviation (ddof=1); use np.std's default, ddof=0."),
            "no-centering": (lambda A, B: ref(A, B, centre=False), "the mean was not subtracted."),
        }
    else:
        def ref(A, B):
            lo, hi = A.min(axis=0), A.max(axis=0)
            return (B - lo) / np.where(hi == lo, 1.0, hi - lo)
        wrong = {
            "divided-by-max": (lambda A, B: (B - A.min(axis=0)) / np.where(A.max(axis=0) == 0, 1.0, A.max(axis=0)),
                               "you divided by the max; divide by the range max - min."),
        }

    def both(f, fit_on=None):
        return np.concatenate([f(Xtr if fit_on is None else fit_on, Xtr), f(Xtr if fit_on is None else fit_on, Xte)])

    mistakes = {
        "fitted-on-test-data": (lambda: np.concatenate([ref(Xtr, Xtr), ref(Xte, Xte)]),
                                "the test data were scaled with their own statistics; use the statistics fitted on the "
                                "training data (fit once, transform both; test values may fall outside the training range)."),
        "fitted-on-all-data": (lambda: both(ref, fit_on=X), "the statistics were fitted on training and test data together "
                               "(leakage); fit on the training data only."),
    }
    mistakes.update({name: (lambda f=f: both(f), text) for name, (f, text) in wrong.items()})
    if not np.isfinite(got_tr[:, -1]).all() or not _close(got_tr[:, -1], np.zeros(len(Xtr))):
        raise CheckFailed("a constant feature must map to 0: guard the division by its zero spread "
                          "(for example np.where(spread == 0, 1, spread))", "constant-feature")
    got = np.concatenate([got_tr, got_te])
    if not np.isfinite(got).all():
        raise CheckFailed(f"the scaled data contain NaN or inf ({int((~np.isfinite(got)).sum())} values)", "not-finite")
    _compare(got, both(ref), "the scaled training and test data", mistakes)


# --------------------------------------------------- numerical gradient ---
def _judge_numgrad(params, results):
    x, dout, h = numgrad_setup(params["seed"])
    (got,) = _need(results, "grad")
    _shape(got, x.shape, "the numerical gradient")
    ref = numerical_gradient(gradient_probe, x.copy(), dout, h=h)

    def one_sided(step_sign):
        g = np.zeros_like(x)
        base = np.sum(gradient_probe(x) * dout)
        for i in np.ndindex(x.shape):
            xp = x.copy()
            xp[i] += step_sign * h
            g[i] = step_sign * (np.sum(gradient_probe(xp) * dout) - base) / h
        return g

    if not _close(got, ref, rtol=1e-6, atol=1e-7):
        _compare(got, ref, "the numerical gradient", {
            "forward-difference": (lambda: one_sided(+1), "this is a one-sided (forward) difference "
                                   "(f(x+h) - f(x)) / h, whose error is of order h; use the central difference "
                                   "(f(x+h) - f(x-h)) / (2h), whose error is of order h**2."),
            "backward-difference": (lambda: one_sided(-1),
                                    "this is a one-sided (backward) difference; use the central difference."),
            "divided-by-h": (lambda: 2 * ref, "the central difference is divided by h; divide by 2h."),
            "ignores-dout": (lambda: numerical_gradient(gradient_probe, x.copy(), np.ones(x.shape), h=h),
                             "dout is ignored: the gradient is that of sum(f(x) * dout), so weight f's outputs by dout."),
        })

"""Checkers for the graded exercises: compare a learner's function with bnlib
and say, in words, what is most likely wrong.

A test cell of an exercise notebook calls, for example::

    from bnlib.checkers import check_forward
    check_forward(batchnorm_forward, seed=0)

Each checker

1. builds inputs that let no mistake hide: small batches (N in 2..5, where
   ``n`` and ``n - 1`` differ a lot), ``x = 5 * randn + 12``, gamma and beta far
   from 1 and 0, and an ``eps`` large enough that where it goes matters;
2. calls the learner's function on copies of them;
3. converts what comes back to a plain ``float64`` ndarray, checking type,
   shape and dtype first, so an object that claims to equal everything earns
   nothing;
4. compares with bnlib's reference; if they differ, it recomputes the answer
   with each mistake of a catalog (unbiased variance, eps outside the square
   root, wrong axis, ...) and names the one that matches.

A failed check raises :class:`CheckFailed` (an ``AssertionError``) whose
message starts with the name of the mistake in brackets, e.g.
``[unbiased-variance]``, so a grading report can count them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .functional import batch_statistics, batchnorm_backward, batchnorm_forward
from .gradcheck import numerical_gradient
from .layer import BatchNorm

__all__ = [
    "CheckFailed",
    "make_inputs",
    "check_forward",
    "check_backward",
    "check_running_layer",
    "check_scaler",
    "check_numerical_gradient",
]

RTOL = 1e-6
ATOL = 1e-8


class CheckFailed(AssertionError):
    """A learner's answer is wrong; ``mistake`` names the diagnosis (or None)."""

    def __init__(self, message: str, mistake: str | None = None):
        self.mistake = mistake
        super().__init__(f"[{mistake}] {message}" if mistake else message)


# ------------------------------------------------------------ inputs ------
def _shape_for(seed: int, layout: str) -> tuple[int, ...]:
    r = np.random.default_rng(10_000 + seed)
    N = int(r.integers(2, 6))
    C = int(r.integers(2, 6))
    if layout == "ND":
        return (N, C)
    if layout == "NCHW":
        return (N, C, int(r.integers(2, 4)), int(r.integers(2, 4)))
    raise ValueError(f"layout must be 'ND' or 'NCHW'; got {layout!r}")


def make_inputs(seed: int, layout: str = "ND", shape=None):
    """Inputs on which no common mistake goes unnoticed.

    Returns
    -------
    x : ndarray, float64, ``5 * randn + 12`` of ``shape`` (drawn from ``seed``
        when None: N in 2..5 and C in 2..5, plus H, W in 2..3 for ``"NCHW"``)
    gamma, beta : ndarray, (C,)
        gamma in +-[0.5, 2], beta in about [-3, 3].
    eps : float
        In [0.1, 1]: large enough that its place in the formula matters.
    """
    shape = tuple(shape) if shape is not None else _shape_for(seed, layout)
    r = np.random.default_rng(seed)
    C = shape[1]
    x = 5.0 * r.standard_normal(shape) + 12.0
    gamma = r.uniform(0.5, 2.0, C) * r.choice([-1.0, 1.0], C)
    beta = 3.0 * r.standard_normal(C)
    eps = float(r.uniform(0.1, 1.0))
    return x, gamma, beta, eps


# --------------------------------------------------- result conversion ----
def _plain(value, *, what: str, shape: tuple[int, ...], hint: str = "") -> np.ndarray:
    """``value`` as a plain float64 ndarray of ``shape``, or CheckFailed.

    Only a real ``numpy.ndarray`` (or a subclass, whose data is read through
    ndarray's own methods) is accepted: no lists, no objects with ``__eq__``
    or ``__array__`` of their own.
    """
    if value is None:
        raise CheckFailed(f"{what} is None: did you forget a `return` statement?", "returned-none")
    if not isinstance(value, np.ndarray):
        raise CheckFailed(
            f"{what} must be a numpy array of shape {shape}; got an object of type {type(value).__name__}",
            "not-an-array",
        )
    arr = np.ndarray.copy(np.ndarray.view(value, np.ndarray))
    if arr.dtype.kind != "f":
        raise CheckFailed(
            f"{what} must hold floating-point numbers; got dtype {arr.dtype}", "wrong-dtype"
        )
    if arr.shape != tuple(shape):
        raise CheckFailed(
            f"{what} must have shape {tuple(shape)}; got shape {arr.shape}. {hint}".rstrip(), "wrong-shape"
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise CheckFailed(f"{what} contains NaN or inf ({int((~np.isfinite(arr)).sum())} values)", "not-finite")
    return arr


def _close(a: np.ndarray, b: np.ndarray, rtol: float = RTOL, atol: float = ATOL) -> bool:
    return bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))


def _compare(got: np.ndarray, expected: np.ndarray, what: str, mistakes: dict[str, tuple[Callable, str]]):
    """Raise CheckFailed naming the first mistake whose answer matches ``got``."""
    if _close(got, expected):
        return
    for name, (compute, explanation) in mistakes.items():
        try:
            candidate = compute()
        except Exception:  # a mistake that cannot be computed here does not apply
            continue
        if candidate.shape == got.shape and _close(got, candidate) and not _close(candidate, expected):
            raise CheckFailed(f"wrong {what}: {explanation}", name)
    err = float(np.max(np.abs(got - expected)))
    raise CheckFailed(
        f"{what} differs from the reference by up to {err:.3g} "
        "(no common mistake matches; print your intermediate values and compare with the chapter's equations)",
        "wrong-values",
    )


def _call(fn, *args, what: str, **kwargs):
    """Call the learner's function on copies of ``args``; refuse in-place edits."""
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    try:
        result = fn(*copies, **kwargs)
    except NotImplementedError:
        raise CheckFailed(f"{what} is not implemented yet (it raised NotImplementedError)", "not-implemented") from None
    for before, after in zip(args, copies):
        if isinstance(before, np.ndarray) and not np.array_equal(before, after):
            raise CheckFailed(f"{what} modified its input arrays in place; it must leave them unchanged", "modified-input")
    return result


def _unpack(result, names: tuple[str, ...], what: str):
    if not isinstance(result, tuple) or len(result) != len(names):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else f"an object of type {type(result).__name__}"
        raise CheckFailed(f"{what} must return a tuple ({', '.join(names)}); got {got}", "wrong-return")
    return result


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


def check_forward(fn, *, seed: int = 0, layout: str = "ND", shape=None) -> None:
    """Check a learner's training-mode forward pass ``fn(x, gamma, beta, eps) -> out``.

    Parameters
    ----------
    fn : callable
        ``layout="ND"``: x of shape (N, D); ``layout="NCHW"``: x of shape (N, C, H, W).
    seed : int
        Chooses the shape (unless ``shape`` is given) and the values.

    Raises
    ------
    CheckFailed
        With the diagnosed mistake, e.g. ``[unbiased-variance]``.
    """
    x, gamma, beta, eps = make_inputs(seed, layout, shape)
    ref, _ = batchnorm_forward(x, gamma, beta, axis=1, eps=eps)
    got = _plain(_call(fn, x, gamma, beta, eps, what="your forward pass"), what="the output", shape=x.shape)
    _compare(got, ref, "the output", _forward_mistakes(x, gamma, beta, eps, layout))


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


def check_backward(fn, *, seed: int = 0, shape=None) -> None:
    """Check ``fn(dout, x, gamma, eps) -> (dx, dgamma, dbeta)`` for (N, D) input.

    The learner's function recomputes the batch statistics from ``x``.
    Diagnoses: dgamma or dbeta not summed over the batch, swapped, and dx
    missing the paths through the mean or the variance.
    """
    x, gamma, beta, eps = make_inputs(seed, "ND", shape)
    dout = np.random.default_rng(seed + 1).standard_normal(x.shape) * 2.0
    _, cache = batchnorm_forward(x, gamma, beta, axis=1, eps=eps)
    dx_ref, dgamma_ref, dbeta_ref = batchnorm_backward(dout, cache)
    result = _unpack(_call(fn, dout, x, gamma, eps, what="your backward pass"), ("dx", "dgamma", "dbeta"), "your backward pass")
    D = x.shape[1]
    summed = "dgamma and dbeta get one value per feature: sum over the batch axis 0."
    dx = _plain(result[0], what="dx", shape=x.shape)
    dgamma = _plain(result[1], what="dgamma", shape=(D,), hint=summed)
    dbeta = _plain(result[2], what="dbeta", shape=(D,), hint=summed)
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
def _steps(seed: int, layout: str, C: int, k: int):
    r = np.random.default_rng(seed)
    base = _shape_for(seed, layout)
    shape = (base[0], C) + base[2:]
    return [5.0 * r.standard_normal(shape) + 12.0 + 3.0 * r.standard_normal((1, C) + (1,) * (len(shape) - 2)) for _ in range(k)]


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


def check_running_layer(layer_cls, *, convention: str = "torch", seed: int = 0, layout: str = "NCHW", steps: int = 3) -> None:
    """Check a learner's layer class against bnlib's reference in one framework convention.

    The class is used as ``layer = layer_cls(C, momentum=m, eps=eps, convention=convention)``,
    then ``out = layer(x, training=True)`` for ``steps`` batches, then
    ``layer(x, training=False)``, and ``layer.running_mean`` / ``layer.running_var``
    are read, starting from zeros and ones. Input is ``(N, C)`` or ``(N, C, H, W)``,
    features on axis 1.
    """
    if convention not in ("torch", "keras"):
        raise ValueError(f"convention must be 'torch' or 'keras'; got {convention!r}")
    r = np.random.default_rng(20_000 + seed)
    C = int(r.integers(2, 5))
    momentum = float(r.uniform(0.1, 0.4)) if convention == "torch" else float(r.uniform(0.6, 0.9))
    eps = float(r.uniform(0.01, 0.5))
    batches = _steps(seed, layout, C, steps)
    ref = BatchNorm(C, axis=1, eps=eps, momentum=momentum, convention=convention)
    try:
        layer = layer_cls(C, momentum=momentum, eps=eps, convention=convention)
    except NotImplementedError:
        raise CheckFailed("your layer is not implemented yet (it raised NotImplementedError)", "not-implemented") from None
    for i, x in enumerate(batches):
        ref.train()
        want = ref(x)
        what = f"the training-mode output of step {i + 1}"
        got = _plain(_call(layer, x, what="your layer in training mode", training=True), what=what, shape=x.shape)
        _compare(got, want, what, {})
    mistakes = {
        name: (lambda name=name: np.concatenate(_simulate(batches, convention=convention, momentum=momentum, eps=eps, C=C, mistake=name)), text)
        for name, text in _LAYER_MISTAKES.items()
    }
    rm, rv = layer_running(layer, C)
    _compare(np.concatenate([rm, rv]), np.concatenate([ref.running_mean, ref.running_var]),
             f"the running statistics after {steps} training steps ({convention} convention)", mistakes)
    x = batches[0][::-1].copy()
    ref.eval()
    want = ref(x)
    got = _plain(_call(layer, x, what="your layer in inference mode", training=False), what="the inference-mode output", shape=x.shape)
    _compare(got, want, "the inference-mode output", {
        "batch-stats-in-inference": (
            lambda: batchnorm_forward(x, ref.gamma, ref.beta, axis=1, eps=eps)[0],
            "in inference mode (training=False) the layer must use the running statistics, not the batch's.",
        ),
    })
    rm2, rv2 = layer_running(layer, C)
    if not (_close(rm2, rm) and _close(rv2, rv)):
        raise CheckFailed("an inference-mode call changed the running statistics; only training-mode calls update them",
                          "updated-in-inference")


def layer_running(layer, C: int):
    """``(running_mean, running_var)`` of a learner's layer as plain float arrays of shape (C,)."""
    for attr in ("running_mean", "running_var"):
        if not hasattr(layer, attr):
            raise CheckFailed(f"your layer has no attribute `{attr}`", "missing-attribute")
    return (
        _plain(layer.running_mean, what="running_mean", shape=(C,)),
        _plain(layer.running_var, what="running_var", shape=(C,)),
    )


# ------------------------------------------------------------ scalers -----
def check_scaler(fit, transform, *, kind: str = "standard", seed: int = 0) -> None:
    """Check ``fit(X_train) -> stats`` and ``transform(X, stats) -> X_scaled``.

    ``kind="standard"``: z-scores with the training mean and (biased) std;
    ``kind="minmax"``: ``(X - min) / (max - min)`` with the training min and max.
    Constant features map to 0. The test data are scaled with the TRAINING
    statistics (the leakage trap).
    """
    r = np.random.default_rng(30_000 + seed)
    n_train, n_test, D = int(r.integers(4, 9)), int(r.integers(3, 6)), int(r.integers(2, 5))
    scale = r.uniform(0.5, 50.0, D)
    X = r.standard_normal((n_train + n_test, D)) * scale + r.uniform(-20, 20, D)
    X[:, -1] = 7.0  # a constant feature
    Xtr, Xte = X[:n_train], X[n_train:]
    if kind == "standard":
        def ref(A, B, ddof=0, centre=True):
            m, sd = A.mean(axis=0), A.std(axis=0, ddof=ddof)
            return (B - (m if centre else 0.0)) / np.where(sd == 0, 1.0, sd)
        wrong = {
            "unbiased-std": (lambda A, B: ref(A, B, ddof=1), "you used the unbiased standard deviation (ddof=1); use np.std's default, ddof=0."),
            "no-centering": (lambda A, B: ref(A, B, centre=False), "the mean was not subtracted."),
        }
    elif kind == "minmax":
        def ref(A, B):
            lo, hi = A.min(axis=0), A.max(axis=0)
            return (B - lo) / np.where(hi == lo, 1.0, hi - lo)
        wrong = {
            "divided-by-max": (lambda A, B: (B - A.min(axis=0)) / np.where(A.max(axis=0) == 0, 1.0, A.max(axis=0)),
                               "you divided by the max; divide by the range max - min."),
        }
    else:
        raise ValueError(f"kind must be 'standard' or 'minmax'; got {kind!r}")
    both = lambda f, fit_on=None: np.concatenate([f(Xtr if fit_on is None else fit_on, Xtr), f(Xtr if fit_on is None else fit_on, Xte)])
    mistakes = {
        "fitted-on-test-data": (lambda: np.concatenate([ref(Xtr, Xtr), ref(Xte, Xte)]),
                                "the test data were scaled with their own statistics; use the statistics fitted on the "
                                "training data (fit once, transform both; test values may fall outside the training range)."),
        "fitted-on-all-data": (lambda: both(ref, fit_on=X), "the statistics were fitted on training and test data together "
                               "(leakage); fit on the training data only."),
    }
    mistakes.update({name: (lambda f=f: both(f), text) for name, (f, text) in wrong.items()})
    try:
        stats = fit(Xtr.copy())
    except NotImplementedError:
        raise CheckFailed("your fit function is not implemented yet (it raised NotImplementedError)", "not-implemented") from None
    constant = CheckFailed("a constant feature must map to 0: guard the division by its zero spread "
                           "(for example np.where(spread == 0, 1, spread))", "constant-feature")
    try:
        got_tr = _plain(_call(transform, Xtr, stats, what="your transform"), what="the scaled training data", shape=Xtr.shape)
        got_te = _plain(_call(transform, Xte, stats, what="your transform"), what="the scaled test data", shape=Xte.shape)
    except CheckFailed as failure:
        if failure.mistake == "not-finite":
            raise constant from None
        raise
    if not _close(got_tr[:, -1], np.zeros(n_train)):
        raise constant
    _compare(np.concatenate([got_tr, got_te]), both(ref), "the scaled training and test data", mistakes)


# --------------------------------------------------- numerical gradient ---
def _probe(x):
    """A smooth function whose outputs couple all inputs: f(x) = sin(x) * sum(x**2)."""
    return np.sin(x) * np.sum(x**2)


def check_numerical_gradient(fn, *, seed: int = 0) -> None:
    """Check ``fn(f, x, dout, h=1e-5) -> grad``, the central-difference gradient
    of ``sum(f(x) * dout)`` with respect to ``x`` (equation ``grad-central``).

    The reference is :func:`bnlib.numerical_gradient` with the same ``h``, so a
    right answer agrees to rounding error, and a forward difference (error of
    order ``h``) does not.
    """
    r = np.random.default_rng(40_000 + seed)
    shape = (int(r.integers(2, 4)), int(r.integers(2, 4)))
    x = r.standard_normal(shape)
    dout = r.standard_normal(shape)
    h = float(r.choice([1e-4, 1e-5]))
    ref = numerical_gradient(_probe, x.copy(), dout, h=h)
    got = _plain(_call(fn, _probe, x, dout, what="your numerical_gradient", h=h), what="the numerical gradient", shape=shape)

    def one_sided(step_sign):
        g = np.zeros_like(x)
        base = np.sum(_probe(x) * dout)
        for i in np.ndindex(shape):
            xp = x.copy()
            xp[i] += step_sign * h
            g[i] = step_sign * (np.sum(_probe(xp) * dout) - base) / h
        return g

    if not _close(got, ref, rtol=1e-6, atol=1e-7):
        _compare(got, ref, "the numerical gradient", {
            "forward-difference": (lambda: one_sided(+1), "this is a one-sided (forward) difference "
                                   "(f(x+h) - f(x)) / h, whose error is of order h; use the central difference "
                                   "(f(x+h) - f(x-h)) / (2h), whose error is of order h**2."),
            "backward-difference": (lambda: one_sided(-1), "this is a one-sided (backward) difference; use the central difference."),
            "divided-by-h": (lambda: 2 * ref, "the central difference is divided by h; divide by 2h."),
            "ignores-dout": (lambda: numerical_gradient(_probe, x.copy(), np.ones(shape), h=h),
                             "dout is ignored: the gradient is that of sum(f(x) * dout), so weight f's outputs by dout."),
        })

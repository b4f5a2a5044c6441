"""The exercise checkers pass a right answer and name each realistic wrong one.

A checker that cannot fail is a defect: every diagnosis in the catalog is
triggered here by the mistake it describes, on several seeds (shapes and
values differ per seed), and a right answer passes on all of them.
"""

import numpy as np
import pytest

from bncheck.probes import CheckFailed, check_backward, check_forward, check_running_layer, check_scaler

SEEDS = range(4)


# ---------------------------------------------------------------- forward --
def _stats(x, axes):
    return x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)


def _affine(x, g, b):
    shp = (1, -1) + (1,) * (x.ndim - 2)
    return g.reshape(shp), b.reshape(shp)


def _red(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def fwd_right(x, gamma, beta, eps):
    mu, var = _stats(x, _red(x))
    g, b = _affine(x, gamma, beta)
    return g * (x - mu) / np.sqrt(var + eps) + b


def fwd_unbiased(x, gamma, beta, eps):
    mu = x.mean(axis=_red(x), keepdims=True)
    var = x.var(axis=_red(x), keepdims=True, ddof=1) if x.ndim == 2 else None
    g, b = _affine(x, gamma, beta)
    return g * (x - mu) / np.sqrt(var + eps) + b


def fwd_eps_outside(x, gamma, beta, eps):
    mu, var = _stats(x, _red(x))
    g, b = _affine(x, gamma, beta)
    return g * (x - mu) / (np.sqrt(var) + eps) + b


def fwd_feature_axis(x, gamma, beta, eps):
    mu, var = _stats(x, (1,))
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def fwd_batch_axis_only(x, gamma, beta, eps):
    mu, var = _stats(x, (0,))
    g, b = _affine(x, gamma, beta)
    return g * (x - mu) / np.sqrt(var + eps) + b


def fwd_no_affine(x, gamma, beta, eps):
    mu, var = _stats(x, _red(x))
    return (x - mu) / np.sqrt(var + eps)


def fwd_in_place(x, gamma, beta, eps):
    mu, var = _stats(x, _red(x))
    g, b = _affine(x, gamma, beta)
    x -= mu
    return g * x / np.sqrt(var + eps) + b


class AlwaysEqual:
    def __eq__(self, other):
        return True

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("a checker must not ask a foreign object for its values")


@pytest.mark.parametrize("layout", ["ND", "NCHW"])
@pytest.mark.parametrize("seed", SEEDS)
def test_right_forward_passes(seed, layout):
    check_forward(fwd_right, seed=seed, layout=layout)


@pytest.mark.parametrize(
    "wrong, layout, mistake",
    [
        (fwd_unbiased, "ND", "unbiased-variance"),
        (fwd_eps_outside, "ND", "eps-outside-sqrt"),
        (fwd_eps_outside, "NCHW", "eps-outside-sqrt"),
        (fwd_feature_axis, "ND", "statistics-over-features"),
        (fwd_batch_axis_only, "NCHW", "statistics-over-batch-only"),
        (fwd_no_affine, "ND", "no-gamma-beta"),
        (fwd_in_place, "ND", "modified-input"),
        (lambda *a: AlwaysEqual(), "ND", "not-an-array"),
        (lambda *a: None, "ND", "returned-none"),
        (lambda x, *a: np.zeros(x.shape, dtype=int), "ND", "wrong-dtype"),
        (lambda x, *a: np.zeros(x.shape[::-1]), "ND", "wrong-shape"),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", "fn"),
)
@pytest.mark.parametrize("seed", SEEDS)
def test_wrong_forward_is_diagnosed(wrong, layout, mistake, seed):
    with pytest.raises(CheckFailed) as info:
        check_forward(wrong, seed=seed, layout=layout)
    assert info.value.mistake == mistake, str(info.value)


def test_forward_message_says_what_to_do():
    with pytest.raises(CheckFailed, match=r"divided by n-1 = \d+\). Batch norm divides by n = \d+"):
        check_forward(fwd_unbiased, seed=0)


# --------------------------------------------------------------- backward --
def _parts(x, gamma, eps):
    inv = 1.0 / np.sqrt(x.var(axis=0) + eps)
    return (x - x.mean(axis=0)) * inv, gamma * inv


def bwd_right(dout, x, gamma, eps):
    xhat, k = _parts(x, gamma, eps)
    return k * (dout - dout.mean(0) - xhat * (dout * xhat).mean(0)), (dout * xhat).sum(0), dout.sum(0)


def bwd_no_mean_path(dout, x, gamma, eps):
    xhat, k = _parts(x, gamma, eps)
    return k * (dout - xhat * (dout * xhat).mean(0)), (dout * xhat).sum(0), dout.sum(0)


def bwd_no_var_path(dout, x, gamma, eps):
    xhat, k = _parts(x, gamma, eps)
    return k * (dout - dout.mean(0)), (dout * xhat).sum(0), dout.sum(0)


def bwd_dgamma_not_summed(dout, x, gamma, eps):
    dx, _, dbeta = bwd_right(dout, x, gamma, eps)
    return dx, dout * _parts(x, gamma, eps)[0], dbeta


def bwd_swapped(dout, x, gamma, eps):
    dx, dgamma, dbeta = bwd_right(dout, x, gamma, eps)
    return dx, dbeta, dgamma


@pytest.mark.parametrize("seed", SEEDS)
def test_right_backward_passes(seed):
    check_backward(bwd_right, seed=seed)


@pytest.mark.parametrize(
    "wrong, mistake",
    [
        (bwd_no_mean_path, "missing-mean-path"),
        (bwd_no_var_path, "missing-variance-path"),
        (bwd_dgamma_not_summed, "wrong-shape"),
        (bwd_swapped, "dbeta-dgamma-swapped"),
        (lambda dout, *a: dout, "wrong-return"),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", "fn"),
)
@pytest.mark.parametrize("seed", SEEDS)
def test_wrong_backward_is_diagnosed(wrong, mistake, seed):
    with pytest.raises(CheckFailed) as info:
        check_backward(wrong, seed=seed)
    assert info.value.mistake == mistake, str(info.value)


# ------------------------------------------------------ running statistics --
class Layer:
    """A learner's layer with switchable mistakes."""

    def __init__(self, C, momentum, eps, convention, mistake=None):
        self.m, self.eps, self.conv, self.mistake = momentum, eps, convention, mistake
        self.running_mean, self.running_var = np.zeros(C), np.ones(C)

    def __call__(self, x, training):
        red = tuple(i for i in range(x.ndim) if i != 1)
        shp = (1, -1) + (1,) * (x.ndim - 2)
        if training or self.mistake == "batch-stats-in-inference":
            mu, var = x.mean(red), x.var(red)
        else:
            mu, var = self.running_mean, self.running_var
        if training or self.mistake == "updated-in-inference":
            self._update(x, x.mean(red), x.var(red))
        return (x - mu.reshape(shp)) / np.sqrt(var.reshape(shp) + self.eps)

    def _update(self, x, mu, var):
        if self.mistake == "not-updated":
            return
        w = self.m if self.conv == "torch" else 1 - self.m
        if self.mistake == "momentum-flipped":
            w = 1 - w
        n = x.size // x.shape[1]
        if (self.conv == "torch") != (self.mistake == "bessel-flipped"):
            var = var * (x.shape[0] / (x.shape[0] - 1) if self.mistake == "bessel-with-N" else n / (n - 1))
        self.running_mean = (1 - w) * self.running_mean + w * mu
        self.running_var = (1 - w) * self.running_var + w * var


def layer_with(mistake):
    return lambda C, momentum, eps, convention: Layer(C, momentum, eps, convention, mistake)


@pytest.mark.parametrize("convention", ["torch", "keras"])
@pytest.mark.parametrize("seed", SEEDS)
def test_right_layer_passes(seed, convention):
    check_running_layer(layer_with(None), convention=convention, seed=seed)


@pytest.mark.parametrize(
    "mistake, convention",
    [
        ("not-updated", "torch"),
        ("not-updated", "keras"),
        ("momentum-flipped", "torch"),
        ("momentum-flipped", "keras"),
        ("bessel-flipped", "torch"),
        ("bessel-flipped", "keras"),
        ("bessel-with-N", "torch"),
        ("batch-stats-in-inference", "torch"),
        ("updated-in-inference", "keras"),
    ],
)
@pytest.mark.parametrize("seed", SEEDS)
def test_wrong_layer_is_diagnosed(mistake, convention, seed):
    with pytest.raises(CheckFailed) as info:
        check_running_layer(layer_with(mistake), convention=convention, seed=seed)
    assert info.value.mistake == mistake, str(info.value)


# ---------------------------------------------------------------- scalers --
def std_fit(X, ddof=0):
    return X.mean(axis=0), X.std(axis=0, ddof=ddof)


def std_transform(X, stats):
    m, s = stats
    return (X - m) / np.where(s == 0, 1.0, s)


def mm_fit(X):
    return X.min(axis=0), X.max(axis=0)


def mm_transform(X, stats):
    lo, hi = stats
    return (X - lo) / np.where(hi == lo, 1.0, hi - lo)


@pytest.mark.parametrize("seed", SEEDS)
def test_right_scalers_pass(seed):
    check_scaler(std_fit, std_transform, kind="standard", seed=seed)
    check_scaler(mm_fit, mm_transform, kind="minmax", seed=seed)


def refit_on_input(fit, transform):
    return lambda X, stats: transform(X, fit(X))


@pytest.mark.parametrize(
    "fit, transform, kind, mistake",
    [
        (std_fit, refit_on_input(std_fit, std_transform), "standard", "fitted-on-test-data"),
        (lambda X: std_fit(X, ddof=1), std_transform, "standard", "unbiased-std"),
        (mm_fit, refit_on_input(mm_fit, mm_transform), "minmax", "fitted-on-test-data"),
        (mm_fit, lambda X, s: (X - s[0]) / (s[1] - s[0]), "minmax", "constant-feature"),
    ],
)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_wrong_scaler_is_diagnosed(fit, transform, kind, mistake, seed):
    with pytest.raises(CheckFailed) as info:
        check_scaler(fit, transform, kind=kind, seed=seed)
    assert info.value.mistake == mistake, str(info.value)


# ----------------------------------------------------- numerical gradient --
def ng_right(f, x, dout, h=1e-5):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = np.sum(f(x) * dout)
        x[i] = old - h
        minus = np.sum(f(x) * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def ng_forward(f, x, dout, h=1e-5):
    grad = np.zeros_like(x)
    base = np.sum(f(x) * dout)
    for i in np.ndindex(x.shape):
        xp = x.copy()
        xp[i] += h
        grad[i] = (np.sum(f(xp) * dout) - base) / h
    return grad


def ng_not_restored(f, x, dout, h=1e-5):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        x[i] += h
        plus = np.sum(f(x) * dout)
        x[i] -= 2 * h
        grad[i] = (plus - np.sum(f(x) * dout)) / (2 * h)
    return grad


def ng_by_h(f, x, dout, h=1e-5):
    return 2 * ng_right(f, x, dout, h)


@pytest.mark.parametrize("seed", SEEDS)
def test_right_numerical_gradient_passes(seed):
    from bncheck.probes import check_numerical_gradient

    check_numerical_gradient(ng_right, seed=seed)


@pytest.mark.parametrize(
    "wrong, mistake",
    [(ng_forward, "forward-difference"), (ng_not_restored, "modified-input"), (ng_by_h, "divided-by-h")],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
@pytest.mark.parametrize("seed", SEEDS)
def test_wrong_numerical_gradient_is_diagnosed(wrong, mistake, seed):
    from bncheck.probes import check_numerical_gradient

    with pytest.raises(CheckFailed) as info:
        check_numerical_gradient(wrong, seed=seed)
    assert info.value.mistake == mistake, str(info.value)


# ------------------------------ inputs changed and put back by arithmetic --
# "Left the input unchanged" allows a few units in the last place: an entry changed
# and put back by arithmetic (x[i] += h, ..., x[i] -= 2 * h, ..., x[i] += h) is off by
# rounding only, and a right answer written that way must pass. A real change (a
# float32 round trip, a shift of 1e-3, a new shape) is still caught, and the message
# names what changed.
MANY_SEEDS = range(60)


def ng_restore_by_arithmetic(f, x, dout, h=1e-5):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        x[i] += h
        plus = np.sum(f(x) * dout)
        x[i] -= 2 * h
        minus = np.sum(f(x) * dout)
        x[i] += h
        grad[i] = (plus - minus) / (2 * h)
    return grad


def ng_nditer(f, x, dout, h=1e-5):
    """The np.nditer loop of many course notes, stepping the entry up, down and back."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        x[ix] += h
        pos = np.sum(f(x) * dout)
        x[ix] -= 2 * h
        neg = np.sum(f(x) * dout)
        x[ix] += h
        grad[ix] = (pos - neg) / (2 * h)
        it.iternext()
    return grad


def ng_perturbation_array(f, x, dout, h=1e-5):
    """Vectorized: a one-hot perturbation added to the whole array, then taken away."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        x += e
        plus = np.sum(f(x) * dout)
        x -= 2 * e
        minus = np.sum(f(x) * dout)
        x += e
        grad[i] = (plus - minus) / (2 * h)
    return grad


def ng_np_add_out(f, x, dout, h=1e-5):
    """In place with ufuncs on a flat view: np.add(..., out=...) and np.subtract(..., out=...)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for j in range(flat.size):
        entry = flat[j:j + 1]
        np.add(entry, h, out=entry)
        plus = np.sum(f(x) * dout)
        np.subtract(entry, 2 * h, out=entry)
        minus = np.sum(f(x) * dout)
        np.add(entry, h, out=entry)
        gflat[j] = (plus - minus) / (2 * h)
    return grad


RESTORING = [ng_restore_by_arithmetic, ng_nditer, ng_perturbation_array, ng_np_add_out]


@pytest.mark.parametrize("answer", RESTORING, ids=lambda f: f.__name__)
def test_numerical_gradient_that_restores_x_by_arithmetic_passes_on_many_seeds(answer):
    from bncheck.probes import check_numerical_gradient

    for seed in MANY_SEEDS:
        check_numerical_gradient(answer, seed=seed)


def fwd_shift_and_restore(x, gamma, beta, eps):
    mu, var = _stats(x, _red(x))
    g, b = _affine(x, gamma, beta)
    x -= mu
    out = g * x / np.sqrt(var + eps) + b
    x += mu
    return out


@pytest.mark.parametrize("layout", ["ND", "NCHW"])
def test_forward_that_centres_x_in_place_and_restores_it_passes(layout):
    for seed in MANY_SEEDS:
        check_forward(fwd_shift_and_restore, seed=seed, layout=layout)


def ng_nudged(f, x, dout, h=1e-5):
    grad = ng_right(f, x, dout, h)
    x[0, 0] += 1e-3
    return grad


def ng_float32_round_trip(f, x, dout, h=1e-5):
    grad = ng_right(f, x, dout, h)
    x[:] = x.astype(np.float32)
    return grad


def ng_reshaped(f, x, dout, h=1e-5):
    grad = ng_right(f, x, dout, h)
    x.shape = (x.size,)
    return grad


@pytest.mark.parametrize("answer, named", [
    (ng_nudged, r"values of `x`: 1 of \d+ values changed, by up to 0\.001 \(at index \(0, 0\)"),
    (ng_float32_round_trip, r"values of `x`: \d+ of \d+ values changed, by up to \d\.\d+e-0[78]"),
    (ng_reshaped, r"`x\.shape`: expected \(\d, \d\), received \(\d+,\)"),
    (ng_not_restored, r"values of `x`: \d+ of \d+ values changed, by up to (1e-05|0\.0001) "),
], ids=lambda v: getattr(v, "__name__", "message"))
@pytest.mark.parametrize("seed", SEEDS)
def test_a_real_change_of_the_input_is_caught_and_named(answer, named, seed):
    from bncheck.probes import check_numerical_gradient

    with pytest.raises(CheckFailed, match=named) as info:
        check_numerical_gradient(answer, seed=seed)
    assert info.value.mistake == "modified-input", str(info.value)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_forward_pass_that_centres_x_in_place_names_x(seed):
    with pytest.raises(CheckFailed, match=r"your forward pass changed its input `x`: values of `x`") as info:
        check_forward(fwd_in_place, seed=seed)
    assert info.value.mistake == "modified-input"


def test_unchanged_allows_a_few_ulps_of_the_arrays_scale_keeps_nan_and_compares_dtype_exactly():
    from bncheck.probes import _call

    x = np.array([[np.nan, 1e-300], [-3.0, 4.0]])
    ulp = np.spacing(4.0)

    def off_by(k):
        def fn(a):
            a[1, 0] += k * ulp
        return fn

    _call(off_by(8), x, what="f")  # 8 ulps of the largest magnitude (4.0): rounding
    _call(off_by(-8), x, what="f")
    with pytest.raises(CheckFailed, match=r"values of `a`: 1 of 4 values changed") as info:
        _call(off_by(9), x, what="f")
    assert info.value.mistake == "modified-input"

    def fill_nan(a):
        a[0, 0] = 0.0

    with pytest.raises(CheckFailed, match=r"at index \(0, 0\): expected nan, received 0\.0"):
        _call(fill_nan, x, what="f")

    def reinterpret(a):
        a.dtype = np.int64

    with pytest.raises(CheckFailed, match=r"`a\.dtype`: expected float64, received int64"):
        _call(reinterpret, x, what="f")

    x32 = np.array([1.5, -2.25, 3.0], dtype=np.float32)

    def restore32(a):
        a += np.float32(1e-3)
        a -= np.float32(1e-3)

    _call(restore32, x32, what="f")  # float32 arithmetic, float32 units in the last place

    def to_float64_rounding(a):
        a[0] += np.float32(1e-5)

    with pytest.raises(CheckFailed, match=r"values of `a`"):
        _call(to_float64_rounding, x32, what="f")

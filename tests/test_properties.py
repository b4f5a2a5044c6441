"""Property-based tests of the functional core (hypothesis + hypothesis.extra.numpy).

Each property is written once as an ``assert_*`` helper that takes the
implementation under test as an argument. The hypothesis tests apply the
helpers to bnlib; the ``test_*_detects_*`` tests at the end apply the same
helpers to deliberately wrong implementations (unbiased variance, eps outside
the square root, no mean subtraction, a backward without the path through the
mean, statistics over the wrong axis) and check that each is caught: a
property that cannot fail would prove nothing.

Inputs: every channel is guaranteed a spread of values (see ``_spread_channels``)
so that ``var >> eps`` and the tolerances below can be stated in terms of eps.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bnlib

# ------------------------------------------------------------ strategies ----
_values = st.floats(-100.0, 100.0, allow_nan=False, allow_infinity=False, width=64)


def _spread_channels(x, axis):
    """Add a ramp of 250 per step along each channel's values.

    With entries drawn from [-100, 100], consecutive values of a channel then
    differ by at least 50, so every channel has a variance far above any eps
    used here, whatever hypothesis draws (all zeros included).
    """
    moved = np.moveaxis(x, axis, -1)
    n = moved.size // moved.shape[-1]
    ramp = 250.0 * np.arange(n).reshape(moved.shape[:-1] + (1,))
    return np.moveaxis(moved + ramp, -1, axis)


@st.composite
def batches(draw, min_rank=2, max_rank=4, max_side=4, spread=True):
    """``(x, gamma, beta, axis)``: float64 x of rank 2-4, feature axis 1 or -1,
    at least 2 values per channel, non-trivial gamma (either sign) and beta."""
    shape = draw(hnp.array_shapes(min_dims=min_rank, max_dims=max_rank, min_side=1, max_side=max_side))
    if shape[0] == 1:  # at least two values per channel: N >= 2
        shape = (2,) + shape[1:]
    axis = draw(st.sampled_from([1, -1]))
    x = draw(hnp.arrays(np.float64, shape, elements=_values, fill=st.nothing()))
    if spread:
        x = _spread_channels(x, axis)
    C = shape[axis]
    magnitude = st.floats(0.1, 10.0)
    sign = st.sampled_from([-1.0, 1.0])
    gamma = np.array(draw(st.lists(st.tuples(sign, magnitude), min_size=C, max_size=C)))
    gamma = gamma[:, 0] * gamma[:, 1]
    beta = draw(hnp.arrays(np.float64, (C,), elements=st.floats(-50.0, 50.0), fill=st.nothing()))
    return x, gamma, beta, axis


def _reduce_axes(ndim, axis):
    return tuple(i for i in range(ndim) if i != axis % ndim)


def _channel_col(v, ndim, axis):
    """A (C,) vector shaped to broadcast against an input with features on ``axis``."""
    shape = [1] * ndim
    shape[axis % ndim] = v.size
    return v.reshape(shape)


# -------------------------------------------------------------- helpers ----
def assert_dx_sums_to_zero(backward, x, gamma, beta, dout, *, axis, eps=1e-5, forward=bnlib.batchnorm_forward):
    """Per feature, sum(dx) == 0 (the output is invariant to adding a constant to x)."""
    _, cache = forward(x, gamma, beta, axis=axis, eps=eps)
    dx, _, _ = backward(dout, cache)
    sums = dx.sum(axis=_reduce_axes(x.ndim, axis))
    # each entry of dx is at most |k| * 3 * max|dout| * (1 + max|xhat|); rounding is 1e-12 of that
    k = np.abs(np.asarray(cache.gamma) * np.asarray(cache.inv_std))
    bound = 1e-12 * x.size * k * np.abs(dout).max() * (1 + np.abs(cache.xhat).max())
    assert np.all(np.abs(sums) <= bound), f"per-feature sum of dx is {sums}, expected 0 within {bound}"


def assert_scale_shift_invariant(forward, x, gamma, beta, scale, shift, *, axis, eps=1e-12):
    """BN(a*x + b) == BN(x) per feature for a > 0, up to an eps effect of at most eps/var."""
    ndim = x.ndim
    y = x * _channel_col(scale, ndim, axis) + _channel_col(shift, ndim, axis)
    out_x, _ = forward(x, gamma, beta, axis=axis, eps=eps)
    out_y, _ = forward(y, gamma, beta, axis=axis, eps=eps)
    var = x.var(axis=_reduce_axes(ndim, axis))
    # |xhat(y) - xhat(x)| <= |xhat| * eps / min(var, a^2 var) / 2, and rounding of x + b
    eps_effect = eps / np.minimum(var, scale**2 * var)
    rounding = 1e-14 * (np.abs(x).max() + np.abs(shift / scale).max()) / np.sqrt(var)
    tol = np.abs(gamma) * (eps_effect + rounding) * (1 + np.sqrt(x.size))
    diff = np.abs(out_y - out_x).max(axis=_reduce_axes(ndim, axis))
    assert np.all(diff <= tol), f"BN(a*x+b) - BN(x) per feature is {diff}, expected <= {tol}"


def assert_output_moments(forward, x, gamma, beta, *, axis, eps):
    """Per feature, mean(out) == beta and biased std(out) == |gamma| * sqrt(var / (var + eps))."""
    out, _ = forward(x, gamma, beta, axis=axis, eps=eps)
    axes = _reduce_axes(x.ndim, axis)
    var = x.var(axis=axes)
    expected_std = np.abs(gamma) * np.sqrt(var / (var + eps))
    np.testing.assert_allclose(out.mean(axis=axes), beta, rtol=0, atol=1e-10 * (np.abs(beta) + np.abs(gamma)).max())
    np.testing.assert_allclose(out.std(axis=axes), expected_std, rtol=1e-9, atol=0)


def assert_gradient_checks(backward, x, gamma, beta, *, axis, eps=1e-5, tol=1e-6):
    """Analytic dx, dgamma, dbeta agree with central differences (relative error < tol)."""
    errors = bnlib.gradcheck_batchnorm(x, gamma, beta, axis=axis, eps=eps, backward=backward)
    assert max(errors.values()) < tol, f"gradient check relative errors {errors}, expected all < {tol}"


def assert_staged_equals_closed_form(staged, closed, x, gamma, beta, dout, *, axis, eps=1e-5):
    """The node-by-node backward equals the closed form to 1e-10 (float64)."""
    _, cache = bnlib.batchnorm_forward(x, gamma, beta, axis=axis, eps=eps)
    # natural scales: dx ~ |gamma| * inv_std * |dout| (it is exactly 0 for two values per
    # channel, where only an absolute tolerance makes sense); dgamma, dbeta ~ sum |dout| * |xhat|
    g_scale = np.abs(dout).sum() * (1 + np.abs(cache.xhat).max())
    scales = {"dx": np.abs(cache.gamma * cache.inv_std).max() * np.abs(dout).max(), "dgamma": g_scale, "dbeta": g_scale}
    for name, a, b in zip(("dx", "dgamma", "dbeta"), staged(dout, cache), closed(dout, cache)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * scales[name], err_msg=name)


def assert_inference_with_batch_stats_equals_training(forward, inference, x, gamma, beta, *, axis, eps=1e-5):
    """Inference with running stats = the batch's own (biased) stats gives the training output."""
    out, _ = forward(x, gamma, beta, axis=axis, eps=eps)
    mean, var, _ = bnlib.batch_statistics(x, axis=axis)
    out_inf = inference(x, gamma, beta, mean, var, axis=axis, eps=eps)
    scale = (np.abs(gamma).max() + np.abs(beta).max()) * np.abs(out).max()
    np.testing.assert_allclose(out_inf, out, rtol=1e-10, atol=1e-12 * scale)


# ------------------------------------------------------ properties of bnlib ----
@given(batches(), st.integers(0, 2**32 - 1))
def test_per_feature_sum_of_dx_is_zero(batch, seed):
    x, gamma, beta, axis = batch
    dout = np.random.default_rng(seed).standard_normal(x.shape)
    assert_dx_sums_to_zero(bnlib.batchnorm_backward, x, gamma, beta, dout, axis=axis)


@given(batches(), st.integers(0, 2**32 - 1))
def test_per_feature_sum_of_dx_is_zero_for_the_staged_backward(batch, seed):
    x, gamma, beta, axis = batch
    dout = np.random.default_rng(seed).standard_normal(x.shape)
    assert_dx_sums_to_zero(bnlib.batchnorm_backward_staged, x, gamma, beta, dout, axis=axis)


@given(batches(), st.data())
def test_forward_is_invariant_to_positive_scaling_and_shifting_per_feature(batch, data):
    x, gamma, beta, axis = batch
    C = x.shape[axis]
    scale = data.draw(hnp.arrays(np.float64, (C,), elements=st.floats(0.01, 100.0), fill=st.nothing()))
    shift = data.draw(hnp.arrays(np.float64, (C,), elements=st.floats(-1e4, 1e4), fill=st.nothing()))
    assert_scale_shift_invariant(bnlib.batchnorm_forward, x, gamma, beta, scale, shift, axis=axis)


@given(batches(), st.sampled_from([1e-12, 1e-5, 1e-3, 1.0]))
def test_output_mean_is_beta_and_biased_std_is_abs_gamma_up_to_eps(batch, eps):
    x, gamma, beta, axis = batch
    assert_output_moments(bnlib.batchnorm_forward, x, gamma, beta, axis=axis, eps=eps)


@given(batches(max_side=3))
def test_gradient_check_passes_on_small_shapes_of_rank_2_to_4(batch):
    x, gamma, beta, axis = batch
    # values scaled down to the range of activations (mean ~ 12, std ~ 5 per channel after scaling)
    x = 12.0 + 5.0 * (x - x.mean()) / x.std()
    assert_gradient_checks(bnlib.batchnorm_backward, x, gamma, beta, axis=axis)


@given(batches(), st.integers(0, 2**32 - 1), st.sampled_from([1e-12, 1e-5, 1e-3]))
def test_staged_backward_equals_closed_form_to_1e_10(batch, seed, eps):
    x, gamma, beta, axis = batch
    dout = np.random.default_rng(seed).standard_normal(x.shape)
    assert_staged_equals_closed_form(
        bnlib.batchnorm_backward_staged, bnlib.batchnorm_backward, x, gamma, beta, dout, axis=axis, eps=eps
    )


@given(batches(), st.sampled_from([1e-5, 1e-3]))
def test_inference_with_the_batch_statistics_equals_training_output(batch, eps):
    x, gamma, beta, axis = batch
    assert_inference_with_batch_stats_equals_training(
        bnlib.batchnorm_forward, bnlib.batchnorm_inference, x, gamma, beta, axis=axis, eps=eps
    )


# ------------------------------------------------- the helpers are sharp ----
def _forward_with(normalize):
    """A (wrong) forward built from a per-channel ``normalize(xc, var, eps, n)``."""

    def forward(x, gamma, beta, *, axis, eps):
        axes = _reduce_axes(x.ndim, axis)
        n = x.size // x.shape[axis]
        xc = x - x.mean(axis=axes, keepdims=True)
        var = (xc**2).sum(axis=axes, keepdims=True) / n
        xhat = normalize(xc, var, eps, n)
        return _channel_col(gamma, x.ndim, axis) * xhat + _channel_col(beta, x.ndim, axis), None

    return forward


_right_forward = _forward_with(lambda xc, var, eps, n: xc / np.sqrt(var + eps))
_unbiased_forward = _forward_with(lambda xc, var, eps, n: xc / np.sqrt(var * n / (n - 1) + eps))
_eps_outside_sqrt_forward = _forward_with(lambda xc, var, eps, n: xc / (np.sqrt(var) + eps))


def _no_centering_forward(x, gamma, beta, *, axis, eps):
    axes = _reduce_axes(x.ndim, axis)
    xhat = x / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    return _channel_col(gamma, x.ndim, axis) * xhat + _channel_col(beta, x.ndim, axis), None


def _wrong_axis_forward(x, gamma, beta, *, axis, eps):
    """Statistics over the feature axis instead of the batch (a layer-norm-like mistake)."""
    m = x.mean(axis=axis, keepdims=True)
    v = x.var(axis=axis, keepdims=True)
    return _channel_col(gamma, x.ndim, axis) * (x - m) / np.sqrt(v + eps) + _channel_col(beta, x.ndim, axis), None


def _backward_without_mean_path(dout, cache):
    """dx = k * (g - xhat * mean(g * xhat)): forgets the -mean(g) term from the path through mu."""
    dx, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
    ax = cache.axis
    n = dout.size // dout.shape[ax]
    k = _channel_col(cache.gamma * cache.inv_std, dout.ndim, ax)
    return dx + k * _channel_col(dbeta / n, dout.ndim, ax), dgamma, dbeta


def _backward_without_variance_path(dout, cache):
    """dx = k * (g - mean(g)): treats the variance as a constant."""
    _, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
    ax = cache.axis
    n = dout.size // dout.shape[ax]
    k = _channel_col(cache.gamma * cache.inv_std, dout.ndim, ax)
    return k * (dout - _channel_col(dbeta / n, dout.ndim, ax)), dgamma, dbeta


def _backward_with_dgamma_not_summed(dout, cache):
    """dgamma from the first example only, not summed over the batch."""
    dx, _, dbeta = bnlib.batchnorm_backward(dout, cache)
    dgamma = (dout[:1] * cache.xhat[:1]).sum(axis=_reduce_axes(dout.ndim, cache.axis))
    return dx, dgamma, dbeta


@pytest.fixture
def activations(rng):
    """A small (N, C, H, W) batch like real activations, with non-trivial gamma and beta."""
    x = 12.0 + 5.0 * rng.standard_normal((3, 2, 2, 2))
    return x, np.array([1.5, -0.7]), np.array([0.3, -2.0])


def test_the_right_reference_forward_passes_the_properties_the_wrong_ones_fail(activations):
    x, gamma, beta = activations
    assert_output_moments(_right_forward, x, gamma, beta, axis=1, eps=1e-3)
    assert_scale_shift_invariant(_right_forward, 20 * x, gamma, beta, np.array([10.0, 10.0]), np.zeros(2), axis=1, eps=1e-2)
    assert_scale_shift_invariant(_right_forward, x, gamma, beta, np.ones(2), np.array([3.0, -1.0]), axis=1)


@pytest.mark.parametrize(
    "wrong_forward",
    [_unbiased_forward, _eps_outside_sqrt_forward, _wrong_axis_forward],
    ids=["unbiased-variance", "eps-outside-sqrt", "statistics-over-wrong-axis"],
)
def test_moment_property_detects_a_wrong_forward(activations, wrong_forward):
    x, gamma, beta = activations
    with pytest.raises(AssertionError):
        assert_output_moments(wrong_forward, x, gamma, beta, axis=1, eps=1e-3)


def test_shift_invariance_property_detects_a_forward_without_centering(activations):
    x, gamma, beta = activations
    with pytest.raises(AssertionError):
        assert_scale_shift_invariant(_no_centering_forward, x, gamma, beta, np.ones(2), np.array([3.0, -1.0]), axis=1)


def test_scale_invariance_property_detects_eps_outside_sqrt_with_a_large_eps(activations):
    x, gamma, beta = activations
    with pytest.raises(AssertionError):
        # var ~ 1e4: a correct forward moves by < eps / var = 1e-6 relative, this one by ~ eps / std = 1e-4
        assert_scale_shift_invariant(
            _eps_outside_sqrt_forward, 20 * x, gamma, beta, np.array([10.0, 10.0]), np.zeros(2), axis=1, eps=1e-2
        )


def test_zero_sum_property_detects_a_backward_without_the_path_through_the_mean(activations, rng):
    x, gamma, beta = activations
    dout = rng.standard_normal(x.shape)
    with pytest.raises(AssertionError):
        assert_dx_sums_to_zero(_backward_without_mean_path, x, gamma, beta, dout, axis=1)


@pytest.mark.parametrize(
    "wrong_backward",
    [_backward_without_mean_path, _backward_without_variance_path, _backward_with_dgamma_not_summed],
    ids=["no-mean-path", "no-variance-path", "dgamma-not-summed-over-batch"],
)
def test_gradient_check_property_detects_a_wrong_backward(activations, wrong_backward):
    x, gamma, beta = activations
    with pytest.raises(AssertionError):
        assert_gradient_checks(wrong_backward, x, gamma, beta, axis=1)


def test_staged_equals_closed_form_property_detects_a_wrong_backward(activations, rng):
    x, gamma, beta = activations
    dout = rng.standard_normal(x.shape)
    with pytest.raises(AssertionError):
        assert_staged_equals_closed_form(
            _backward_without_variance_path, bnlib.batchnorm_backward, x, gamma, beta, dout, axis=1
        )


def test_inference_property_detects_inference_with_unbiased_running_variance(activations):
    x, gamma, beta = activations

    def inference_unbiased(x, gamma, beta, mean, var, *, axis, eps):
        n = x.size // x.shape[axis]
        return bnlib.batchnorm_inference(x, gamma, beta, mean, var * n / (n - 1), axis=axis, eps=eps)

    with pytest.raises(AssertionError):
        assert_inference_with_batch_stats_equals_training(
            bnlib.batchnorm_forward, inference_unbiased, x, gamma, beta, axis=1
        )

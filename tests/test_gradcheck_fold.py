"""Numerical gradient checking and batch-norm folding (chapters 3 and 6)."""

import numpy as np
import pytest

import bnlib

# ---------------------------------------------------------- rel_error ----


def test_rel_error_of_an_array_with_itself_is_zero(rng):
    a = rng.standard_normal((3, 4))
    assert bnlib.rel_error(a, a) == 0.0


def test_rel_error_is_symmetric_and_between_zero_and_one(rng):
    for _ in range(20):
        a, b = rng.standard_normal(5), 3 * rng.standard_normal(5)
        e = bnlib.rel_error(a, b)
        assert e == bnlib.rel_error(b, a)
        assert 0.0 < e <= 1.0


def test_rel_error_of_opposite_arrays_is_one(rng):
    a = rng.standard_normal(6)
    assert bnlib.rel_error(a, -a) == pytest.approx(1.0, abs=1e-15)


def test_rel_error_is_invariant_to_a_common_scale(rng):
    a, b = rng.standard_normal(6), rng.standard_normal(6)
    assert bnlib.rel_error(1e3 * a, 1e3 * b) == pytest.approx(bnlib.rel_error(a, b), rel=1e-12)


def test_rel_error_is_a_norm_ratio_not_an_elementwise_maximum():
    a, b = np.array([1.0, 1e-12]), np.array([1.0, 2e-12])
    # element-wise |a-b| / (|a|+|b|) would be 1/3 at the tiny entry; the norm ratio is tiny
    assert bnlib.rel_error(a, b) == pytest.approx(1e-12 / 2, rel=1e-6)


def test_rel_error_of_tiny_arrays_is_floored_so_noise_around_zero_is_not_amplified():
    a, b = np.array([1e-12, 0.0]), np.array([-1e-12, 0.0])
    assert bnlib.rel_error(a, b) == pytest.approx(2e-12 / 1e-8)
    assert bnlib.rel_error(a, b, floor=1.0) == pytest.approx(2e-12)


def test_rel_error_of_empty_arrays_is_zero():
    assert bnlib.rel_error(np.empty(0), np.empty(0)) == 0.0


# ------------------------------------------------- numerical_gradient ----


def test_numerical_gradient_of_a_square_is_two_x_times_dout(rng):
    x, dout = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    grad = bnlib.numerical_gradient(lambda v: v**2, x, dout)
    # central differences are exact for a quadratic, up to rounding ~ 1e-16 / h
    np.testing.assert_allclose(grad, 2 * x * dout, rtol=0, atol=1e-9)


def test_numerical_gradient_of_a_function_mixing_entries(rng):
    """f(x) = sin(x) * sum(x): each output depends on every input."""
    x, dout = rng.standard_normal(5), rng.standard_normal(5)
    grad = bnlib.numerical_gradient(lambda v: np.sin(v) * v.sum(), x, dout)
    expected = np.cos(x) * x.sum() * dout + np.sum(np.sin(x) * dout)
    assert bnlib.rel_error(grad, expected) < 1e-9


def test_numerical_gradient_restores_x_after_perturbing_it_in_place(rng):
    x = rng.standard_normal((2, 3))
    before = x.copy()
    bnlib.numerical_gradient(lambda v: np.exp(v), x, np.ones_like(x))
    np.testing.assert_array_equal(x, before)


# -------------------------------------------------- gradcheck_batchnorm ----
@pytest.fixture
def activations(rng):
    """(N, C, H, W) activations like a learner's, with non-trivial gamma and beta."""
    x = 12.0 + 5.0 * rng.standard_normal((3, 2, 2, 2))
    return x, np.array([1.7, -0.6]), np.array([0.4, -1.3])


def _without_mean_path(dout, cache):
    """A realistic wrong backward: forgets the -mean(g) term that flows through mu."""
    xhat, k = cache.xhat, (cache.gamma * cache.inv_std)[None, :, None, None]
    dbeta = dout.sum(axis=(0, 2, 3))
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    n = dout.size // dout.shape[1]
    dx = k * (dout - xhat * (dgamma / n)[None, :, None, None])
    return dx, dgamma, dbeta


def _without_variance_path(dout, cache):
    """Another one: treats the variance as a constant."""
    dx, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
    n = dout.size // dout.shape[1]
    k = (cache.gamma * cache.inv_std)[None, :, None, None]
    return k * (dout - (dbeta / n)[None, :, None, None]), dgamma, dbeta


@pytest.mark.parametrize("backward", [bnlib.batchnorm_backward, bnlib.batchnorm_backward_staged], ids=["closed", "staged"])
def test_gradcheck_accepts_the_right_backward(activations, backward):
    x, gamma, beta = activations
    errors = bnlib.gradcheck_batchnorm(x, gamma, beta, backward=backward)
    assert set(errors) == {"dx", "dgamma", "dbeta"}
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("wrong", [_without_mean_path, _without_variance_path], ids=["no-mean-path", "no-variance-path"])
def test_gradcheck_catches_a_backward_that_misses_a_path(activations, wrong):
    x, gamma, beta = activations
    errors = bnlib.gradcheck_batchnorm(x, gamma, beta, backward=wrong)
    assert errors["dx"] > 1e-2, errors  # far above the 1e-4 'almost certainly wrong' line
    assert errors["dgamma"] < 1e-7 and errors["dbeta"] < 1e-7  # and it tells which gradient is wrong


def test_gradcheck_catches_swapped_dgamma_and_dbeta(activations):
    x, gamma, beta = activations

    def swapped(dout, cache):
        dx, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
        return dx, dbeta, dgamma

    errors = bnlib.gradcheck_batchnorm(x, gamma, beta, backward=swapped)
    assert errors["dgamma"] > 1e-2 and errors["dbeta"] > 1e-2 and errors["dx"] < 1e-7


def test_gradcheck_reports_inf_for_a_gradient_of_the_wrong_shape(activations):
    x, gamma, beta = activations

    def per_example_dgamma(dout, cache):
        dx, _, dbeta = bnlib.batchnorm_backward(dout, cache)
        return dx, (dout * cache.xhat).sum(axis=(2, 3)), dbeta  # (N, C), not summed over the batch

    assert bnlib.gradcheck_batchnorm(x, gamma, beta, backward=per_example_dgamma)["dgamma"] == float("inf")


def test_gradcheck_uses_the_given_dout(activations, rng):
    x, gamma, beta = activations
    dout = rng.standard_normal(x.shape)
    seen = []

    def spy(d, cache):
        seen.append(d.copy())
        return bnlib.batchnorm_backward(d, cache)

    bnlib.gradcheck_batchnorm(x, gamma, beta, dout, backward=spy)
    np.testing.assert_array_equal(seen[0], dout)


def test_gradcheck_accepts_a_correct_backward_on_a_batch_of_two_with_a_large_beta(rng):
    """With two values per channel dx is exactly 0 and both gradients are rounding noise;
    the noise of the numerical one grows with |out| (here beta = 1000). The check must not
    call the correct backward wrong, and must still catch a wrong one. (Before dx's error was
    floored at its natural scale, ||gamma / sqrt(var + eps) * dout||, it reported 1e-6 here
    and 4e-4 on other draws, above the 1e-4 'wrong' line.)"""
    x = 12.0 + 5.0 * rng.standard_normal((2, 4))
    gamma, beta = np.ones(4), np.full(4, 1000.0)
    assert max(bnlib.gradcheck_batchnorm(x, gamma, beta).values()) < 1e-7

    def no_mean_path(dout, cache):
        dx, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
        return dx + cache.gamma * cache.inv_std * dbeta / 2, dgamma, dbeta

    assert bnlib.gradcheck_batchnorm(x, gamma, beta, backward=no_mean_path)["dx"] > 1e-2


# ------------------------------------------------------ fold_batchnorm ----
@pytest.fixture
def bn_stats(rng):
    """Non-trivial inference-mode statistics for 3 output channels."""
    return dict(
        gamma=rng.uniform(0.5, 2.0, 3) * np.array([1.0, -1.0, 1.0]),
        beta=rng.standard_normal(3),
        running_mean=rng.standard_normal(3),
        running_var=rng.uniform(0.1, 3.0, 3),
    )


def _conv2d_nchw(x, w, b):
    """Valid 2-D cross-correlation, stride 1: x (N, I, H, W), w (O, I, kH, kW) -> (N, O, H', W')."""
    kh, kw = w.shape[2:]
    patches = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))  # (N, I, H', W', kH, kW)
    return np.einsum("nihwkl,oikl->nohw", patches, w) + b[None, :, None, None]


def test_the_explicit_convolution_matches_a_hand_computed_value():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])  # x[i, j] - x[i+1, j+1] = -5 everywhere
    np.testing.assert_array_equal(_conv2d_nchw(x, w, np.array([0.5])), np.full((1, 1, 3, 3), -4.5))


def test_folded_linear_with_out_axis_0_equals_linear_then_inference_batch_norm(rng, bn_stats):
    x = rng.standard_normal((6, 4))
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(3)  # PyTorch Linear (out, in)
    expected = bnlib.batchnorm_inference(x @ W.T + b, axis=1, eps=1e-5, **_inference_kwargs(bn_stats))
    W2, b2 = bnlib.fold_batchnorm(W, b, eps=1e-5, out_axis=0, **bn_stats)
    assert W2.shape == W.shape and b2.shape == (3,)
    np.testing.assert_allclose(x @ W2.T + b2, expected, rtol=1e-12, atol=1e-12)


def test_folded_dense_kernel_with_out_axis_minus_1_equals_dense_then_batch_norm(rng, bn_stats):
    x = rng.standard_normal((6, 4))
    K, b = rng.standard_normal((4, 3)), rng.standard_normal(3)  # Keras Dense kernel (in, out)
    expected = bnlib.batchnorm_inference(x @ K + b, axis=-1, eps=1e-3, **_inference_kwargs(bn_stats))
    K2, b2 = bnlib.fold_batchnorm(K, b, eps=1e-3, out_axis=-1, **bn_stats)
    np.testing.assert_allclose(x @ K2 + b2, expected, rtol=1e-12, atol=1e-12)


def test_folded_conv_weight_equals_conv_then_inference_batch_norm(rng, bn_stats):
    x = rng.standard_normal((2, 2, 5, 5))
    w, b = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)  # (O, I, kH, kW)
    expected = bnlib.batchnorm_inference(_conv2d_nchw(x, w, b), axis=1, eps=1e-5, **_inference_kwargs(bn_stats))
    w2, b2 = bnlib.fold_batchnorm(w, b, eps=1e-5, **bn_stats)
    assert w2.shape == w.shape
    np.testing.assert_allclose(_conv2d_nchw(x, w2, b2), expected, rtol=1e-11, atol=1e-11)


def test_folded_conv_without_bias_equals_conv_then_batch_norm(rng, bn_stats):
    x = rng.standard_normal((2, 2, 4, 4))
    w = rng.standard_normal((3, 2, 1, 1))  # 1x1 conv, bias=False as before a BN
    expected = bnlib.batchnorm_inference(_conv2d_nchw(x, w, np.zeros(3)), axis=1, eps=1e-5, **_inference_kwargs(bn_stats))
    w2, b2 = bnlib.fold_batchnorm(w, None, eps=1e-5, **bn_stats)
    np.testing.assert_allclose(_conv2d_nchw(x, w2, b2), expected, rtol=1e-12, atol=1e-12)


def test_folded_keras_conv_kernel_with_out_axis_minus_1_equals_conv_then_batch_norm(rng, bn_stats):
    x = rng.standard_normal((2, 2, 4, 4))
    w, b = rng.standard_normal((3, 2, 2, 2)), rng.standard_normal(3)
    kernel = w.transpose(2, 3, 1, 0)  # Keras Conv2D (kH, kW, I, O)
    expected = bnlib.batchnorm_inference(_conv2d_nchw(x, w, b), axis=1, eps=1e-3, **_inference_kwargs(bn_stats))
    k2, b2 = bnlib.fold_batchnorm(kernel, b, eps=1e-3, out_axis=-1, **bn_stats)
    np.testing.assert_allclose(_conv2d_nchw(x, k2.transpose(3, 2, 0, 1), b2), expected, rtol=1e-11, atol=1e-11)


def test_folding_along_the_wrong_axis_is_detected(rng, bn_stats):
    """A square Linear (3, 3) folded along its input axis runs, but gives another layer."""
    x = rng.standard_normal((6, 3))
    W, b = rng.standard_normal((3, 3)), rng.standard_normal(3)
    expected = bnlib.batchnorm_inference(x @ W.T + b, axis=1, eps=1e-5, **_inference_kwargs(bn_stats))
    W2, b2 = bnlib.fold_batchnorm(W, b, eps=1e-5, out_axis=1, **bn_stats)
    assert np.abs(x @ W2.T + b2 - expected).max() > 1e-2


def test_folded_float32_weights_stay_float32(rng, bn_stats):
    W = rng.standard_normal((3, 4)).astype(np.float32)
    W2, b2 = bnlib.fold_batchnorm(W, None, eps=1e-5, **bn_stats)
    assert W2.dtype == np.float32 and b2.dtype == np.float32


def _inference_kwargs(stats):
    return dict(gamma=stats["gamma"], beta=stats["beta"], running_mean=stats["running_mean"], running_var=stats["running_var"])

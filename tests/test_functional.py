"""Handwritten cases for the functional core: numbers a reader can check on paper."""

import numpy as np
import pytest

import bnlib

# A (3, 2) batch whose two columns both have mean-centred values {-1, 0, 1}
# (in different orders), so var = 2/3; with eps = 1/3, var + eps = 1 and
# xhat is exactly the centred input.
X_HAND = np.array([[1.0, 5.0], [2.0, 3.0], [3.0, 4.0]])
EPS_HAND = 1.0 / 3.0
GAMMA_HAND = np.array([2.0, -1.0])
BETA_HAND = np.array([0.5, 10.0])


def test_forward_of_a_tiny_batch_matches_the_hand_computation():
    out, cache = bnlib.batchnorm_forward(X_HAND, GAMMA_HAND, BETA_HAND, eps=EPS_HAND)
    # column 0: mean 2, xhat [-1, 0, 1], out = 2 * xhat + 0.5
    # column 1: mean 4, xhat [1, -1, 0], out = -1 * xhat + 10
    expected = np.array([[-1.5, 9.0], [0.5, 11.0], [2.5, 10.0]])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-14)
    np.testing.assert_allclose(cache.mean, [2.0, 4.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cache.var, [2 / 3, 2 / 3], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cache.inv_std, [1.0, 1.0], rtol=0, atol=1e-15)


@pytest.mark.parametrize("backward", [bnlib.batchnorm_backward, bnlib.batchnorm_backward_staged], ids=["closed", "staged"])
def test_backward_of_a_tiny_batch_matches_the_hand_computation(backward):
    _, cache = bnlib.batchnorm_forward(X_HAND, GAMMA_HAND, BETA_HAND, eps=EPS_HAND)
    dout = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    dx, dgamma, dbeta = backward(dout, cache)
    # column 0: g = [1,0,0], xhat = [-1,0,1]: mean(g) = 1/3, mean(g*xhat) = -1/3,
    #   dx = 2 * (g - 1/3 + xhat/3) = [2/3, -2/3, 0], dgamma = -1, dbeta = 1
    # column 1: g = [0,2,0], xhat = [1,-1,0]: mean(g) = 2/3, mean(g*xhat) = -2/3,
    #   dx = -1 * (g - 2/3 + 2/3 xhat) = [0, -2/3, 2/3], dgamma = -2, dbeta = 2
    np.testing.assert_allclose(dx, [[2 / 3, 0.0], [-2 / 3, -2 / 3], [0.0, 2 / 3]], rtol=0, atol=1e-14)
    np.testing.assert_allclose(dgamma, [-1.0, -2.0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(dbeta, [1.0, 2.0], rtol=0, atol=1e-14)


def test_batch_statistics_of_an_image_batch_count_n_as_batch_times_height_times_width(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    mean, var, n = bnlib.batch_statistics(x, axis=1)
    assert n == 2 * 4 * 5
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3)), rtol=1e-12)  # biased (ddof=0)


def test_axis_minus_one_on_nhwc_equals_axis_one_on_the_transposed_nchw(rng):
    x_nchw = 12.0 + 5.0 * rng.standard_normal((3, 4, 2, 5))
    dout_nchw = rng.standard_normal(x_nchw.shape)
    gamma, beta = rng.uniform(0.5, 2.0, 4), rng.standard_normal(4)
    to_nhwc = (0, 2, 3, 1)
    x_nhwc, dout_nhwc = x_nchw.transpose(to_nhwc), dout_nchw.transpose(to_nhwc)

    out1, cache1 = bnlib.batchnorm_forward(x_nchw, gamma, beta, axis=1)
    out2, cache2 = bnlib.batchnorm_forward(x_nhwc, gamma, beta, axis=-1)
    np.testing.assert_allclose(out2, out1.transpose(to_nhwc), rtol=1e-12, atol=1e-12)
    for g1, g2 in zip(bnlib.batchnorm_backward(dout_nchw, cache1)[1:], bnlib.batchnorm_backward(dout_nhwc, cache2)[1:]):
        np.testing.assert_allclose(g2, g1, rtol=1e-12, atol=1e-12)
    dx1, dx2 = bnlib.batchnorm_backward(dout_nchw, cache1)[0], bnlib.batchnorm_backward(dout_nhwc, cache2)[0]
    np.testing.assert_allclose(dx2, dx1.transpose(to_nhwc), rtol=1e-10, atol=1e-12)
    assert cache2.axis == 3  # normalised to a non-negative axis


def test_torch_running_variance_uses_bessel_with_n_equal_to_n_h_w_not_n():
    # batch (N, C, H, W) = (2, 1, 2, 2): n = 8 values per channel; biased var 0.7
    # unbiased = 0.7 * 8/7 = 0.8; new = 0.9 * 1 + 0.1 * 0.8 = 0.98 (with n = N = 2 it would be 1.04)
    new_mean, new_var = bnlib.update_running_stats(np.array([0.0]), np.array([1.0]), np.array([2.0]), np.array([0.7]), 8)
    np.testing.assert_allclose(new_mean, [0.2], rtol=0, atol=1e-15)
    np.testing.assert_allclose(new_var, [0.98], rtol=0, atol=1e-15)


def test_torch_running_stats_after_a_real_image_batch_use_n_h_w(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    mean, var, n = bnlib.batch_statistics(x, axis=1)
    new_mean, new_var = bnlib.update_running_stats(np.zeros(3), np.ones(3), mean, var, n, momentum=0.25)
    unbiased = x.var(axis=(0, 2, 3), ddof=1)  # numpy's Bessel over the 2*4*4 = 32 values
    np.testing.assert_allclose(new_mean, 0.25 * x.mean(axis=(0, 2, 3)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(new_var, 0.75 + 0.25 * unbiased, rtol=1e-12)


def test_keras_running_stats_keep_momentum_of_the_old_value_and_the_biased_variance():
    # keras: new = 0.99 * old + 0.01 * batch, biased variance
    # mean 0.99 * 1 + 0.01 * 3 = 1.02; var 0.99 * 2 + 0.01 * 0.5 = 1.985
    new_mean, new_var = bnlib.update_running_stats(
        np.array([1.0]), np.array([2.0]), np.array([3.0]), np.array([0.5]), 8, convention="keras"
    )
    np.testing.assert_allclose(new_mean, [1.02], rtol=0, atol=1e-15)
    np.testing.assert_allclose(new_var, [1.985], rtol=0, atol=1e-15)


def test_torch_and_keras_updates_with_converted_momenta_differ_only_by_bessel_on_the_variance():
    args = (np.array([1.0]), np.array([2.0]), np.array([3.0]), np.array([0.5]), 4)
    t_mean, t_var = bnlib.update_running_stats(*args, convention="torch", momentum=0.1)
    k_mean, k_var = bnlib.update_running_stats(*args, convention=bnlib.KERAS, momentum=0.9)
    np.testing.assert_allclose(t_mean, k_mean, rtol=1e-15)
    # variances differ by the Bessel factor on the new-batch term: 0.1 * 0.5 * (4/3 - 1)
    np.testing.assert_allclose(t_var - k_var, [0.1 * 0.5 / 3], rtol=1e-12)


def test_cumulative_momentum_gives_the_plain_average_of_the_batch_statistics():
    batch_means, batch_vars, n = [1.0, 2.0, 6.0], [0.5, 1.0, 3.0], 4
    mean, var = np.array([100.0]), np.array([100.0])  # initial values are forgotten at batch 1
    for t, (m, v) in enumerate(zip(batch_means, batch_vars), start=1):
        mean, var = bnlib.update_running_stats(
            mean, var, np.array([m]), np.array([v]), n, momentum="cumulative", num_batches_tracked=t
        )
    np.testing.assert_allclose(mean, [3.0], rtol=1e-15)
    np.testing.assert_allclose(var, [(0.5 + 1.0 + 3.0) / 3 * 4 / 3], rtol=1e-15)  # average of unbiased vars


def test_cumulative_momentum_is_refused_in_the_keras_convention():
    with pytest.raises(ValueError, match=r"keras convention has no cumulative.*got momentum='cumulative'"):
        bnlib.update_running_stats(
            np.zeros(1), np.ones(1), np.zeros(1), np.ones(1), 4,
            convention="keras", momentum="cumulative", num_batches_tracked=1,
        )


def test_float32_input_stays_float32_through_forward_backward_and_inference(rng):
    x64 = 12.0 + 5.0 * rng.standard_normal((4, 3, 2, 2))
    dout64 = rng.standard_normal(x64.shape)
    gamma, beta = np.array([1.5, -0.5, 2.0]), np.array([0.1, 0.2, -0.3])  # float64 parameters
    x32, dout32 = x64.astype(np.float32), dout64.astype(np.float32)

    out32, cache32 = bnlib.batchnorm_forward(x32, gamma, beta)
    out64, cache64 = bnlib.batchnorm_forward(x64, gamma, beta)
    assert out32.dtype == np.float32 and cache32.xhat.dtype == np.float32
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-5)
    for backward in (bnlib.batchnorm_backward, bnlib.batchnorm_backward_staged):
        for g32, g64 in zip(backward(dout32, cache32), backward(dout64, cache64)):
            assert g32.dtype == np.float32, backward.__name__
            np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-4 * np.abs(g64).max())
    inf32 = bnlib.batchnorm_inference(x32, gamma, beta, cache64.mean, cache64.var)
    assert inf32.dtype == np.float32
    np.testing.assert_allclose(inf32, out64, rtol=1e-5, atol=1e-5)
    dx_inf = bnlib.batchnorm_inference_backward(dout32, x32, gamma, cache64.mean, cache64.var)
    assert all(g.dtype == np.float32 for g in dx_inf)


def test_float32_sums_over_16384_rows_stay_near_float64_thanks_to_block_partial_sums():
    """float32 batch statistics and gradient sums over many rows, against the same
    computation in float64. bnlib sums block by block and then adds the block
    sums; one running float32 sum down 16384 rows errs about ten times more
    (measured: out 2e-6..4e-6, dgamma 1e-5 of the largest value) and fails here."""
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 1.0, (16384, 64)).astype(np.float32)
    dout = rng.normal(size=x.shape).astype(np.float32)
    gamma = rng.normal(1.0, 0.5, 64).astype(np.float32)
    beta = rng.normal(size=64).astype(np.float32)
    out, cache = bnlib.batchnorm_forward(x, gamma, beta)
    got = (out, *bnlib.batchnorm_backward(dout, cache))
    out64, cache64 = bnlib.batchnorm_forward(*(a.astype(np.float64) for a in (x, gamma, beta)))
    ref = (out64, *bnlib.batchnorm_backward(dout.astype(np.float64), cache64))
    for label, g, r, tol in zip(("out", "dx", "dgamma", "dbeta"), got, ref, (1e-6, 1e-6, 4e-6, 4e-6)):
        err = np.abs(g - r).max() / np.abs(r).max()
        assert err <= tol, f"{label}: float32 error {err:.2g} of max|float64 value|; expected <= {tol:g}"


def test_cancellation_input_with_mean_1e4_and_std_1e_2_gives_unit_variance_in_float64(rng):
    x = 1e4 + 1e-2 * rng.standard_normal((256, 3))
    eps = 1e-12  # var ~ 1e-4: eps shrinks the output variance by var / (var + eps) = 1 - 1e-8
    out, cache = bnlib.batchnorm_forward(x, np.ones(3), np.zeros(3), axis=1, eps=eps)
    np.testing.assert_allclose(cache.var, np.var(x - x.mean(0), axis=0), rtol=1e-12)
    # the input's own rounding, ulp(1e4) / std ~ 2e-10 in output units, bounds how well mean 0 can hold
    np.testing.assert_allclose(out.mean(0), 0.0, rtol=0, atol=1e-8)
    np.testing.assert_allclose(out.var(0), 1.0, rtol=0, atol=1e-7)


def test_the_cancellation_check_would_catch_the_one_pass_variance(rng):
    """E[x^2] - E[x]^2 on the same input misses unit variance by far more than the tolerance above."""
    x = 1e4 + 1e-2 * rng.standard_normal((256, 3))
    naive_var = (x**2).mean(0) - x.mean(0) ** 2
    out = (x - x.mean(0)) / np.sqrt(naive_var + 1e-12)
    assert np.abs(out.var(0) - 1.0).max() > 1e-7


def test_forward_backward_and_inference_do_not_modify_their_inputs(rng):
    x = 12.0 + 5.0 * rng.standard_normal((4, 3, 2))
    gamma, beta, dout = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(x.shape)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    originals = [a.copy() for a in (x, gamma, beta, dout, rm, rv)]

    _, cache = bnlib.batchnorm_forward(x, gamma, beta)
    cache_xhat = cache.xhat.copy()
    bnlib.batchnorm_backward(dout, cache)
    bnlib.batchnorm_backward_staged(dout, cache)
    bnlib.batchnorm_inference(x, gamma, beta, rm, rv)
    bnlib.batchnorm_inference_backward(dout, x, gamma, rm, rv)
    bnlib.update_running_stats(rm, rv, gamma, np.abs(beta), 8)
    bnlib.fold_batchnorm(np.ones((3, 2)), beta, gamma, beta, rm, rv, eps=1e-5)

    names = ("x", "gamma", "beta", "dout", "running_mean", "running_var")
    for name, before, after in zip(names, originals, (x, gamma, beta, dout, rm, rv)):
        np.testing.assert_array_equal(after, before, err_msg=f"{name} was modified")
    np.testing.assert_array_equal(cache.xhat, cache_xhat, err_msg="backward modified the cache")


def test_folded_linear_layer_equals_linear_followed_by_inference_batch_norm(rng):
    x = rng.standard_normal((5, 4))
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(3)  # PyTorch Linear (out, in)
    gamma, beta = rng.uniform(0.5, 2.0, 3) * np.array([1, -1, 1]), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.1, 3.0, 3)

    expected = bnlib.batchnorm_inference(x @ W.T + b, gamma, beta, rm, rv, eps=1e-5)
    W2, b2 = bnlib.fold_batchnorm(W, b, gamma, beta, rm, rv, eps=1e-5)
    np.testing.assert_allclose(x @ W2.T + b2, expected, rtol=1e-12, atol=1e-12)


def test_folding_uses_eps_so_a_wrong_eps_is_visible(rng):
    x = rng.standard_normal((5, 4))
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    gamma, beta, rm, rv = np.ones(3), np.zeros(3), np.zeros(3), np.full(3, 1e-3)
    expected = bnlib.batchnorm_inference(x @ W.T + b, gamma, beta, rm, rv, eps=1e-3)  # Keras eps
    W2, b2 = bnlib.fold_batchnorm(W, b, gamma, beta, rm, rv, eps=1e-5)  # PyTorch eps: wrong here
    assert np.abs(x @ W2.T + b2 - expected).max() > 1e-2

"""bnlib against PyTorch: forward, backward, running statistics, modes.

Every comparison goes through :func:`assert_close`, which measures the largest
absolute difference against ``tol * max(1, max|expected|)``. Tolerances:

* float64: ``1e-10`` (both sides are exact to about 1e-15; sums of a few
  hundred values and five running-average steps stay far below 1e-10);
* float32: ``1e-4`` (about a thousand float32 roundings);
* float64 cancellation input (mean 1e4, std 1e-2): ``1e-7`` for outputs and
  gradients, because PyTorch evaluates ``x * a + (beta - mean * a)`` with
  ``|x * a|`` near 1e6..1e7, whose rounding alone is about 1e-9. The variance
  is compared relative to itself at ``1e-9``: the batch mean of values near
  1e4 is rounded to about 1e-12, which moves a variance of 1e-6..1e-4 by up to
  ~2e-10 relative in either library, while a one-pass ``E[x^2] - E[x]^2`` is
  off by ~1e-4 relative (~1e-8 absolute).

The last section shows that the comparisons are sharp: the realistic mistakes
of the course (unbiased variance in the normalization, running variance without
the Bessel factor, one-pass variance, flipped momentum, Bessel factor with N
instead of N*H*W) fail the very same assertions.
"""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest

import bnlib
from _support import TOL, assert_close

pytestmark = pytest.mark.torch

CANCELLATION_TOL = 1e-7
CANCELLATION_VAR_RTOL = 1e-9
STEPS = 5


# ------------------------------------------------------------- helpers ----
def make_batch(rng, shape, dtype, kind="shifted", step=0):
    """``5*randn + 12`` plus a per-channel offset (channels on axis 1), or the cancellation input."""
    C = shape[1]
    channel = np.arange(C).reshape((1, C) + (1,) * (len(shape) - 2))
    if kind == "shifted":
        x = 5.0 * rng.standard_normal(shape) + 12.0 + 2.0 * channel + step
    elif kind == "cancellation":
        x = 1e4 + 1e-2 * rng.standard_normal(shape) + 1e-3 * channel
    else:  # pragma: no cover - a typo in a parametrization
        raise ValueError(f"kind must be 'shifted' or 'cancellation'; got {kind!r}")
    return x.astype(dtype)


def make_affine(rng, C, dtype):
    """Non-trivial gamma and beta, so that a forgotten scale or shift cannot hide."""
    return (1.5 + rng.random(C)).astype(dtype), rng.standard_normal(C).astype(dtype)


def torch_dtype(torch, dtype):
    return {np.float64: torch.float64, np.float32: torch.float32}[dtype]


def make_module(torch, name, C, dtype, gamma, beta, **kwargs):
    module = getattr(torch.nn, name)(C, dtype=torch_dtype(torch, dtype), **kwargs)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(gamma))
        module.bias.copy_(torch.from_numpy(beta))
    return module


def torch_forward_backward(torch, module, x, dout):
    """Module output and autograd's (dx, dweight, dbias) for the loss sum(y * dout)."""
    module.zero_grad(set_to_none=True)
    xt = torch.tensor(x, requires_grad=True)
    y = module(xt)
    (y * torch.from_numpy(dout)).sum().backward()
    return (
        y.detach().numpy(),
        xt.grad.numpy(),
        module.weight.grad.numpy(),
        module.bias.grad.numpy(),
    )


def make_layer(C, dtype, gamma, beta, **kwargs):
    bn = bnlib.BatchNorm(C, axis=1, convention="torch", dtype=dtype, **kwargs)
    bn.gamma, bn.beta = gamma.copy(), beta.copy()
    return bn


# Shapes: (N, C) and (N, C, L) go to BatchNorm1d, (N, C, H, W) to BatchNorm2d; N=2 included.
LAYOUTS = [
    pytest.param("BatchNorm1d", (2, 3), id="BatchNorm1d-N2xC3"),
    pytest.param("BatchNorm1d", (5, 4), id="BatchNorm1d-N5xC4"),
    pytest.param("BatchNorm1d", (2, 3, 4), id="BatchNorm1d-N2xC3xL4"),
    pytest.param("BatchNorm2d", (2, 3, 4, 5), id="BatchNorm2d-N2xC3x4x5"),
    pytest.param("BatchNorm2d", (3, 2, 3, 3), id="BatchNorm2d-N3xC2x3x3"),
]
DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]
MOMENTA = [
    pytest.param(0.1, id="momentum0.1"),
    pytest.param(0.35, id="momentum0.35"),
    pytest.param(None, id="momentumNone-cumulative"),
]
BACKWARDS = [
    pytest.param(bnlib.batchnorm_backward, id="closed-form"),
    pytest.param(bnlib.batchnorm_backward_staged, id="staged"),
]


# -------------------------------------------------- functional API ----
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape", LAYOUTS)
def test_functional_forward_matches_torch_batch_norm(torch, rng, name, shape, dtype):
    x = make_batch(rng, shape, dtype)
    gamma, beta = make_affine(rng, shape[1], dtype)
    out, _ = bnlib.batchnorm_forward(x, gamma, beta, axis=1, eps=1e-5)
    expected = torch.nn.functional.batch_norm(
        torch.from_numpy(x), None, None, torch.from_numpy(gamma), torch.from_numpy(beta), training=True, eps=1e-5
    ).numpy()
    assert out.dtype == x.dtype, f"expected output dtype {x.dtype}, received {out.dtype}"
    assert_close(out, expected, tol=TOL[dtype], what="batchnorm_forward vs F.batch_norm")


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape", LAYOUTS)
def test_functional_backward_matches_torch_autograd(torch, rng, name, shape, dtype, backward):
    x = make_batch(rng, shape, dtype)
    gamma, beta = make_affine(rng, shape[1], dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    out, cache = bnlib.batchnorm_forward(x, gamma, beta, axis=1, eps=1e-5)
    dx, dgamma, dbeta = backward(dout, cache)
    module = make_module(torch, name, shape[1], dtype, gamma, beta, eps=1e-5, track_running_stats=False)
    _, tdx, tdgamma, tdbeta = torch_forward_backward(torch, module, x, dout)
    assert_close(dx, tdx, tol=TOL[dtype], what="dx vs autograd")
    assert_close(dgamma, tdgamma, tol=TOL[dtype], what="dgamma vs autograd")
    assert_close(dbeta, tdbeta, tol=TOL[dtype], what="dbeta vs autograd")


@pytest.mark.parametrize("momentum", [pytest.param(0.1, id="momentum0.1"), pytest.param(0.35, id="momentum0.35")])
@pytest.mark.parametrize("name, shape", LAYOUTS)
def test_functional_running_stats_match_torch_batch_norm_after_five_steps(torch, rng, name, shape, momentum):
    C = shape[1]
    running_mean, running_var = np.zeros(C), np.ones(C)
    t_mean, t_var = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    for step in range(STEPS):
        x = make_batch(rng, shape, np.float64, step=step)
        mean, var, n = bnlib.batch_statistics(x, axis=1)
        running_mean, running_var = bnlib.update_running_stats(
            running_mean, running_var, mean, var, n, convention="torch", momentum=momentum
        )
        torch.nn.functional.batch_norm(torch.from_numpy(x), t_mean, t_var, training=True, momentum=momentum, eps=1e-5)
    assert_close(running_mean, t_mean.numpy(), tol=TOL[np.float64], what="running mean vs F.batch_norm")
    assert_close(running_var, t_var.numpy(), tol=TOL[np.float64], what="running var (unbiased) vs F.batch_norm")


# ------------------------------------------------------------- layer ----
@functools.cache
def training_scenario(name, shape, dtype, momentum, kind="shifted", eps=1e-5):
    """Train a bnlib layer and a torch module side by side for STEPS batches, then one eval call.

    Shared (cached) by the layer tests below, so that each scenario runs once.
    Returns a namespace of numpy results only: ``steps`` is a list of
    ``(ours, theirs)`` with ``(output, dx, dgamma, dbeta)`` each; ``bn_stats`` /
    ``torch_stats`` are ``(running_mean, running_var, num_batches_tracked)``
    after training; ``eval_ours``/``eval_theirs`` the eval call's four
    results; ``bn_stats_after_eval`` / ``torch_tracked_after_eval`` what the eval
    call left behind.
    """
    import torch

    rng = np.random.default_rng(20261124)
    C = shape[1]
    gamma, beta = make_affine(rng, C, dtype)
    bn = make_layer(C, dtype, gamma, beta, eps=eps, momentum=momentum)
    module = make_module(torch, name, C, dtype, gamma, beta, eps=eps, momentum=momentum)
    steps = []
    for step in range(STEPS):
        x = make_batch(rng, shape, dtype, kind, step)
        dout = rng.standard_normal(shape).astype(dtype)
        ours = (bn(x), *bn.backward(dout))
        steps.append((ours, torch_forward_backward(torch, module, x, dout)))
    bn_stats = (bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked)
    torch_stats = (
        module.running_mean.numpy().copy(),
        module.running_var.numpy().copy(),
        int(module.num_batches_tracked),
    )
    bn.eval()
    module.eval()
    x = make_batch(rng, shape, dtype, kind, STEPS)
    dout = rng.standard_normal(shape).astype(dtype)
    eval_ours = (bn(x), *bn.backward(dout))
    eval_theirs = torch_forward_backward(torch, module, x, dout)
    return types.SimpleNamespace(
        steps=steps,
        bn_stats=bn_stats,
        torch_stats=torch_stats,
        eval_ours=eval_ours,
        eval_theirs=eval_theirs,
        bn_stats_after_eval=(bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked),
        torch_tracked_after_eval=int(module.num_batches_tracked),
    )


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape", LAYOUTS)
def test_layer_training_outputs_and_gradients_match_module_at_every_step(name, shape, dtype, momentum):
    run = training_scenario(name, shape, dtype, momentum)
    for step, (ours, theirs) in enumerate(run.steps):
        for what, a, b in zip(("output", "dx", "dgamma", "dbeta"), ours, theirs):
            assert_close(a, b, tol=TOL[dtype], what=f"step {step}: {what} vs {name}")


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape", LAYOUTS)
def test_layer_running_stats_match_module_after_five_steps(name, shape, dtype, momentum):
    run = training_scenario(name, shape, dtype, momentum)
    (mean, var, tracked), (t_mean, t_var, t_tracked) = run.bn_stats, run.torch_stats
    assert tracked == t_tracked == STEPS, (
        f"expected {STEPS} batches tracked, received bnlib {tracked}, torch {t_tracked}"
    )
    assert mean.dtype == dtype and var.dtype == dtype, (
        f"expected running stats of dtype {np.dtype(dtype)}, received {mean.dtype}, {var.dtype}"
    )
    assert_close(mean, t_mean, tol=TOL[dtype], what="running_mean")
    assert_close(var, t_var, tol=TOL[dtype], what="running_var")


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape", LAYOUTS)
def test_eval_mode_matches_module_and_updates_nothing(name, shape, dtype, momentum):
    run = training_scenario(name, shape, dtype, momentum)
    for what, a, b in zip(("eval output", "eval dx", "eval dgamma", "eval dbeta"), run.eval_ours, run.eval_theirs):
        assert_close(a, b, tol=TOL[dtype], what=f"{what} vs {name}.eval()")
    (mean, var, tracked), (mean_after, var_after, tracked_after) = run.bn_stats, run.bn_stats_after_eval
    assert_close(mean_after, mean, tol=0.0, what="running_mean after an eval call")
    assert_close(var_after, var, tol=0.0, what="running_var after an eval call")
    assert tracked_after == tracked == run.torch_tracked_after_eval, (
        f"an eval call must not count a batch: expected {tracked}, received {tracked_after}"
    )


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape", LAYOUTS)
def test_without_running_stats_batch_statistics_are_used_in_both_modes(torch, rng, name, shape, dtype, mode):
    C = shape[1]
    gamma, beta = make_affine(rng, C, dtype)
    bn = make_layer(C, dtype, gamma, beta, track_running_stats=False).train(mode == "train")
    module = make_module(torch, name, C, dtype, gamma, beta, track_running_stats=False).train(mode == "train")
    assert module.running_mean is None, "torch keeps no running stats with track_running_stats=False"
    x = make_batch(rng, shape, dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    ours = (bn(x), *bn.backward(dout))
    theirs = torch_forward_backward(torch, module, x, dout)
    for what, a, b in zip(("output", "dx", "dgamma", "dbeta"), ours, theirs):
        assert_close(a, b, tol=TOL[dtype], what=f"{mode} {what}, track_running_stats=False")
    batch_out, _ = bnlib.batchnorm_forward(x, gamma, beta, axis=1, eps=1e-5)
    assert_close(ours[0], batch_out, tol=TOL[dtype], what=f"{mode} output vs batch-statistics forward")


# ----------------------------------------------- numerically hard input ----
@pytest.mark.parametrize("name, shape", LAYOUTS)
def test_cancellation_input_statistics_match_torch(torch, rng, name, shape):
    x = make_batch(rng, shape, np.float64, "cancellation")
    mean, var, n = bnlib.batch_statistics(x, axis=1)
    dims = tuple(d for d in range(x.ndim) if d != 1)
    t_var, t_mean = torch.var_mean(torch.from_numpy(x), dim=dims, correction=0)
    assert n == x.size // shape[1], f"expected n = {x.size // shape[1]} values per channel, received {n}"
    assert_close(mean, t_mean.numpy(), tol=1e-10, what="batch mean, mean 1e4 std 1e-2")
    # Relative to the variance itself (1e-6..1e-4): one-pass E[x^2]-E[x]^2 is off by ~1e-8 absolute here.
    ratio = var / t_var.numpy()
    assert_close(ratio, np.ones_like(ratio), tol=CANCELLATION_VAR_RTOL, what="batch variance ratio, mean 1e4 std 1e-2")


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("name, shape", LAYOUTS)
def test_cancellation_input_training_matches_module(name, shape, momentum):
    run = training_scenario(name, shape, np.float64, momentum, kind="cancellation", eps=1e-6)
    for step, (ours, theirs) in enumerate(run.steps):
        for what, a, b in zip(("output", "dx", "dgamma", "dbeta"), ours, theirs):
            assert_close(a, b, tol=CANCELLATION_TOL, what=f"step {step}: {what}, mean 1e4 std 1e-2")
    (mean, var, _), (t_mean, t_var, _) = run.bn_stats, run.torch_stats
    assert_close(mean, t_mean, tol=1e-10, what="running_mean, mean 1e4 std 1e-2")
    assert_close(var / t_var, np.ones_like(var), tol=CANCELLATION_VAR_RTOL, what="running_var ratio, mean 1e4 std 1e-2")


# ----------------------------------------- the comparisons are sharp ----
def _torch_reference(torch, x, gamma, beta, eps=1e-5):
    return torch.nn.functional.batch_norm(
        torch.from_numpy(x), None, None, torch.from_numpy(gamma), torch.from_numpy(beta), training=True, eps=eps
    ).numpy()


def _wrong_forward_unbiased(x, gamma, beta, eps=1e-5):
    dims = tuple(d for d in range(x.ndim) if d != 1)
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = x.mean(axis=dims), x.var(axis=dims, ddof=1)  # the mistake: ddof=1
    xhat = (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + eps)
    return gamma.reshape(bshape) * xhat + beta.reshape(bshape)


def _wrong_forward_one_pass(x, gamma, beta, eps=1e-5):
    dims = tuple(d for d in range(x.ndim) if d != 1)
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=dims)
    var = (x**2).mean(axis=dims) - mean**2  # the mistake: E[x^2] - E[x]^2
    xhat = (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + eps)
    return gamma.reshape(bshape) * xhat + beta.reshape(bshape)


@pytest.mark.parametrize(
    "name, shape", [LAYOUTS[0], LAYOUTS[3]]
)  # N=2 (N,C) and (N,C,H,W): the mistakes are largest with few values
@pytest.mark.parametrize("dtype", DTYPES)
def test_unbiased_variance_in_the_normalization_fails_the_forward_tolerance(torch, rng, name, shape, dtype):
    x = make_batch(rng, shape, dtype)
    gamma, beta = make_affine(rng, shape[1], dtype)
    expected = _torch_reference(torch, x, gamma, beta)
    wrong = _wrong_forward_unbiased(x, gamma, beta)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close(wrong, expected, tol=TOL[dtype], what="unbiased-variance forward")
    # ... while the correct implementation passes the same assertion.
    assert_close(bnlib.batchnorm_forward(x, gamma, beta)[0], expected, tol=TOL[dtype], what="bnlib forward")


def test_one_pass_variance_fails_the_cancellation_tolerance(torch, rng):
    x = make_batch(rng, (5, 4), np.float64, "cancellation")
    gamma, beta = make_affine(rng, 4, np.float64)
    expected = _torch_reference(torch, x, gamma, beta, eps=1e-6)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close(_wrong_forward_one_pass(x, gamma, beta, eps=1e-6), expected, tol=CANCELLATION_TOL, what="one-pass")
    assert_close(bnlib.batchnorm_forward(x, gamma, beta, eps=1e-6)[0], expected, tol=CANCELLATION_TOL, what="bnlib")


@pytest.mark.parametrize(
    "mistake",
    [
        pytest.param(lambda var, n, N: var, id="biased-running-var"),
        pytest.param(lambda var, n, N: var * N / (N - 1), id="bessel-with-N-not-NHW"),
    ],
)
def test_running_var_mistakes_fail_the_running_stats_tolerance(torch, rng, mistake):
    shape = (2, 3, 4, 5)
    C, N = shape[1], shape[0]
    right_var, wrong_var = np.ones(C), np.ones(C)
    t_mean, t_var = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    for step in range(STEPS):
        x = make_batch(rng, shape, np.float64, step=step)
        _, var, n = bnlib.batch_statistics(x, axis=1)
        right_var = 0.9 * right_var + 0.1 * var * n / (n - 1)
        wrong_var = 0.9 * wrong_var + 0.1 * mistake(var, n, N)
        torch.nn.functional.batch_norm(torch.from_numpy(x), t_mean, t_var, training=True, momentum=0.1)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close(wrong_var, t_var.numpy(), tol=TOL[np.float64], what="wrong running var")
    # ... while the Bessel factor n/(n-1) with n = N*H*W passes the same assertion.
    assert_close(right_var, t_var.numpy(), tol=TOL[np.float64], what="right running var")


def test_flipped_momentum_fails_the_running_stats_tolerance(torch, rng):
    shape = (5, 4)
    C = shape[1]
    mean_right, mean_wrong = np.zeros(C), np.zeros(C)
    t_mean, t_var = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    for step in range(STEPS):
        x = make_batch(rng, shape, np.float64, step=step)
        mean, _, _ = bnlib.batch_statistics(x, axis=1)
        mean_right = 0.9 * mean_right + 0.1 * mean
        mean_wrong = 0.1 * mean_wrong + 0.9 * mean  # the mistake: 0.1 weights the OLD value
        torch.nn.functional.batch_norm(torch.from_numpy(x), t_mean, t_var, training=True, momentum=0.1)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close(mean_wrong, t_mean.numpy(), tol=TOL[np.float64], what="flipped-momentum running mean")
    assert_close(mean_right, t_mean.numpy(), tol=TOL[np.float64], what="right running mean")

"""Layer norm and group norm (bnlib.normfamily) against PyTorch, gradcheck, and bad input."""

import re

import numpy as np
import pytest

import bnlib

F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-4, atol=1e-5)

LN_CASES = [((6, 5), 1), ((3, 4, 5), 1), ((3, 4, 5), 2), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), 2), ((2, 3, 4, 5), 3)]
GN_CASES = [((5, 6), 1), ((5, 6), 3), ((5, 6, 3), 6), ((3, 6, 7), 2), ((2, 4, 3, 5), 1), ((2, 4, 3, 5), 2), ((2, 4, 3, 5), 4)]


def _data(rng, shape, pshape, dtype):
    x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    gamma = (1.0 + 0.5 * rng.standard_normal(pshape)).astype(dtype)
    beta = rng.standard_normal(pshape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dout


def _torch_grads(torch, fn, x, gamma, beta, dout):
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    out = fn(xt, gt, bt)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), xt.grad.numpy(), gt.grad.numpy(), bt.grad.numpy()


def _compare(ours, theirs, tol, dtype):
    for name, a, b in zip(("out", "dx", "dgamma", "dbeta"), ours, theirs):
        assert a.dtype == dtype, f"{name}: expected dtype {dtype}; got {a.dtype}"
        assert a.shape == b.shape, f"{name}: expected shape {b.shape}; got {a.shape}"
        np.testing.assert_allclose(a, b, **tol, err_msg=name)


# --------------------------------------------------------- vs PyTorch ----
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("shape", "nd"), LN_CASES)
def test_layernorm_matches_torch_forward_and_gradients(torch, rng, shape, nd, dtype):
    pshape = shape[len(shape) - nd :]
    x, gamma, beta, dout = _data(rng, shape, pshape, dtype)
    out, cache = bnlib.layernorm_forward(x, gamma, beta, normalized_ndim=nd, eps=1e-5)
    dx, dgamma, dbeta = bnlib.layernorm_backward(dout, cache)
    theirs = _torch_grads(torch, lambda a, g, b: torch.nn.functional.layer_norm(a, pshape, g, b, 1e-5), x, gamma, beta, dout)
    _compare((out, dx, dgamma, dbeta), theirs, F64 if dtype == np.float64 else F32, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("shape", "groups"), GN_CASES)
def test_groupnorm_matches_torch_forward_and_gradients(torch, rng, shape, groups, dtype):
    x, gamma, beta, dout = _data(rng, shape, (shape[1],), dtype)
    out, cache = bnlib.groupnorm_forward(x, gamma, beta, groups, eps=1e-5)
    dx, dgamma, dbeta = bnlib.groupnorm_backward(dout, cache)
    theirs = _torch_grads(torch, lambda a, g, b: torch.nn.functional.group_norm(a, groups, g, b, 1e-5), x, gamma, beta, dout)
    _compare((out, dx, dgamma, dbeta), theirs, F64 if dtype == np.float64 else F32, dtype)


def test_groupnorm_with_one_group_per_channel_is_torch_instance_norm(torch, rng):
    x, gamma, beta, dout = _data(rng, (2, 3, 4, 5), (3,), np.float64)
    theirs = _torch_grads(
        torch,
        lambda a, g, b: torch.nn.functional.instance_norm(a, weight=g, bias=b, eps=1e-5),
        x,
        gamma,
        beta,
        dout,
    )
    out, cache = bnlib.groupnorm_forward(x, gamma, beta, num_groups=3)
    _compare((out, *bnlib.groupnorm_backward(dout, cache)), theirs, F64, np.float64)


def test_a_large_eps_matches_torch_so_eps_sits_inside_the_square_root(torch, rng):
    # with unit-scale data eps=0.5 changes the output a lot: eps outside the sqrt cannot pass
    x, gamma, beta, dout = _data(rng, (4, 6), (6,), np.float64)
    theirs = _torch_grads(torch, lambda a, g, b: torch.nn.functional.layer_norm(a, (6,), g, b, 0.5), x, gamma, beta, dout)
    out, cache = bnlib.layernorm_forward(x, gamma, beta, eps=0.5)
    _compare((out, *bnlib.layernorm_backward(dout, cache)), theirs, F64, np.float64)
    theirs = _torch_grads(torch, lambda a, g, b: torch.nn.functional.group_norm(a, 2, g, b, 0.5), x, gamma, beta, dout)
    out, cache = bnlib.groupnorm_forward(x, gamma, beta, 2, eps=0.5)
    _compare((out, *bnlib.groupnorm_backward(dout, cache)), theirs, F64, np.float64)


# ------------------------------------------------------ gradcheck ----
@pytest.mark.parametrize("kind", ["layer", "group"])
def test_backward_agrees_with_central_differences(rng, kind):
    if kind == "layer":
        x, gamma, beta, dout = _data(rng, (2, 3, 4), (3, 4), np.float64)

        def run(xx, gg, bb):
            return bnlib.layernorm_forward(xx, gg, bb, normalized_ndim=2)

        backward = bnlib.layernorm_backward
    else:
        x, gamma, beta, dout = _data(rng, (2, 4, 3), (4,), np.float64)

        def run(xx, gg, bb):
            return bnlib.groupnorm_forward(xx, gg, bb, 2)

        backward = bnlib.groupnorm_backward
    _, cache = run(x, gamma, beta)
    got = dict(zip(("dx", "dgamma", "dbeta"), backward(dout, cache)))
    num = {
        "dx": bnlib.numerical_gradient(lambda v: run(v, gamma, beta)[0], x, dout),
        "dgamma": bnlib.numerical_gradient(lambda v: run(x, v, beta)[0], gamma, dout),
        "dbeta": bnlib.numerical_gradient(lambda v: run(x, gamma, v)[0], beta, dout),
    }
    for k in num:
        err = bnlib.rel_error(got[k], num[k])
        assert err < 1e-7, f"{kind} norm {k}: expected relative error < 1e-7 against central differences; got {err:.2e}"


def test_layernorm_over_c_h_w_equals_groupnorm_with_one_group_and_constant_affine(rng):
    x, _, _, dout = _data(rng, (3, 4, 2, 2), (4,), np.float64)
    a, ca = bnlib.layernorm_forward(x, np.full((4, 2, 2), 2.0), np.full((4, 2, 2), 0.5), normalized_ndim=3)
    b, cb = bnlib.groupnorm_forward(x, np.full(4, 2.0), np.full(4, 0.5), 1)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        bnlib.layernorm_backward(dout, ca)[0], bnlib.groupnorm_backward(dout, cb)[0], rtol=1e-10, atol=1e-12
    )


# ------------------------------------------------------ bad input ----
@pytest.mark.parametrize("name", ["gamma", "beta"])
def test_layernorm_parameter_of_the_wrong_shape_names_expected_and_received(rng, name):
    x = rng.standard_normal((2, 3, 4))
    params = {"gamma": np.ones((3, 4)), "beta": np.zeros((3, 4)), name: np.ones(4)}
    expected = re.escape(
        f"{name} must have shape (3, 4) to match x.shape[-2:] = (3, 4) (normalized_ndim=2) for x of shape (2, 3, 4); "
        f"got {name} of shape (4,)"
    )
    with pytest.raises(ValueError, match=expected):
        bnlib.layernorm_forward(x, params["gamma"], params["beta"], normalized_ndim=2)


@pytest.mark.parametrize("name", ["gamma", "beta"])
def test_groupnorm_parameter_of_the_wrong_shape_names_expected_and_received(rng, name):
    x = rng.standard_normal((2, 4, 3))
    params = {"gamma": np.ones(4), "beta": np.zeros(4), name: np.ones(3)}
    expected = re.escape(
        f"{name} must have shape (4,) to match x.shape[1] = 4 for x of shape (2, 4, 3); got {name} of shape (3,)"
    )
    with pytest.raises(ValueError, match=expected):
        bnlib.groupnorm_forward(x, params["gamma"], params["beta"], 2)


def test_num_groups_that_does_not_divide_c_is_refused(rng):
    x = rng.standard_normal((2, 6, 3))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "num_groups must divide the number of channels C = x.shape[1] = 6 for x of shape (2, 6, 3); got num_groups=4"
        ),
    ):
        bnlib.groupnorm_forward(x, np.ones(6), np.zeros(6), 4)


@pytest.mark.parametrize(
    ("groups", "exc", "msg"),
    [
        (0, ValueError, "num_groups must be an int >= 1; got num_groups=0"),
        (2.0, TypeError, "num_groups must be an int; got 2.0 of type float"),
        (True, TypeError, "num_groups must be an int; got True of type bool"),
    ],
)
def test_num_groups_that_is_not_a_positive_int_is_refused(rng, groups, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        bnlib.groupnorm_forward(rng.standard_normal((2, 4)), np.ones(4), np.zeros(4), groups)


def test_groupnorm_of_a_1d_input_names_the_shape_received():
    with pytest.raises(
        ValueError, match=re.escape("x must have at least 2 dimensions (N, C, *spatial); got shape (4,) with 1 dimension(s)")
    ):
        bnlib.groupnorm_forward(np.ones(4), np.ones(4), np.zeros(4), 1)


def test_layernorm_with_more_normalized_axes_than_x_has_is_refused(rng):
    with pytest.raises(
        ValueError, match=re.escape("x must have at least normalized_ndim = 3 dimension(s); got shape (2, 3) with 2 dimension(s)")
    ):
        bnlib.layernorm_forward(rng.standard_normal((2, 3)), np.ones((2, 3)), np.zeros((2, 3)), normalized_ndim=3)


@pytest.mark.parametrize("nd", [0, -1])
def test_layernorm_with_normalized_ndim_below_one_is_refused(rng, nd):
    with pytest.raises(ValueError, match=re.escape(f"normalized_ndim must be an int >= 1; got normalized_ndim={nd}")):
        bnlib.layernorm_forward(rng.standard_normal((2, 3)), np.ones(3), np.zeros(3), normalized_ndim=nd)


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf")])
@pytest.mark.parametrize("kind", ["layer", "group"])
def test_eps_that_is_not_finite_and_positive_is_refused(rng, eps, kind):
    x = rng.standard_normal((2, 4))
    with pytest.raises(ValueError, match=re.escape(f"eps must be a finite number > 0; got eps={eps!r}")):
        if kind == "layer":
            bnlib.layernorm_forward(x, np.ones(4), np.zeros(4), eps=eps)
        else:
            bnlib.groupnorm_forward(x, np.ones(4), np.zeros(4), 2, eps=eps)


@pytest.mark.parametrize("kind", ["layer", "group"])
def test_dout_of_the_wrong_shape_names_the_recorded_and_received_shape(rng, kind):
    x = rng.standard_normal((2, 4))
    if kind == "layer":
        _, cache = bnlib.layernorm_forward(x, np.ones(4), np.zeros(4))
        backward = bnlib.layernorm_backward
    else:
        _, cache = bnlib.groupnorm_forward(x, np.ones(4), np.zeros(4), 2)
        backward = bnlib.groupnorm_backward
    with pytest.raises(
        ValueError,
        match=re.escape(
            "dout must have the shape of the forward input, (2, 4), as recorded in the cache; got dout of shape (4, 2)"
        ),
    ):
        backward(np.ones((4, 2)), cache)


def test_a_cache_from_the_other_function_is_refused_with_its_type(rng):
    x = rng.standard_normal((2, 4))
    _, cache = bnlib.layernorm_forward(x, np.ones(4), np.zeros(4))
    with pytest.raises(
        TypeError, match="cache must be the GroupNormCache returned by groupnorm_forward; got an object of type LayerNormCache"
    ):
        bnlib.groupnorm_backward(np.ones((2, 4)), cache)


def test_integer_input_and_nan_input_are_refused(rng):
    with pytest.raises(TypeError, match=r"x must have a real floating-point dtype \(float32 or float64\); got dtype int64"):
        bnlib.layernorm_forward(np.ones((2, 3), dtype=np.int64), np.ones(3), np.zeros(3))
    x = rng.standard_normal((2, 4))
    x[1, 2] = np.nan
    with pytest.raises(
        ValueError, match=re.escape("x must contain only finite numbers; got 1 NaN value(s), the first at index (1, 2)")
    ):
        bnlib.groupnorm_forward(x, np.ones(4), np.zeros(4), 2)

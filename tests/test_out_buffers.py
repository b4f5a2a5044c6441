"""out= / xhat_out= buffers of bnlib's functional API (numpy ufunc rules)."""

import numpy as np
import pytest

import bnlib
from bnlib.functional import batchnorm_backward, batchnorm_forward


@pytest.mark.parametrize("shape,axis", [((64, 8), 1), ((4, 3, 5, 5), 1), ((4, 5, 5, 3), -1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_gives_identical_results_and_returns_the_buffer(shape, axis, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(dtype)
    C = shape[axis]
    g, b = rng.normal(size=C).astype(dtype), rng.normal(size=C).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    ref, cache = batchnorm_forward(x, g, b, axis=axis)
    dx_ref, dg_ref, db_ref = batchnorm_backward(dout, cache)
    out = np.full(shape, np.nan, dtype)
    xh = np.full(shape, np.nan, dtype)
    got, c2 = batchnorm_forward(x, g, b, axis=axis, out=out, xhat_out=xh)
    assert got is out
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(c2.xhat, cache.xhat)
    assert np.shares_memory(c2.xhat, xh)
    dxo = np.full(shape, np.nan, dtype)
    dx, dg, db = batchnorm_backward(dout, c2, out=dxo)
    assert dx is dxo
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(dg, dg_ref)
    np.testing.assert_array_equal(db, db_ref)


def test_bad_out_shape_or_dtype_is_a_clear_error():
    x = np.ones((4, 3)) + np.arange(12).reshape(4, 3)
    with pytest.raises(ValueError, match=r"shape \(4, 3\) and dtype float64; got shape \(3, 4\) and dtype float64"):
        batchnorm_forward(x, np.ones(3), np.zeros(3), out=np.empty((3, 4)))
    with pytest.raises(ValueError, match=r"dtype float64; got shape \(4, 3\) and dtype float32"):
        batchnorm_forward(x, np.ones(3), np.zeros(3), out=np.empty((4, 3), np.float32))
    _, cache = batchnorm_forward(x, np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"out must have shape \(4, 3\)"):
        batchnorm_backward(np.ones((4, 3)), cache, out=np.empty(12))
    with pytest.raises(TypeError, match="got an object of type list"):
        batchnorm_forward(x, np.ones(3), np.zeros(3), out=[0.0] * 12)


EXPECT_8x3_F64 = r"must have shape \(8, 3\) and dtype float64; got shape "


@pytest.mark.parametrize(
    "which,buf,expected",
    [
        ("xhat_out", np.empty((8, 3), np.float32), r"xhat_out " + EXPECT_8x3_F64 + r"\(8, 3\) and dtype float32"),
        ("xhat_out", np.empty((3, 8)), r"xhat_out " + EXPECT_8x3_F64 + r"\(3, 8\) and dtype float64"),
        ("dx out", np.empty((8, 3), np.float32), r"out " + EXPECT_8x3_F64 + r"\(8, 3\) and dtype float32"),
        ("out", np.empty((3, 8)).T, r"out must be a writeable C-contiguous array"),
    ],
)
def test_each_buffer_with_a_wrong_dtype_shape_or_layout_names_expected_and_received(which, buf, expected):
    x = np.arange(24.0).reshape(8, 3) ** 1.5
    g, b = np.ones(3), np.zeros(3)
    with pytest.raises(ValueError, match=expected):
        if which == "dx out":
            _, cache = batchnorm_forward(x, g, b)
            batchnorm_backward(np.ones_like(x), cache, out=buf)
        else:
            batchnorm_forward(x, g, b, **{which: buf})


def test_reused_buffers_give_identical_results_step_after_step():
    """A loop reusing out, xhat_out and dx across steps gets, at every step,
    exactly what fresh arrays give (nothing left over from the step before)."""
    rng = np.random.default_rng(2)
    shape, C = (512, 96), 96
    g, b = rng.normal(size=C).astype(np.float32), rng.normal(size=C).astype(np.float32)
    out, xh, dxo = (np.empty(shape, np.float32) for _ in range(3))
    for step in range(3):
        x = (rng.normal(size=shape) * (step + 1) + step).astype(np.float32)
        dout = rng.normal(size=shape).astype(np.float32)
        ref, cache = batchnorm_forward(x, g, b)
        refs = (ref, *batchnorm_backward(dout, cache))
        got, c2 = batchnorm_forward(x, g, b, out=out, xhat_out=xh)
        gots = (got, *batchnorm_backward(dout, c2, out=dxo))
        for label, a, r in zip(("out", "dx", "dgamma", "dbeta"), gots, refs):
            np.testing.assert_array_equal(a, r, err_msg=f"{label} at step {step}")


def test_aliasing_input_and_out_is_rejected():
    x = np.ones((4, 3)) + np.arange(12).reshape(4, 3)
    with pytest.raises(ValueError, match="out shares memory with x"):
        batchnorm_forward(x, np.ones(3), np.zeros(3), out=x)
    buf = np.empty((4, 3))
    with pytest.raises(ValueError, match="xhat_out shares memory with out"):
        batchnorm_forward(x, np.ones(3), np.zeros(3), out=buf, xhat_out=buf)
    _, cache = batchnorm_forward(x, np.ones(3), np.zeros(3))
    dout = np.ones((4, 3))
    with pytest.raises(ValueError, match="out shares memory with dout"):
        batchnorm_backward(dout, cache, out=dout)
    with pytest.raises(ValueError, match=r"out shares memory with cache.xhat"):
        batchnorm_backward(dout, cache, out=cache.xhat)
    assert bnlib.batchnorm_forward is batchnorm_forward


@pytest.mark.parametrize("shape,axis", [((2048, 512), 1), ((32, 16, 32, 64), -1)])
def test_reused_buffers_allocate_no_input_sized_array(shape, axis):
    """With out=, xhat_out= and the backward's out=, forward + backward allocate only
    small scratch; the lower bound shows the measurement sees numpy's arrays."""
    import tracemalloc

    rng = np.random.default_rng(1)
    x = rng.normal(size=shape)
    dout = rng.normal(size=shape)
    C = shape[axis]
    g, b = np.ones(C), np.zeros(C)
    out, xh, dxo = np.empty_like(x), np.empty_like(x), np.empty_like(x)

    def step(**kw):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            o, cache = batchnorm_forward(x, g, b, axis=axis, **{k: v for k, v in kw.items() if k != "dx"})
            dx = batchnorm_backward(dout, cache, out=kw.get("dx"))  # noqa: F841
            return (tracemalloc.get_traced_memory()[1] - base) / x.nbytes
        finally:
            tracemalloc.stop()

    assert step() >= 2.9, "expected the allocating call to be seen allocating out, xhat and dx"
    peak = step(out=out, xhat_out=xh, dx=dxo)
    assert peak < 0.2, f"expected < 0.2 x input of scratch with reused buffers; got {peak:.2f} x input"

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

"""The speed benchmark runs, and the fast kernels keep their memory and accuracy promises.

Nothing here asserts a timing: the benchmark is run in its ``--quick`` mode
only to check that it works end to end. What is asserted is deterministic:
the benchmark's output format, its refusal to time a wrong kernel, the peak
memory of a forward + backward pass (counted by tracemalloc, to which numpy
reports every array allocation), and the agreement of the optimised
``batchnorm_forward`` / ``batchnorm_backward`` with the textbook formulas.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import bnlib
from bnlib import _kernels

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_batchnorm.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_batchnorm", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------ benchmark ----
def test_benchmark_quick_mode_exits_zero_and_reports_ratios_memory_and_json(tmp_path):
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repeat", "2", "--warmup", "1", "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"expected exit status 0, got {proc.returncode}; stderr:\n{proc.stderr[-3000:]}"
    stdout = proc.stdout
    bench = _load_bench()
    for shape in bench.QUICK_SHAPES:
        for line in (
            f"ratio bnlib/torch[1 thread] {shape}:",
            f"ratio bnlib/naive {shape}:",
            f"ratio bnlib out=/torch[1 thread] {shape}:",
            f"peak extra memory bnlib fwd+bwd {shape}:",
        ):
            assert line in stdout, f"expected a line starting {line!r} in the benchmark output; got:\n{stdout}"
    for column in ("wall ms", "cpu ms", "wall/torch same T", "cpu/torch[1]", "wall/naive", "peak extra mem"):
        assert column in stdout, f"expected the table column {column!r}; got:\n{stdout}"

    data = json.loads(out_json.read_text())
    assert set(data) == {"info", "results", "summary"}, f"expected keys info, results, summary; got {sorted(data)}"
    assert [tuple(s["shape"]) for s in data["summary"]] == bench.QUICK_SHAPES
    for s in data["summary"]:
        for key in (
            "bnlib_over_torch_1", "bnlib_over_torch_1_cpu", "bnlib_over_naive", "naive_over_torch_1", "bnlib_peak_extra_memory_x",
            "bnlib_out_over_torch_1", "bnlib_out_over_torch_1_cpu",
        ):
            assert key in s, f"expected {key!r} in the JSON summary; got {sorted(s)}"
            assert np.isfinite(s[key]) and s[key] > 0, f"expected a positive finite {key}; got {s[key]!r}"
    impls = {r["impl"] for r in data["results"]}
    expected = {"bnlib", "bnlib-out", "naive", "torch[1]"}
    assert expected <= impls, f"expected rows {sorted(expected)}; got {sorted(impls)}"
    for r in data["results"]:
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"], f"implausible timing row {r}"


def test_benchmark_refuses_to_time_a_kernel_that_disagrees_with_torch():
    bench = _load_bench()
    x, dout, gamma, beta = bench.make_inputs((16, 4), seed=3)
    good = bench.run_naive(x, dout, gamma, beta)
    bench.check_close("naive", good, good, (16, 4))  # agreeing outputs pass
    wrong_dx = good[1].copy()
    wrong_dx[0, 0] += 1e-2 * np.abs(wrong_dx).max()
    with pytest.raises(SystemExit, match="FAILED correctness: bnlib dx"):
        bench.check_close("bnlib", (good[0], wrong_dx, good[2], good[3]), good, (16, 4))


# --------------------------------------------------------------- memory ----
def _peak_extra(fn):
    """Peak bytes allocated while ``fn`` runs, everything it returns kept alive."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        kept = fn()  # noqa: F841 -- the results count, as they would in a network
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "shape, axis",
    [((2048, 512), 1), ((32, 32, 32, 32), 1), ((32, 16, 32, 64), -1), ((4095, 300), 1)],
    ids=["N,D", "N,C,H,W", "N,H,W,C", "N,D-with-leftover-rows"],
)
def test_forward_plus_backward_keeps_at_most_three_input_sized_arrays(shape, axis):
    """out, cache.xhat and dx are the budget; every scratch array is far smaller.

    Inputs of 8-10 MB, so that the fixed-size scratch (tiles of at most a few
    hundred KB) stays a few percent of an input size.

    The lower bound checks that the measurement sees numpy's arrays at all
    (out, xhat and dx must be counted), so that the upper bound means something.
    """
    rng = np.random.default_rng(7)
    x = 5 * rng.standard_normal(shape) + 12
    dout = rng.standard_normal(shape)
    C = shape[axis]
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)

    def forward():
        return bnlib.batchnorm_forward(x, gamma, beta, axis=axis)

    def both():
        out, cache = bnlib.batchnorm_forward(x, gamma, beta, axis=axis)
        return out, cache, bnlib.batchnorm_backward(dout, cache)

    both()  # first call out of the measurement: numpy's one-time set-up is not the kernel's
    fwd = _peak_extra(forward) / x.nbytes
    total = _peak_extra(both) / x.nbytes
    assert 1.9 <= fwd <= 2.25, f"forward: expected out and xhat (2 input sizes) plus small scratch, got {fwd:.3f} input sizes"
    assert 2.9 <= total <= 3.25, (
        f"forward + backward: expected at most 3 input sizes (out, xhat, dx) plus small scratch, got {total:.3f}"
    )


# ------------------------------------------------------------- accuracy ----
def _textbook(x, gamma, beta, dout, axis, eps):
    axes = tuple(i for i in range(x.ndim) if i != axis)
    shp = [1] * x.ndim
    shp[axis] = -1
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    xhat = (x - mu) / np.sqrt(var + eps)
    out = gamma.reshape(shp) * xhat + beta.reshape(shp)
    n = x.size // x.shape[axis]
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    dx = gamma.reshape(shp) / np.sqrt(var + eps) * (dout - dbeta.reshape(shp) / n - xhat * dgamma.reshape(shp) / n)
    return out, dx, dgamma, dbeta


@pytest.mark.parametrize(
    "shape, axis, layout",
    [
        ((3, 5), 1, "small: broadcasting"),
        ((1000, 40), 1, "long rows, leftover rows"),
        ((37, 6, 9, 11), 1, "NCHW long rows, leftover samples"),
        ((9, 20, 20, 6), -1, "channels last, long rows"),
        ((3, 4, 70000), 1, "a sample longer than a tile"),
        ((300, 64), 1, "non-contiguous input"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_fast_kernels_match_the_textbook_formulas_in_float64_on_every_layout_path(shape, axis, layout):
    rng = np.random.default_rng(11)
    eps = 1e-5
    x = 5 * rng.standard_normal(shape) + 12
    dout = rng.standard_normal(shape)
    if layout == "non-contiguous input":
        x, dout = np.asfortranarray(x), np.asfortranarray(dout)
    C = shape[axis]
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    out, cache = bnlib.batchnorm_forward(x, gamma, beta, axis=axis, eps=eps)
    dx, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
    ref = _textbook(x, gamma, beta, dout, axis % x.ndim, eps)
    for name, got, want in zip(("out", "dx", "dgamma", "dbeta"), (out, dx, dgamma, dbeta), ref):
        err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
        assert err < 1e-12, f"{name} for {layout} {shape}: expected agreement to 1e-12 (relative to max), got {err:.3g}"
    staged = bnlib.batchnorm_backward_staged(dout, cache)
    for name, a, b in zip(("dx", "dgamma", "dbeta"), staged, (dx, dgamma, dbeta)):
        err = np.abs(a - b).max()
        assert err < 1e-10, f"staged vs closed-form {name} for {layout}: expected agreement to 1e-10, got {err:.3g}"


def test_fast_kernels_use_every_layout_path_the_accuracy_test_names():
    """Guards the test above: each named case really takes the path it names."""
    cases = {
        "small: broadcasting": ((3, 5, 1), False),
        "long rows, leftover rows": ((1000, 40, 1), True),
        "NCHW long rows, leftover samples": ((37, 6, 99), True),
        "a sample longer than a tile": ((3, 4, 70000), False),
    }
    for name, (shape3, long_rows) in cases.items():
        lay = _kernels.Layout(shape3, np.float64, np.zeros(shape3))
        assert lay.long_rows is long_rows, f"{name}: expected long_rows={long_rows}, got {lay.long_rows}"
        if long_rows:
            assert lay.main < shape3[0], f"{name}: expected leftover samples after the long rows (main={lay.main}, A={shape3[0]})"
    fortran = np.asfortranarray(np.zeros((300, 64)))[:, :, None]
    assert not _kernels.Layout(fortran.shape, np.float64, fortran).long_rows, (
        "non-contiguous input must fall back to broadcasting"
    )


def test_float32_forward_and_backward_keep_float32_and_agree_with_float64_to_float32_tolerance():
    rng = np.random.default_rng(5)
    x = (3 * rng.standard_normal((512, 64, 1, 3)) + 2).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    gamma = (1 + 0.5 * rng.standard_normal(64)).astype(np.float32)
    beta = rng.standard_normal(64).astype(np.float32)
    out, cache = bnlib.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
    assert out.dtype == dx.dtype == dgamma.dtype == dbeta.dtype == np.float32
    ref = _textbook(x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64), dout.astype(np.float64), 1, 1e-5)
    for name, got, want in zip(("out", "dx", "dgamma", "dbeta"), (out, dx, dgamma, dbeta), ref):
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 1e-5, f"float32 {name}: expected relative error < 1e-5, got {err:.3g}"

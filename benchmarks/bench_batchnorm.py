#!/usr/bin/env python
"""Time bnlib's training-mode batch norm (forward + backward) against PyTorch's
CPU kernel and a naive textbook numpy version, in one process (GitHub issue #2).

Usage::

    python benchmarks/bench_batchnorm.py                 # full shapes, 15 repeats
    python benchmarks/bench_batchnorm.py --repeat 31 --json /tmp/bench.json
    python benchmarks/bench_batchnorm.py --quick         # tiny shapes, seconds (smoke test)

What is timed, per shape, all float32:

* ``bnlib``   -- ``bnlib.batchnorm_forward`` then ``bnlib.batchnorm_backward``
  (numpy, single-threaded for these element-wise ops and reductions);
* ``torch``   -- ``torch.nn.functional.batch_norm(..., training=True)`` with no
  running statistics, then ``torch.autograd.grad`` for x, weight and bias,
  under ``torch.set_num_threads(T)`` for each ``T`` of ``--threads``;
* ``naive``   -- the CS231n textbook version written below (``x.mean``,
  ``x.var``, one temporary per expression).

Each repeat runs bnlib, naive and torch at 1 thread once each, in a rotated
order, so that load from other processes hits them alike (torch at more
threads is timed after them, alone, so that its thread pool does not disturb
the 1-thread timings); the table reports the median over the
repeats of two clocks: wall time (``time.perf_counter``), the figure the
target is about, and the CPU time of the calling thread
(``time.thread_time``), which is much less disturbed when other processes
compete for the cores. Both bnlib, the naive version and torch at 1 thread
run entirely on the calling thread, so their CPU times compare; torch at 2
threads does not (its second thread is not counted), and gets no CPU ratio.
The load average before and after is printed: on a busy machine trust the
CPU-time ratios more than the wall-time ones. Both clocks include the page
faults of first touching freshly allocated outputs, as a training loop would
pay them (bnlib allocates three input-sized arrays per step, out, xhat and dx;
torch two; see ``faults/call`` below for who actually faults). ``bnlib-out`` is the same bnlib call with ``out=``/``xhat_out=``
and the backward's ``out=`` reusing three buffers made once, the steady state
of a loop that keeps its buffers; its peak extra memory excludes those buffers.

Threads: torch runs under ``torch.set_num_threads(T)``; numpy's BLAS (which
bnlib's ``vecdot`` may reach) is pinned to one thread by ``OPENBLAS_NUM_THREADS``
and ``MKL_NUM_THREADS`` (set to 1 before numpy is imported, unless already
set) and, with threadpoolctl installed, limited to one thread for the run
whatever the environment says; the header prints the thread count the BLAS
library itself reports. numpy's element-wise ufuncs and reductions are
single-threaded.

Page faults: the ``faults/call`` column counts minor page faults per call
(process-wide, ``getrusage``, in untimed calls after the timed ones): the
first touches of fresh output pages, which both clocks pay. It shows who
faults in fresh arrays on every call (torch, whose allocator hands large
blocks back to the system) and who does not (``bnlib-out``; the allocating
``bnlib`` mostly gets glibc's recycled pages).

Back to back: the interleaving above lets the allocating ``bnlib`` recycle
the pages torch and the naive version have just freed, which hides what
``out=`` saves. The line "bnlib back to back" times ``bnlib`` and
``bnlib-out`` each called ``--repeat`` times in a row (CPU time, median), as in
a loop of bnlib alone, with their page faults per call.

Before any timing, the outputs and all three gradients of bnlib and of the
naive version are checked against PyTorch to float32 tolerance, so the
benchmark cannot time a wrong kernel.

The target (issue #2) is ``bnlib / torch <= 1.0`` at the SAME thread count,
i.e. against torch at 1 thread, since bnlib runs on one core. The ratio to
torch at 2 threads is printed too, for honesty.

Peak extra memory is measured with :mod:`tracemalloc` (numpy reports its
array allocations to it) in a separate, untimed run: the tracing starts after
``x``, ``dout``, ``gamma`` and ``beta`` exist, so they are not counted;
everything numpy allocates during forward + backward is counted, including what
is still alive at the end (``out``, the cache's ``xhat``, ``dx``) and every
transient temporary. ``out`` is kept alive through the backward pass, as a
network would. The figure is the peak in units of ``x.nbytes``; 3.0 is the
budget (out, xhat, dx), the few hundredths above it are bnlib's small scratch
(per-channel vectors expanded to at most 64K elements). For the tiny
``--quick`` shapes that scratch is comparable to the input and the figure is
meaningless. PyTorch's allocations are not visible to tracemalloc and are not reported.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

# bnlib's reductions may reach BLAS (``vecdot`` uses its dot product); pin BLAS
# to one thread so that it cannot quietly add a core. Before numpy is imported.
# main() also limits it with threadpoolctl where installed, and prints the
# thread count numpy's BLAS reports, so that a different setting is visible.
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402 - after the BLAS thread settings above, which it reads when imported

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bnlib  # noqa: E402 - from this checkout: after its folder is put on sys.path

EPS = 1e-5
FULL_SHAPES = [(4096, 1024), (64, 64, 32, 32)]
QUICK_SHAPES = [(64, 32), (4, 8, 6, 6)]


# ------------------------------------------------------------ naive numpy ----
def naive_forward(x, gamma, beta, eps=EPS):
    """CS231n textbook forward: statistics over every axis but 1."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    xmu = x - mu
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = xmu * inv_std
    out = gamma.reshape(shape) * xhat + beta.reshape(shape)
    return out, (xhat, gamma.reshape(shape), inv_std, axes)


def naive_backward(dout, cache):
    """CS231n textbook closed-form backward."""
    xhat, gamma, inv_std, axes = cache
    n = dout.size // dout.shape[1]
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    dxhat = dout * gamma
    dx = (1.0 / n) * inv_std * (
        n * dxhat - dxhat.sum(axis=axes, keepdims=True) - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True)
    )
    return dx, dgamma, dbeta


# ----------------------------------------------------------------- runners ----
def make_inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (3.0 * rng.standard_normal(shape) + 2.0).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    gamma = (1.0 + 0.5 * rng.standard_normal(C)).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    return x, dout, gamma, beta


def run_bnlib(x, dout, gamma, beta):
    out, cache = bnlib.batchnorm_forward(x, gamma, beta, axis=1, eps=EPS)
    dx, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
    return out, dx, dgamma, dbeta


def bnlib_out_runner(x, dout, gamma, beta):
    """bnlib in a training loop's steady state: ``out=``/``xhat_out=`` and the
    backward ``out=`` reuse three buffers made once, so no call faults in fresh
    input-sized pages (numpy ufuncs' own ``out=`` idiom)."""
    out, xhat, dx = (np.empty_like(x) for _ in range(3))

    def run(x=x, dout=dout, gamma=gamma, beta=beta):
        o, cache = bnlib.batchnorm_forward(x, gamma, beta, axis=1, eps=EPS, out=out, xhat_out=xhat)
        d, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache, out=dx)
        return o, d, dgamma, dbeta

    return run


def run_naive(x, dout, gamma, beta):
    out, cache = naive_forward(x, gamma, beta)
    dx, dgamma, dbeta = naive_backward(dout, cache)
    return out, dx, dgamma, dbeta


def torch_runner(torch, x, dout, gamma, beta, threads):
    import torch.nn.functional as F

    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(gamma.copy()).requires_grad_(True)
    bt = torch.from_numpy(beta.copy()).requires_grad_(True)
    gt = torch.from_numpy(dout)

    def run():
        out = F.batch_norm(xt, None, None, wt, bt, training=True, eps=EPS)
        dx, dw, db = torch.autograd.grad(out, (xt, wt, bt), grad_outputs=gt)
        return out, dx, dw, db

    def setup():  # outside the timed region: changing the thread count costs time
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    return setup, run


def check_close(name, got, ref, shape):
    """float32 tolerance: |got - ref| <= 2e-4 * max|ref| + 1e-4 * |ref|, per output."""
    labels = ("out", "dx", "dgamma", "dbeta")
    for label, g, r in zip(labels, got, ref):
        g = np.asarray(g.detach().numpy() if hasattr(g, "detach") else g, dtype=np.float64)
        r = np.asarray(r.detach().numpy() if hasattr(r, "detach") else r, dtype=np.float64)
        if g.shape != r.shape:
            raise SystemExit(f"FAILED correctness: {name} {label} for shape {shape}: expected shape {r.shape}, got {g.shape}")
        tol = 2e-4 * np.abs(r).max() + 1e-4 * np.abs(r)
        err = np.abs(g - r)
        if not (err <= tol).all():
            raise SystemExit(
                f"FAILED correctness: {name} {label} for shape {shape} differs from torch: "
                f"max abs error {err.max():.3g}, expected <= 2e-4 * max|ref| ({2e-4 * np.abs(r).max():.3g}) + 1e-4 * |ref|"
            )


def peak_extra_memory(fn, x, dout, gamma, beta):
    """Peak bytes numpy allocates during ``fn`` (inputs excluded), in units of x.nbytes."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn(x, dout, gamma, beta)  # noqa: F841 -- out, dx kept alive: they count
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak / x.nbytes


def numpy_blas_one_thread():
    """Limit numpy's BLAS to one thread for the run and say what it reports.

    Returns ``(restore, description)``, ``restore()`` undoing the limit. With threadpoolctl installed the limit is
    applied (whatever the environment says) and the description is what the
    BLAS library itself reports inside it; without it, only the environment
    variables set before numpy was imported act, and the description says so.
    """
    env = ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in BLAS_THREAD_VARS)
    try:
        import threadpoolctl
    except ImportError:
        return (lambda: None), f"numpy BLAS threads: not checked (no threadpoolctl); {env}"
    limit = threadpoolctl.threadpool_limits(limits=1, user_api="blas")
    libs = [m for m in threadpoolctl.threadpool_info() if m["user_api"] == "blas" and "numpy" in m["filepath"]]
    if not libs:
        return limit.restore_original_limits, f"numpy BLAS threads: no BLAS library of numpy's found by threadpoolctl; {env}"
    desc = "; ".join(f"{m['internal_api']} {m['version']}: {m['num_threads']} thread(s)" for m in libs)
    if any(m["num_threads"] != 1 for m in libs):
        limit.restore_original_limits()
        raise SystemExit(f"numpy's BLAS must run on 1 thread for a 1-thread comparison; it reports {desc} ({env})")
    return limit.restore_original_limits, f"numpy BLAS limited to 1 thread with threadpoolctl, and reports {desc}; {env}"


def minor_faults_per_call(setup, fn, calls=3):
    """Page faults (first touches of a fresh page) per call, process-wide, untimed."""
    setup()
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def back_to_back(fn, repeat, warmup=2):
    """``fn`` called ``repeat`` times in a row, as a training loop would (after
    ``warmup`` calls): median CPU ms of the calling thread and page faults per call."""
    for _ in range(warmup):
        fn()
    cpu = []
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeat):
        c0 = time.thread_time()
        fn()
        cpu.append(time.thread_time() - c0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / repeat
    return statistics.median(cpu) * 1e3, faults


def thread_counts(arg):
    default = [1, 2] if (os.cpu_count() or 1) >= 2 else [1]
    counts = [int(t) for t in arg.split(",")] if arg else default
    if any(t < 1 for t in counts) or 1 not in counts:
        raise SystemExit(f"--threads must be a comma-separated list of counts >= 1 that includes 1; got {arg!r}")
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=15, help="timed repeats per implementation (median reported; default 15)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per implementation first (default 2)")
    p.add_argument(
        "--threads", default=None, help="torch thread counts, comma-separated (default: 1,2 on a machine with >= 2 cores, else 1)"
    )
    p.add_argument("--quick", action="store_true", help=f"tiny shapes {QUICK_SHAPES}, for the smoke test")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    args = p.parse_args(argv)
    if args.repeat < 1:
        raise SystemExit(f"--repeat must be >= 1; got {args.repeat}")

    import torch

    threads = thread_counts(args.threads)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    torch_threads_before = torch.get_num_threads()
    restore_blas_threads, blas_desc = numpy_blas_one_thread()

    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "numpy_blas_threads": blas_desc,
        "torch_threads": threads,
        "repeat": args.repeat,
        "dtype": "float32",
    }
    info["load_average_before"] = os.getloadavg()
    print(
        f"bnlib batch-norm benchmark: forward + backward, training mode, float32; median of {args.repeat} repeats\n"
        f"python {info['python']}, numpy {info['numpy']}, torch {info['torch']}, {info['cpu_count']} CPU(s); "
        f"bnlib and naive use 1 thread, torch uses {', '.join(map(str, threads))} (torch.set_num_threads)\n"
        f"{blas_desc}"
    )

    results = []
    for shape in shapes:
        x, dout, gamma, beta = make_inputs(shape)
        impls = {
            "bnlib": functools.partial(run_bnlib, x, dout, gamma, beta),
            "bnlib-out": bnlib_out_runner(x, dout, gamma, beta),
            "naive": functools.partial(run_naive, x, dout, gamma, beta),
        }
        setups = {"bnlib": lambda: None, "bnlib-out": lambda: None, "naive": lambda: None}
        for t in threads:
            setups[f"torch[{t}]"], impls[f"torch[{t}]"] = torch_runner(torch, x, dout, gamma, beta, t)

        # correctness first: never time a wrong kernel
        setups["torch[1]"]()
        ref = impls["torch[1]"]()
        check_close("bnlib", impls["bnlib"](), ref, shape)
        check_close("bnlib-out", impls["bnlib-out"](), ref, shape)
        check_close("naive", impls["naive"](), ref, shape)
        del ref

        names = list(impls)
        for name in names:
            setups[name]()
            for _ in range(args.warmup):
                impls[name]()
        times = {name: [] for name in names}
        cpu = {name: [] for name in names}
        # the 1-thread implementations interleaved; torch at more threads in a
        # phase of its own, so that its thread pool never idles (or spins)
        # next to a 1-thread measurement
        phases = [["bnlib", "bnlib-out", "naive", "torch[1]"]] + [[f"torch[{t}]"] for t in threads if t > 1]
        for phase in phases:
            for r in range(args.repeat):
                k = r % len(phase)
                for name in phase[k:] + phase[:k]:  # rotate the order every repeat
                    setups[name]()
                    c0, t0 = time.thread_time(), time.perf_counter()
                    impls[name]()
                    t1, c1 = time.perf_counter(), time.thread_time()
                    times[name].append(t1 - t0)
                    cpu[name].append(c1 - c0)
        faults = {name: minor_faults_per_call(setups[name], impls[name]) for name in names}
        loop = {name: back_to_back(impls[name], args.repeat) for name in ("bnlib", "bnlib-out")}
        torch.set_num_threads(torch_threads_before)

        med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        cmed = {name: statistics.median(v) * 1e3 for name, v in cpu.items()}
        mem = {
            "bnlib": peak_extra_memory(run_bnlib, x, dout, gamma, beta),
            "naive": peak_extra_memory(run_naive, x, dout, gamma, beta),
            "bnlib-out": peak_extra_memory(lambda *a, run=impls["bnlib-out"]: run(*a), x, dout, gamma, beta),
        }
        for name in names:
            t = int(name[6:-1]) if name.startswith("torch[") else 1
            results.append(
                {
                    "shape": list(shape),
                    "impl": name,
                    "threads": t,
                    "median_ms": med[name],
                    "min_ms": min(times[name]) * 1e3,
                    "cpu_median_ms": cmed[name] if t == 1 else None,
                    "ratio_to_torch_same_threads": med[name] / med[f"torch[{t}]"],
                    "cpu_ratio_to_torch_1": cmed[name] / cmed["torch[1]"] if t == 1 else None,
                    "ratio_to_naive": med[name] / med["naive"],
                    "peak_extra_memory_x": mem.get(name),
                    "minor_faults_per_call": faults[name],
                    "back_to_back_cpu_ms": loop[name][0] if name in loop else None,
                    "back_to_back_faults_per_call": loop[name][1] if name in loop else None,
                }
            )

    print()
    header = (
        f"{'shape':<18} {'impl':<9} {'threads':>7} {'wall ms':>8} {'min ms':>7} {'cpu ms':>7} "
        f"{'wall/torch same T':>17} {'cpu/torch[1]':>12} {'wall/naive':>10} {'peak extra mem':>15} {'faults/call':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        mem = "" if r["peak_extra_memory_x"] is None else f"{r['peak_extra_memory_x']:.2f} x input"
        cpu_ms = "" if r["cpu_median_ms"] is None else f"{r['cpu_median_ms']:.2f}"
        cpu_ratio = "" if r["cpu_ratio_to_torch_1"] is None else f"{r['cpu_ratio_to_torch_1']:.2f}"
        print(
            f"{str(tuple(r['shape'])):<18} {r['impl']:<9} {r['threads']:>7} {r['median_ms']:>8.2f} {r['min_ms']:>7.2f} "
            f"{cpu_ms:>7} "
            f"{r['ratio_to_torch_same_threads']:>17.2f} {cpu_ratio:>12} {r['ratio_to_naive']:>10.2f} {mem:>15} "
            f"{r['minor_faults_per_call']:>11.0f}"
        )
    print()
    summary = []
    for shape in shapes:
        rows = {r["impl"]: r for r in results if tuple(r["shape"]) == shape}
        b = rows["bnlib"]
        line = {
            "shape": list(shape),
            "bnlib_over_naive": b["median_ms"] / rows["naive"]["median_ms"],
            "naive_over_torch_1": rows["naive"]["median_ms"] / rows["torch[1]"]["median_ms"],
        }
        for t in threads:
            line[f"bnlib_over_torch_{t}"] = b["median_ms"] / rows[f"torch[{t}]"]["median_ms"]
        line["bnlib_over_torch_1_cpu"] = b["cpu_ratio_to_torch_1"]
        line["bnlib_peak_extra_memory_x"] = b["peak_extra_memory_x"]
        line["bnlib_out_over_torch_1"] = rows["bnlib-out"]["median_ms"] / rows["torch[1]"]["median_ms"]
        line["bnlib_out_over_torch_1_cpu"] = rows["bnlib-out"]["cpu_ratio_to_torch_1"]
        for key, names_ in (
            ("minor_faults_per_call", ("bnlib", "bnlib-out", "torch[1]")),
            ("back_to_back_cpu_ms", ("bnlib", "bnlib-out")),
            ("back_to_back_faults_per_call", ("bnlib", "bnlib-out")),
        ):
            line[key] = {name: rows[name][key] for name in names_}
        summary.append(line)
        verdict = "meets" if line["bnlib_over_torch_1"] <= 1.0 else "misses"
        print(
            f"ratio bnlib/torch[1 thread] {tuple(shape)}: {line['bnlib_over_torch_1']:.2f} wall "
            f"({verdict} the target <= 1.0, same thread count); {line['bnlib_over_torch_1_cpu']:.2f} in CPU time"
        )
        verdict = "meets" if line["bnlib_out_over_torch_1"] <= 1.0 else "misses"
        print(
            f"ratio bnlib out=/torch[1 thread] {tuple(shape)}: {line['bnlib_out_over_torch_1']:.2f} wall "
            f"({verdict} the target <= 1.0; buffers reused across steps); {line['bnlib_out_over_torch_1_cpu']:.2f} in CPU time"
        )
        for t in threads[1:]:
            print(f"ratio bnlib/torch[{t} threads] {tuple(shape)}: {line[f'bnlib_over_torch_{t}']:.2f} (bnlib stays on 1 thread)")
        print(
            f"ratio bnlib/naive {tuple(shape)}: {line['bnlib_over_naive']:.2f}; "
            f"naive/torch[1 thread]: {line['naive_over_torch_1']:.2f}"
        )
        print(
            f"peak extra memory bnlib fwd+bwd {tuple(shape)}: {line['bnlib_peak_extra_memory_x']:.2f} x input "
            "(out, cache.xhat, dx and every temporary; x and dout not counted)"
        )
        f = line["minor_faults_per_call"]
        print(
            f"page faults per call {tuple(shape)}: bnlib {f['bnlib']:.0f}, bnlib out= {f['bnlib-out']:.0f}, "
            f"torch[1 thread] {f['torch[1]']:.0f} (first touches of fresh output pages, counted in both clocks)"
        )
        ms, f = line["back_to_back_cpu_ms"], line["back_to_back_faults_per_call"]
        print(
            f"bnlib back to back, {args.repeat} calls in a row {tuple(shape)}: allocating {ms['bnlib']:.2f} ms CPU "
            f"({f['bnlib']:.0f} page faults/call), out= {ms['bnlib-out']:.2f} ms CPU ({f['bnlib-out']:.0f}); "
            f"out=/allocating {ms['bnlib-out'] / ms['bnlib']:.2f} (a loop of bnlib alone: nothing else frees pages to recycle)"
        )
    info["load_average_after"] = os.getloadavg()
    print(
        f"load average (1, 5, 15 min) before {', '.join(f'{v:.2f}' for v in info['load_average_before'])}; "
        f"after {', '.join(f'{v:.2f}' for v in info['load_average_after'])} on {info['cpu_count']} CPU(s)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"info": info, "results": results, "summary": summary}, indent=2) + "\n")
        print(f"wrote {args.json}")
    restore_blas_threads()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The probes: run a learner's function on inputs that let no mistake hide,
and turn what it returns into plain arrays. Numpy only; no reference code.

A test cell of an exercise notebook calls, for example::

    from bncheck import check_forward
    check_forward(batchnorm_forward, seed=0)

Each ``check_<what>`` builds its inputs from ``seed`` (small batches, N in
2..5, where ``n`` and ``n - 1`` differ a lot; ``x = 5 * randn + 12``; gamma
and beta far from 1 and 0; an ``eps`` large enough that its place matters),
calls the learner's function on copies of them, checks that it left them
unchanged, and converts what comes back to plain ``float64`` ndarrays,
checking type, shape and dtype first, so an object that claims to equal
everything earns nothing. The **judge** (``bncheck.judges``) regenerates
the same inputs, computes bnlib's reference, compares, and if they differ
recomputes the answer with each mistake of a catalog (unbiased variance, eps
outside the square root, wrong axis, ...) to name the one that matches.

Three ways this module runs:

- **a learner** runs a test cell: probe, then judge, at once; a failed check
  raises :class:`CheckFailed` (an ``AssertionError``) whose message starts
  with the mistake's name in brackets, e.g. ``[unbiased-variance]``;
- **the grader lists** the checks of a source notebook's test cell
  (``_COLLECT``, in the grader's own process): nothing runs;
- **the grader calls** one check in a graded kernel (``grader_call``),
  with parameters it chose (a hidden test's seed among them): the probe's
  arrays come back as text and the grader judges them in its own process,
  where the learner's code cannot reach the judge or the reference.
"""

from __future__ import annotations

import base64
import contextlib
import json

import numpy as np

__all__ = [
    "CheckFailed",
    "make_inputs",
    "check_forward",
    "check_backward",
    "check_running_layer",
    "check_scaler",
    "check_numerical_gradient",
    "check_layernorm",
    "check_layernorm_backward",
    "check_groupnorm",
    "check_groupnorm_backward",
]



class CheckFailed(AssertionError):
    """A learner's answer is wrong; ``mistake`` names the diagnosis (or None)."""

    def __init__(self, message: str, mistake: str | None = None):
        self.mistake = mistake
        self.message = message
        super().__init__(f"[{mistake}] {message}" if mistake else message)


# ------------------------------------------------------------ inputs ------
def _shape_for(seed: int, layout: str) -> tuple[int, ...]:
    r = np.random.default_rng(10_000 + seed)
    N = int(r.integers(2, 6))
    C = int(r.integers(2, 6))
    if layout == "ND":
        return (N, C)
    if layout == "NCHW":
        return (N, C, int(r.integers(2, 4)), int(r.integers(2, 4)))
    raise ValueError(f"layout must be 'ND' or 'NCHW'; got {layout!r}")


def make_inputs(seed: int, layout: str = "ND", shape=None):
    """Inputs on which no common mistake goes unnoticed.

    Returns
    -------
    x : ndarray, float64, ``5 * randn + 12`` of ``shape`` (drawn from ``seed``
        when None: N in 2..5 and C in 2..5, plus H, W in 2..3 for ``"NCHW"``)
    gamma, beta : ndarray, (C,)
        gamma in +-[0.5, 2], beta in about [-3, 3].
    eps : float
        In [0.1, 1]: large enough that its place in the formula matters.
    """
    shape = tuple(shape) if shape is not None else _shape_for(seed, layout)
    r = np.random.default_rng(seed)
    C = shape[1]
    x = 5.0 * r.standard_normal(shape) + 12.0
    gamma = r.uniform(0.5, 2.0, C) * r.choice([-1.0, 1.0], C)
    beta = 3.0 * r.standard_normal(C)
    eps = float(r.uniform(0.1, 1.0))
    return x, gamma, beta, eps


def backward_inputs(seed: int, shape=None):
    """``(dout, x, gamma, eps)`` for the backward checks, (N, D)."""
    x, gamma, _, eps = make_inputs(seed, "ND", shape)
    dout = np.random.default_rng(seed + 1).standard_normal(x.shape) * 2.0
    return dout, x, gamma, eps


def layer_setup(seed: int, convention: str, layout: str, steps: int):
    """``(C, momentum, eps, batches)`` for the running-statistics check."""
    if convention not in ("torch", "keras"):
        raise ValueError(f"convention must be 'torch' or 'keras'; got {convention!r}")
    r = np.random.default_rng(20_000 + seed)
    C = int(r.integers(2, 5))
    momentum = float(r.uniform(0.1, 0.4)) if convention == "torch" else float(r.uniform(0.6, 0.9))
    eps = float(r.uniform(0.01, 0.5))
    rb = np.random.default_rng(seed)
    base = _shape_for(seed, layout)
    shape = (base[0], C) + base[2:]
    offsets = (1, C) + (1,) * (len(shape) - 2)
    batches = [5.0 * rb.standard_normal(shape) + 12.0 + 3.0 * rb.standard_normal(offsets) for _ in range(steps)]
    return C, momentum, eps, batches


def scaler_data(seed: int):
    """``(X_train, X_test)`` for the scaler checks; the last feature is constant."""
    r = np.random.default_rng(30_000 + seed)
    n_train, n_test, D = int(r.integers(4, 9)), int(r.integers(3, 6)), int(r.integers(2, 5))
    scale = r.uniform(0.5, 50.0, D)
    X = r.standard_normal((n_train + n_test, D)) * scale + r.uniform(-20, 20, D)
    X[:, -1] = 7.0
    return X[:n_train], X[n_train:]


def gradient_probe(x):
    """A smooth function whose outputs couple all inputs: f(x) = sin(x) * sum(x**2)."""
    return np.sin(x) * np.sum(x**2)


def numgrad_setup(seed: int):
    """``(x, dout, h)`` for the numerical-gradient check."""
    r = np.random.default_rng(40_000 + seed)
    shape = (int(r.integers(2, 4)), int(r.integers(2, 4)))
    return r.standard_normal(shape), r.standard_normal(shape), float(r.choice([1e-4, 1e-5]))


# --------------------------------------------------- result conversion ----
def _plain(value, *, what: str, shape: tuple[int, ...], hint: str = "", finite: bool = True) -> np.ndarray:
    """``value`` as a plain float64 ndarray of ``shape``, or CheckFailed.

    Only a real ``numpy.ndarray`` (or a subclass, whose data is read through
    ndarray's own methods) is accepted: no lists, no objects with ``__eq__``
    or ``__array__`` of their own.
    """
    if value is None:
        raise CheckFailed(f"{what} is None: did you forget a `return` statement?", "returned-none")
    if not isinstance(value, np.ndarray):
        raise CheckFailed(
            f"{what} must be a numpy array of shape {shape}; got an object of type {type(value).__name__}",
            "not-an-array",
        )
    arr = np.ndarray.copy(np.ndarray.view(value, np.ndarray))
    if arr.dtype.kind != "f":
        raise CheckFailed(f"{what} must hold floating-point numbers; got dtype {arr.dtype}", "wrong-dtype")
    if arr.shape != tuple(shape):
        raise CheckFailed(
            f"{what} must have shape {tuple(shape)}; got shape {arr.shape}. {hint}".rstrip(), "wrong-shape"
        )
    arr = arr.astype(np.float64)
    if finite and not np.isfinite(arr).all():
        raise CheckFailed(f"{what} contains NaN or inf ({int((~np.isfinite(arr)).sum())} values)", "not-finite")
    return arr


def _close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-6, atol: float = 1e-8) -> bool:
    return bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))


# ------------------------------------------------- inputs left unchanged ---
#: A value the learner's function changed and put back by arithmetic (``x[i] += h``,
#: then ``x[i] -= 2 * h``, then ``x[i] += h``) is off by a few rounding errors, each at
#: most half a unit in the last place of the largest value involved; anything past
#: ULPS units in the last place of the array's largest magnitude counts as a change.
ULPS = 8


class _Values:
    """An array's contents in a snapshot; ``eps`` is its dtype's machine epsilon
    (None for integers and booleans, which must come back exactly)."""

    __slots__ = ("array", "eps")

    def __init__(self, array: np.ndarray, eps: float | None):
        self.array, self.eps = array, eps


def _values(arr: np.ndarray, eps: float | None = None) -> _Values:
    """A copy of ``arr``'s contents; ``eps`` defaults to that of its own floating dtype."""
    arr = np.array(np.ndarray.view(arr, np.ndarray), copy=True)
    if eps is None and arr.dtype.kind in "fc":
        eps = float(np.finfo(arr.dtype).eps)
    return _Values(arr, eps)


def _array_state(arr: np.ndarray) -> dict:
    """A numpy array's snapshot: dtype and shape, compared exactly, and its values."""
    return {("", "dtype"): str(arr.dtype), ("", "shape"): tuple(arr.shape), ("", "values"): _values(arr)}


def _value_change(before: _Values, after: _Values) -> str | None:
    """How ``after`` differs from ``before`` beyond :data:`ULPS` units in the last place
    of ``before``'s largest finite magnitude (NaN must stay NaN, inf must stay inf); None if it does not.
    A change of shape is not reported here: the snapshot's ``shape`` entry reports it."""
    b, a = before.array, after.array
    if b.shape != a.shape:
        return None
    if b.dtype.kind not in "fc" and a.dtype.kind not in "fc":  # integers and booleans: exactly
        bad = np.asarray(b != a)
        if not bad.any():
            return None
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        return (f"{int(bad.sum())} of {b.size} values changed (at index {i}: expected {b[i].item()!r}, "
                f"received {a[i].item()!r})")
    kind = np.complex128 if "c" in (b.dtype.kind, a.dtype.kind) else np.float64
    b64, a64 = b.astype(kind), a.astype(kind)
    finite = np.isfinite(b64)
    scale = float(np.max(np.abs(b64[finite]), initial=0.0))
    eps = before.eps if before.eps is not None else float(np.finfo(np.float64).eps)
    tol = ULPS * eps * 2.0 ** np.floor(np.log2(scale)) if scale > 0 else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a64 - b64)
        same = (a64 == b64) | (np.isnan(b64) & np.isnan(a64)) | (diff <= tol)
    if same.all():
        return None
    bad = ~same
    worst = np.where(bad, np.nan_to_num(diff, nan=np.inf), -1.0)
    i = np.unravel_index(int(np.argmax(worst)), b.shape)
    i = tuple(int(v) for v in i)
    amount = f", by up to {float(worst[i]):.3g}" if np.isfinite(worst[i]) else ""
    return (f"{int(bad.sum())} of {b.size} values changed{amount} (at index {i}: expected "
            f"{b64[i].item()!r}, received {a64[i].item()!r}; allowed: {ULPS} units in the last place of the "
            f"largest value, {tol:.3g})")


def _show(value) -> str:
    return value if isinstance(value, str) else repr(value)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN stays NaN
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:  # noqa: BLE001 - an object whose comparison fails is not the same
        return False


def _differences(before: dict, after: dict, name: str) -> list[tuple[tuple[str, str], str]]:
    """``(key, text)`` for each change between two snapshots of the argument ``name``.

    A snapshot maps ``(path, attribute)`` to a plain value (compared exactly) or
    :class:`_Values` (compared within :data:`ULPS`); ``path`` is the object's place
    inside the argument (``""``, ``".weight"``, ``"[1].running_mean"``). An entry that
    is gone counts as a change; a new entry counts only as part of a new object (a new
    parameter, buffer, layer or weight), not as a new attribute of an existing one.
    """
    def where(path, attr):
        return f"values of `{name}{path}`" if attr == "values" else f"`{name}{path}.{attr}`"

    changes = []
    old_paths = {path for path, _ in before}
    new_paths = {path for path, _ in after}
    gone = sorted(old_paths - new_paths)
    for path in gone:
        changes.append(((path, ""), f"`{name}{path}` is gone"))
    for key, old in before.items():
        if key[0] in gone:
            continue
        if key not in after:
            changes.append((key, f"{where(*key)} is gone"))
            continue
        new = after[key]
        if isinstance(old, _Values) and isinstance(new, _Values):
            text = _value_change(old, new)
            if text:
                changes.append((key, f"{where(*key)}: {text}"))
        elif not _same(old, new):
            changes.append((key, f"{where(*key)}: expected {_show(old)}, received {_show(new)}"))
    for path in sorted(new_paths - old_paths):
        changes.append(((path, ""), f"`{name}{path}` was added"))
    return changes


def _changed_message(what: str, name: str, changes: list, advice: str = "") -> str:
    shown = "; ".join(text for _, text in changes[:3])
    more = f"; and {len(changes) - 3} more changes" if len(changes) > 3 else ""
    return f"{what} changed its input `{name}`: {shown}{more}. {advice or 'It must leave its inputs as they were.'}"


def _arg_names(fn, n: int) -> list[str]:
    """The names ``fn`` gives its first ``n`` positional parameters (``args[i]`` where it gives none)."""
    import inspect

    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except Exception:  # noqa: BLE001 - a learner's callable without a readable signature
        params = []
    return [params[i].name if i < len(params) else f"args[{i}]" for i in range(n)]


def _call(fn, *args, what: str, unchanged=None, advice: str = "", **kwargs):
    """Call the learner's function on copies of the array ``args``; refuse in-place edits.

    Each numpy array is handed over as a copy, which must come back with the same
    dtype and shape and with values within :data:`ULPS` units in the last place
    (so an entry changed and put back by arithmetic counts as unchanged).
    ``unchanged``, when given, snapshots any other argument that the function must
    leave as it was (a torch module, a Keras layer: see
    :func:`bncheck.framework_probes._snapshot`), or returns None for one it may
    change; those arguments are handed over as they are. A change raises
    ``CheckFailed(..., "modified-input")`` saying what changed; ``advice`` ends its message.
    """
    copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]

    def snapshot(a):
        return _array_state(a) if isinstance(a, np.ndarray) else (unchanged(a) if unchanged else None)

    before = [snapshot(a) for a in args]
    try:
        result = fn(*copies, **kwargs)
    except NotImplementedError:
        raise CheckFailed(f"{what} is not implemented yet (it raised NotImplementedError)", "not-implemented") from None
    names = _arg_names(fn, len(args)) if any(old is not None for old in before) else []
    for i, (old, arg) in enumerate(zip(before, copies)):
        if old is None:
            continue
        name = names[i]
        changes = _differences(old, snapshot(arg), name)
        if changes:
            raise CheckFailed(_changed_message(what, name, changes, advice), "modified-input")
    return result


def _unpack(result, names: tuple[str, ...], what: str):
    if not isinstance(result, tuple) or len(result) != len(names):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else f"an object of type {type(result).__name__}"
        raise CheckFailed(f"{what} must return a tuple ({', '.join(names)}); got {got}", "wrong-return")
    return result


# ----------------------------------------------------- probe and submit ---
class _Hidden:
    """The seed of a hidden test (:data:`HIDDEN`)."""

    def __repr__(self):
        return "HIDDEN"


#: ``seed=HIDDEN`` in a source notebook's hidden tests: when a learner (or the
#: instructor) runs the notebook, a fresh random seed; when the grader lists the
#: checks, a seed drawn from the course's secret (``grading.plan``), handed to
#: the probe only when the check is called.
HIDDEN = _Hidden()

# Set by the grader (in its own process, never in a graded kernel) to list the
# checks a test cell makes, without running them: see grading.plan.
_COLLECT: list | None = None
# Set while the grader's call (:func:`grader_call`) runs in a graded kernel:
# the probe's results go here instead of to the judge.
_CAPTURE: list | None = None
# The learner's objects a test cell's hidden checks will call, bound by the grader
# at the test cell (the hidden checks run after the learner's last cell).
_BOUND: dict[str, tuple] = {}
MESSAGE_LIMIT = 2000  # characters of a learner's exception message kept in a record


def _seed(seed):
    """A concrete seed: :data:`HIDDEN` becomes a fresh random one, except while the grader lists checks."""
    if seed is HIDDEN and _COLLECT is None:
        return int(np.random.SeedSequence().entropy % (1 << 31))
    return seed


def _short(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters cut]"


def _probe(probe):
    """``(results, failure)`` of ``probe() -> {name: array}``; failure is ``(mistake, message)`` or None."""
    try:
        return probe(), None
    except CheckFailed as e:
        return _partial(e), (e.mistake, _short(e.message))
    except Exception as e:  # noqa: BLE001 - the learner's own error: the judge reports it
        return _partial(e), ("raised", _short(f"your code raised {type(e).__name__}: {e}"))


def _partial(error) -> dict:
    """What a check recorded before it failed (see :func:`_after`): judged before the failure is reported."""
    partial = getattr(error, "bncheck_partial", None)
    return partial if isinstance(partial, dict) else {}


def _after(recorded: dict, step):
    """Run ``step()``, a later part of a check; if it fails, the failure carries ``recorded``.

    A backward check runs the learner's forward pass first: when the backward
    pass then fails (raises, or returns the wrong kind of object), the judge
    still looks at the forward output, and a wrong forward pass is named as
    the cause (fix it first) instead of the backward's failure it led to.
    """
    try:
        return step()
    except Exception as e:
        with contextlib.suppress(Exception):  # an exception that takes no attribute carries nothing
            e.bncheck_partial = dict(recorded)
        raise


def _run(kind: str, targets: tuple, params: dict, probe) -> None:
    """Run ``probe() -> {name: array}`` on the learner's ``targets`` and judge it now;
    or, for the grader, list the check or capture its results."""
    if _COLLECT is not None:
        _COLLECT.append((kind, tuple(targets), dict(params)))
        return
    if _CAPTURE is not None:
        _CAPTURE.append(_probe(probe))
        return
    try:
        results = probe()  # a learner's own exception reaches them with its traceback
    except Exception as e:
        partial = _partial(e)
        if not partial:
            raise
        from .judges import judge_partial

        try:  # what the check recorded before it failed is judged first (a wrong forward pass is the cause)
            judge_partial(kind, params, partial)
        except CheckFailed as wrong:
            raise wrong from None
        raise
    from .registry import judge_function  # the judges load only here, never in a graded kernel

    judge_function(kind)(params, results)


def encode(results: dict, failure) -> str:
    """One check's results as JSON text: each array as ``[shape, base64 of little-endian float64]``."""
    arrays = {}
    for name, arr in results.items():
        arr = np.ascontiguousarray(np.ndarray.view(np.asarray(arr), np.ndarray), dtype="<f8")
        arrays[str(name)] = [list(arr.shape), base64.b64encode(arr.tobytes()).decode("ascii")]
    return json.dumps({"results": arrays, "failure": None if failure is None else [failure[0], _short(failure[1])]})


def grader_calls(calls: list) -> str:
    """:func:`grader_call` for each ``(kind, targets, params_json)`` of ``calls``, in one round trip: a JSON list."""
    return json.dumps([grader_call(kind, targets, params) for kind, targets, params in calls])


def bind(key: str, targets: tuple) -> str:
    """Keep ``targets`` (the learner's objects a test cell names) for that cell's hidden checks."""
    _BOUND[str(key)] = tuple(targets)
    return "bound"


def grader_call(kind: str, targets: tuple, params_json: str) -> str:
    """Run one check's probe for the grader, in the graded kernel; return :func:`encode`'s text.

    The grader executes ``grader_call(kind, (learner_function, ...), params)``
    after the learner's cells, with the check and its parameters (a hidden
    test's seed among them) chosen on the grader's side: nothing here judges.
    """
    global _CAPTURE
    from .registry import check_function

    check = check_function(kind)
    _CAPTURE = captured = []
    try:
        check(*targets, **json.loads(params_json))
    except BaseException as e:  # noqa: BLE001 - SystemExit and the like from the learner's code count as raised
        captured.append(({}, ("raised", _short(f"your code raised {type(e).__name__}: {e}"))))
    finally:
        _CAPTURE = None
    if not captured:
        captured.append(({}, ("did-not-run", "the check did not run")))
    return encode(*captured[-1])


# ------------------------------------------------------------ checkers ----
def check_forward(fn, *, seed: int = 0, layout: str = "ND", shape=None) -> None:
    """Check a learner's training-mode forward pass ``fn(x, gamma, beta, eps) -> out``.

    Parameters
    ----------
    fn : callable
        ``layout="ND"``: x of shape (N, D); ``layout="NCHW"``: x of shape (N, C, H, W).
    seed : int
        Chooses the shape (unless ``shape`` is given) and the values.

    Raises
    ------
    CheckFailed
        With the diagnosed mistake, e.g. ``[unbiased-variance]``.
    """
    seed = _seed(seed)
    params = {"seed": seed, "layout": layout, "shape": None if shape is None else list(shape)}

    def probe():
        x, gamma, beta, eps = make_inputs(seed, layout, shape)
        out = _call(fn, x, gamma, beta, eps, what="your forward pass")
        return {"out": _plain(out, what="the output", shape=x.shape)}

    _run("forward", (fn,), params, probe)


def check_backward(fn, *, seed: int = 0, shape=None) -> None:
    """Check ``fn(dout, x, gamma, eps) -> (dx, dgamma, dbeta)`` for (N, D) input.

    The learner's function recomputes the batch statistics from ``x``.
    Diagnoses: dgamma or dbeta not summed over the batch, swapped, and dx
    missing the paths through the mean or the variance.
    """
    seed = _seed(seed)
    params = {"seed": seed, "shape": None if shape is None else list(shape)}

    def probe():
        dout, x, gamma, eps = backward_inputs(seed, shape)
        result = _unpack(_call(fn, dout, x, gamma, eps, what="your backward pass"), ("dx", "dgamma", "dbeta"),
                         "your backward pass")
        D = x.shape[1]
        summed = "dgamma and dbeta get one value per feature: sum over the batch axis 0."
        return {
            "dx": _plain(result[0], what="dx", shape=x.shape),
            "dgamma": _plain(result[1], what="dgamma", shape=(D,), hint=summed),
            "dbeta": _plain(result[2], what="dbeta", shape=(D,), hint=summed),
        }

    _run("backward", (fn,), params, probe)


def _layer_running(layer, C: int):
    for attr in ("running_mean", "running_var"):
        if not hasattr(layer, attr):
            raise CheckFailed(f"your layer has no attribute `{attr}`", "missing-attribute")
    return (
        _plain(layer.running_mean, what="running_mean", shape=(C,)),
        _plain(layer.running_var, what="running_var", shape=(C,)),
    )


def check_running_layer(layer_cls, *, convention: str = "torch", seed: int = 0, layout: str = "NCHW", steps: int = 3) -> None:
    """Check a learner's layer class against bnlib's reference in one framework convention.

    The class is used as ``layer = layer_cls(C, momentum=m, eps=eps, convention=convention)``,
    then ``out = layer(x, training=True)`` for ``steps`` batches, then
    ``layer(x, training=False)``, and ``layer.running_mean`` / ``layer.running_var``
    are read, starting from zeros and ones. Input is ``(N, C)`` or ``(N, C, H, W)``,
    features on axis 1.
    """
    seed = _seed(seed)
    params = {"seed": seed, "convention": convention, "layout": layout, "steps": steps}

    def probe():
        C, momentum, eps, batches = layer_setup(seed, convention, layout, steps)
        try:
            layer = layer_cls(C, momentum=momentum, eps=eps, convention=convention)
        except NotImplementedError:
            raise CheckFailed("your layer is not implemented yet (it raised NotImplementedError)", "not-implemented") from None
        results = {}
        for i, x in enumerate(batches):
            out = _call(layer, x, what="your layer in training mode", training=True)
            results[f"train{i}"] = _plain(out, what=f"the training-mode output of step {i + 1}", shape=x.shape)
        results["rm"], results["rv"] = _layer_running(layer, C)
        x = batches[0][::-1].copy()
        out = _call(layer, x, what="your layer in inference mode", training=False)
        results["eval"] = _plain(out, what="the inference-mode output", shape=x.shape)
        results["rm_after_eval"], results["rv_after_eval"] = _layer_running(layer, C)
        return results

    _run("running_layer", (layer_cls,), params, probe)


def check_scaler(fit, transform, *, kind: str = "standard", seed: int = 0) -> None:
    """Check ``fit(X_train) -> stats`` and ``transform(X, stats) -> X_scaled``.

    ``kind="standard"``: z-scores with the training mean and (biased) std;
    ``kind="minmax"``: ``(X - min) / (max - min)`` with the training min and max.
    Constant features map to 0. The test data are scaled with the TRAINING
    statistics (the leakage trap).
    """
    if kind not in ("standard", "minmax"):
        raise ValueError(f"kind must be 'standard' or 'minmax'; got {kind!r}")
    seed = _seed(seed)
    params = {"seed": seed, "kind": kind}

    def probe():
        Xtr, Xte = scaler_data(seed)
        try:
            stats = fit(Xtr.copy())
        except NotImplementedError:
            raise CheckFailed("your fit function is not implemented yet (it raised NotImplementedError)",
                              "not-implemented") from None
        with np.errstate(all="ignore"):
            got_tr = _call(transform, Xtr, stats, what="your transform")
            got_te = _call(transform, Xte, stats, what="your transform")
        return {
            "train": _plain(got_tr, what="the scaled training data", shape=Xtr.shape, finite=False),
            "test": _plain(got_te, what="the scaled test data", shape=Xte.shape, finite=False),
        }

    _run("scaler", (fit, transform), params, probe)


def check_numerical_gradient(fn, *, seed: int = 0) -> None:
    """Check ``fn(f, x, dout, h=1e-5) -> grad``, the central-difference gradient
    of ``sum(f(x) * dout)`` with respect to ``x`` (equation ``grad-central``).

    The reference is :func:`bnlib.numerical_gradient` with the same ``h``, so a
    right answer agrees to rounding error, and a forward difference (error of
    order ``h``) does not.
    """
    seed = _seed(seed)
    params = {"seed": seed}

    def probe():
        x, dout, h = numgrad_setup(seed)
        grad = _call(fn, gradient_probe, x, dout, what="your numerical_gradient", h=h,
                     advice="You may change x while you work, but put every entry back before you return.")
        return {"grad": _plain(grad, what="the numerical gradient", shape=x.shape)}

    _run("numgrad", (fn,), params, probe)


# ------------------------------------------- layer norm and group norm ----
def layernorm_inputs(seed: int, layout: str = "ND", shape=None):
    """``(x, gamma, beta, eps, dout)`` for the layer-norm checks, normalized over the last axis.

    ``layout="ND"``: x of shape (N, D); ``"NLD"``: (N, L, D) (a batch of
    sequences). N in 2..5, L in 2..4, D in 3..6 unless ``shape`` is given.
    Every row (the values one mean is taken over) gets its own offset and
    scale, so that statistics over any other axis give other numbers; gamma
    and beta, one per element of the last axis, are far from 1 and 0, and
    eps is in [0.1, 1], large enough that its place matters.
    """
    if layout not in ("ND", "NLD"):
        raise ValueError(f"layout must be 'ND' or 'NLD'; got {layout!r}")
    if shape is None:
        r = np.random.default_rng(50_000 + seed)
        N, L, D = int(r.integers(2, 6)), int(r.integers(2, 5)), int(r.integers(3, 7))
        shape = (N, D) if layout == "ND" else (N, L, D)
    shape = tuple(shape)
    r = np.random.default_rng(seed)
    rows = shape[:-1] + (1,)
    x = 5.0 * r.standard_normal(shape) * r.uniform(0.3, 3.0, rows) + 12.0 + 8.0 * r.standard_normal(rows)
    D = shape[-1]
    gamma = r.uniform(0.5, 2.0, D) * r.choice([-1.0, 1.0], D)
    beta = 3.0 * r.standard_normal(D)
    eps = float(r.uniform(0.1, 1.0))
    dout = 2.0 * r.standard_normal(shape)
    return x, gamma, beta, eps, dout


def groupnorm_inputs(seed: int, shape=None, num_groups=None):
    """``(x, gamma, beta, num_groups, eps, dout)`` for the group-norm checks, x of shape (N, C, H, W).

    Unless given: N in 2..4, num_groups in 2..3 with 2 or 3 channels per
    group (so that contiguous and interleaved groups differ), H and W in
    2..3. Every sample and channel gets its own offset and scale, so that
    statistics over the wrong channels or axes give other numbers.
    """
    r = np.random.default_rng(60_000 + seed)
    G = int(r.integers(2, 4)) if num_groups is None else int(num_groups)
    if shape is None:
        shape = (int(r.integers(2, 5)), G * int(r.integers(2, 4)), int(r.integers(2, 4)), int(r.integers(2, 4)))
    shape = tuple(shape)
    if len(shape) != 4 or shape[1] % G:
        raise ValueError(f"shape must be (N, C, H, W) with C a multiple of num_groups = {G}; got {shape}")
    r = np.random.default_rng(seed)
    per = shape[:2] + (1, 1)
    x = 5.0 * r.standard_normal(shape) * r.uniform(0.3, 3.0, per) + 12.0 + 8.0 * r.standard_normal(per)
    C = shape[1]
    gamma = r.uniform(0.5, 2.0, C) * r.choice([-1.0, 1.0], C)
    beta = 3.0 * r.standard_normal(C)
    eps = float(r.uniform(0.1, 1.0))
    dout = 2.0 * r.standard_normal(shape)
    return x, gamma, beta, G, eps, dout


def _call_backward(backward, dout, cache, what: str):
    """``backward(dout, cache)`` on a copy of ``dout``, which it must leave unchanged; the cache is the learner's own."""
    before = _array_state(dout)
    copy = dout.copy()
    try:
        result = backward(copy, cache)
    except NotImplementedError:
        raise CheckFailed(f"{what} is not implemented yet (it raised NotImplementedError)", "not-implemented") from None
    changes = _differences(before, _array_state(copy), _arg_names(backward, 1)[0])
    if changes:
        raise CheckFailed(_changed_message(what, _arg_names(backward, 1)[0], changes), "modified-input")
    return result


def _norm_forward(fn, args: tuple, shape: tuple, what: str, **kwargs):
    """Call a learner's ``forward(*args) -> (out, cache)``; return ``(out as a plain array, cache)``."""
    out, cache = _unpack(_call(fn, *args, what=what, **kwargs), ("out", "cache"), what)
    return _plain(out, what=f"the output of {what}", shape=shape), cache


def _norm_backward(backward, dout, cache, param_shape: tuple, what: str) -> dict:
    result = _unpack(_call_backward(backward, dout, cache, what), ("dx", "dgamma", "dbeta"), what)
    summed = f"dgamma and dbeta get one value per element of gamma, shape {param_shape}: sum over the other axes."
    return {
        "dx": _plain(result[0], what="dx", shape=dout.shape),
        "dgamma": _plain(result[1], what="dgamma", shape=param_shape, hint=summed),
        "dbeta": _plain(result[2], what="dbeta", shape=param_shape, hint=summed),
    }


def check_layernorm(forward, *, seed: int = 0, layout: str = "ND", shape=None) -> None:
    """Check ``forward(x, gamma, beta, eps) -> (out, cache)``, layer norm over the last axis of x.

    ``layout="ND"``: x of shape (N, D); ``"NLD"``: (N, L, D). gamma and beta
    have shape (D,). Only ``out`` is checked; the cache is yours, for your
    backward pass. Diagnoses: statistics over the batch axis (batch norm),
    unbiased variance, eps outside the square root, gamma and beta left out.
    """
    seed = _seed(seed)
    params = {"seed": seed, "layout": layout, "shape": None if shape is None else list(shape)}

    def probe():
        x, gamma, beta, eps, _ = layernorm_inputs(seed, layout, shape)
        out, _ = _norm_forward(forward, (x, gamma, beta, eps), x.shape, "your layernorm_forward")
        return {"out": out}

    _run("layernorm", (forward,), params, probe)


def check_layernorm_backward(forward, backward, *, seed: int = 0, layout: str = "ND", shape=None) -> None:
    """Check ``backward(dout, cache) -> (dx, dgamma, dbeta)`` of layer norm, the cache from ``forward``.

    The forward pass runs first (on the same inputs as :func:`check_layernorm`)
    and its output is checked too: a backward pass fed the cache of a wrong
    forward pass cannot be right. dgamma and dbeta have shape (D,).
    Diagnoses: the paths through the mean or the variance missing, gamma
    taken out of the row means (as batch norm allows), sums over the batch
    axis instead of the normalized one.
    """
    seed = _seed(seed)
    params = {"seed": seed, "layout": layout, "shape": None if shape is None else list(shape)}

    def probe():
        x, gamma, beta, eps, dout = layernorm_inputs(seed, layout, shape)
        out, cache = _norm_forward(forward, (x, gamma, beta, eps), x.shape, "your layernorm_forward")
        grads = _after({"out": out}, lambda: _norm_backward(backward, dout, cache, gamma.shape, "your layernorm_backward"))
        return {"out": out, **grads}

    _run("layernorm_backward", (forward, backward), params, probe)


def check_groupnorm(forward, *, seed: int = 0, shape=None, num_groups=None) -> None:
    """Check ``forward(x, gamma, beta, num_groups, eps) -> (out, cache)``, group norm of (N, C, H, W) input.

    The C channels form ``num_groups`` groups of consecutive channels; gamma
    and beta have shape (C,). Only ``out`` is checked. Diagnoses: groups of
    interleaved channels, groups taken along the wrong axis, statistics per
    pixel or over the batch, layer or instance norm instead, unbiased
    variance, eps outside the square root.
    """
    seed = _seed(seed)
    params = {"seed": seed, "shape": None if shape is None else list(shape), "num_groups": num_groups}

    def probe():
        x, gamma, beta, G, eps, _ = groupnorm_inputs(seed, shape, num_groups)
        out, _ = _norm_forward(forward, (x, gamma, beta, G, eps), x.shape, "your groupnorm_forward")
        return {"out": out}

    _run("groupnorm", (forward,), params, probe)


def check_groupnorm_backward(forward, backward, *, seed: int = 0, shape=None, num_groups=None) -> None:
    """Check ``backward(dout, cache) -> (dx, dgamma, dbeta)`` of group norm, the cache from ``forward``.

    As :func:`check_layernorm_backward`: the forward pass runs first and is
    checked too. dgamma and dbeta have shape (C,).
    """
    seed = _seed(seed)
    params = {"seed": seed, "shape": None if shape is None else list(shape), "num_groups": num_groups}

    def probe():
        x, gamma, beta, G, eps, dout = groupnorm_inputs(seed, shape, num_groups)
        out, cache = _norm_forward(forward, (x, gamma, beta, G, eps), x.shape, "your groupnorm_forward")
        grads = _after({"out": out}, lambda: _norm_backward(backward, dout, cache, gamma.shape, "your groupnorm_backward"))
        return {"out": out, **grads}

    _run("groupnorm_backward", (forward, backward), params, probe)

"""Probes for the framework exercises (chapter 5, Keras; chapter 6, PyTorch).

They follow :mod:`bncheck.probes` and have the same two halves:

1. the **probe** (this module): it builds, from ``seed``, the inputs and the
   models the learner's function gets (random sizes that all differ,
   statistics far from 0 and 1, gamma of both signs, eps large enough to
   matter; every weight drawn from a numpy generator or a seeded torch
   generator, so the same seed builds the same model in any process), calls
   the learner's function, checks the type and shape of what comes back, and
   turns it into plain ``float64`` arrays: numbers, flags (0.0 / 1.0), layer
   configuration, weights, outputs on seeded inputs. It holds no reference
   and no catalog of mistakes;
2. the **judge** (``bncheck.framework_judges``): it builds the same setup again, asks the
   framework for the right answer, compares, and on a mismatch raises
   :class:`~bncheck.probes.CheckFailed` naming the mistake, e.g.
   ``[forgot-eval]``.

A learner running the notebook gets both at once; during grading the grader
calls the probe (``bncheck.probes.grader_call``) and judges its arrays in
its own process.

Keras and PyTorch are imported inside the functions, so ``bncheck`` still
imports with numpy alone. The Keras checkers expect ``KERAS_BACKEND`` and the
TensorFlow log settings to be chosen before Keras is first imported (the
exercise notebooks do it in their first cell). No checker prints to stderr:
nbgrader gives 0 to a test cell that does.
"""

from __future__ import annotations

import sys

import numpy as np

from .probes import CheckFailed, _array_state, _call, _changed_message, _differences, _plain, _run, _seed, _values

__all__ = [
    "check_sequence_bn",
    "check_param_counts",
    "check_freeze_batchnorm",
    "check_predict",
    "check_keras_bn_to_torch",
    "check_fold_into_linear",
]


def _flags(values) -> np.ndarray:
    """Booleans as a float64 array of 0.0 and 1.0 (records hold arrays only)."""
    return np.array([1.0 if v else 0.0 for v in values], dtype=np.float64).reshape(-1)


# ------------------------------------------------- inputs left unchanged ---
def _is_setting(value) -> bool:
    """A plain setting: a number, flag, string or None, or a list or tuple of them."""
    if isinstance(value, (list, tuple)):
        return all(_is_setting(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _tensor_state(path: str, t) -> dict:
    """A torch tensor's dtype, shape, device and requires_grad (compared exactly) and its values
    (within a few units in the last place of its own dtype)."""
    torch = _torch()
    data = t.detach().cpu()
    if data.is_floating_point() or data.is_complex():
        eps = float(torch.finfo(data.real.dtype if data.is_complex() else data.dtype).eps)
        values = data.to(torch.complex128 if data.is_complex() else torch.float64).numpy()
    else:
        eps, values = None, data.numpy()
    return {(path, "dtype"): str(t.dtype), (path, "shape"): tuple(t.shape), (path, "device"): str(t.device),
            (path, "requires_grad"): bool(t.requires_grad), (path, "values"): _values(values, eps)}


def _torch_path(name: str) -> str:
    """A dotted name of ``named_modules()`` or ``named_parameters()`` as Python reaches it: ``"1.weight"`` -> ``"[1].weight"``."""
    return "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in name.split(".")) if name else ""


def _module_state(module) -> dict:
    """A torch module's snapshot: the ``training`` flag and plain settings (eps, momentum, ...)
    of every submodule, and every parameter and buffer, by the names torch gives them."""
    state = {}
    for name, m in module.named_modules():
        path = _torch_path(name)
        state[(path, "training")] = bool(m.training)
        for attr, value in vars(m).items():
            if not attr.startswith("_") and attr != "training" and _is_setting(value):
                state[(path, attr)] = value
    for named in (module.named_parameters(), module.named_buffers()):
        for name, t in named:
            state.update(_tensor_state(_torch_path(name), t))
    return state


def _keras_state(obj) -> dict:
    """A Keras layer's or model's snapshot: ``trainable`` and plain settings (momentum, epsilon, ...)
    of it and of each of its layers, and each weight's dtype, shape, trainable flag and values."""
    state = {}

    def visit(layer, path):
        state[(path, "trainable")] = bool(layer.trainable)
        try:
            config = layer.get_config()
        except Exception:  # noqa: BLE001 - a layer without a config: its flags and weights still count
            config = {}
        for attr, value in config.items():
            if attr not in ("name", "trainable") and _is_setting(value):
                state[(path, attr)] = value
        for i, sub in enumerate(getattr(layer, "layers", None) or ()):
            visit(sub, f"{path}.layers[{i}]")

    visit(obj, "")
    for i, w in enumerate(obj.weights):
        path = f".{w.name}" if getattr(obj, str(w.name), None) is w else f".weights[{i}]"
        state[(path, "dtype")] = str(w.dtype)
        state[(path, "shape")] = tuple(int(d) for d in w.shape)
        state[(path, "trainable")] = bool(w.trainable)
        state[(path, "values")] = _values(_knp(w))
    return state


def _snapshot(obj) -> dict | None:
    """What a learner's function must leave as it was in an argument (see :func:`bncheck.probes._call`):
    a numpy array, a torch tensor or module, a Keras layer or model; None for any other object.
    A framework object exists only once its framework was imported, so none is imported here."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.nn.Module):
        return _module_state(obj)
    if torch is not None and isinstance(obj, torch.Tensor):
        return _tensor_state("", obj)
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(obj, keras.layers.Layer):
        return _keras_state(obj)
    if isinstance(obj, np.ndarray):
        return _array_state(obj)
    return None


# =============================================================== Keras ====
def _keras():
    import keras

    return keras


def _knp(value) -> np.ndarray:
    """A Keras variable or tensor as a numpy array (``np.array`` on a variable warns under numpy 2)."""
    return np.array(value.numpy() if hasattr(value, "numpy") else _keras().ops.convert_to_numpy(value), copy=True)


def _sizes(r, low, high, k):
    """``k`` distinct integers in [low, high)."""
    return [int(v) for v in r.choice(np.arange(low, high), size=k, replace=False)]


# --------------------------------------------------------- setups ---------
# The probe and the judge build the same inputs and models with these.
def sequence_input(seed: int):
    """``(N, T, F, x)``: a float32 batch of sequences ``(N, T, F)``, N, T and F all different."""
    r = np.random.default_rng(50_000 + seed)
    N, T, F = _sizes(r, 3, 9, 3)
    scale = r.uniform(0.5, 50.0, F)
    x = (scale * r.standard_normal((N, T, F)) + r.uniform(-100, 100, F)).astype(np.float32)
    return N, T, F, x


def count_sizes(seed: int):
    """``(n_in, n_hidden, n_out)``, all different, for the weight-count check."""
    return tuple(_sizes(np.random.default_rng(51_000 + seed), 2, 40, 3))


def freeze_setup(seed: int):
    """``(model, x)``: a Keras model of 2 or 3 Dense-BatchNormalization-ReLU blocks, every
    weight and moving statistic drawn from ``seed``, and a float32 batch for it."""
    keras = _keras()
    r = np.random.default_rng(52_000 + seed)
    n_in = int(r.integers(2, 6))
    blocks = int(r.integers(2, 4))
    layers = [keras.Input((n_in,))]
    for _ in range(blocks):
        layers += [keras.layers.Dense(int(r.integers(3, 7))), keras.layers.BatchNormalization(), keras.layers.ReLU()]
    layers.append(keras.layers.Dense(1))
    model = keras.Sequential(layers)
    for layer in model.layers:  # non-trivial weights and moving statistics, from the seed
        if isinstance(layer, keras.layers.BatchNormalization):
            C = layer.gamma.shape[0]
            layer.set_weights([
                (r.uniform(0.5, 2.0, C) * r.choice([-1.0, 1.0], C)).astype(np.float32),
                r.normal(0, 2, C).astype(np.float32),
                r.normal(0, 3, C).astype(np.float32),
                r.uniform(0.5, 4.0, C).astype(np.float32),
            ])
        elif layer.weights:
            layer.set_weights([r.normal(0, 1, w.shape).astype(np.float32) for w in layer.weights])
    x = (5 * r.standard_normal((int(r.integers(3, 7)), n_in)) + 12).astype(np.float32)
    return model, x


def _bn_layers(model):
    keras = _keras()
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _dense_layers(model):
    keras = _keras()
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]


def port_setup(seed: int):
    """``(layer, x)``: a built Keras BatchNormalization layer with momentum, epsilon, gamma,
    beta and moving statistics drawn from ``seed``, and a float32 batch ``(N, C)``."""
    keras = _keras()
    r = np.random.default_rng(61_000 + seed)
    C = int(r.integers(2, 7))
    momentum = float(r.uniform(0.8, 0.98))
    eps = float(r.uniform(0.01, 0.3))
    layer = keras.layers.BatchNormalization(momentum=momentum, epsilon=eps)
    layer.build((None, C))
    weights = [
        (r.uniform(0.5, 2.0, C) * r.choice([-1.0, 1.0], C)).astype(np.float32),
        r.normal(0, 2, C).astype(np.float32),
        r.normal(0, 3, C).astype(np.float32),
        r.uniform(0.05, 4.0, C).astype(np.float32),
    ]
    layer.set_weights(weights)
    x = (3 * r.standard_normal((int(r.integers(3, 7)), C)) + weights[2].astype(np.float64)).astype(np.float32)
    return layer, x


# --------------------------------------------------------- checkers -------
def check_sequence_bn(make_layer, *, seed: int = 0) -> None:
    """Check ``make_layer() -> keras.layers.BatchNormalization`` for sequences ``(N, T, F)``.

    The layer must normalize each of the F features over the batch and the time
    steps: F moving means, and every feature of the training-mode output with
    mean 0 and variance ``var / (var + epsilon)``. N, T and F all differ, so
    the shape of ``moving_mean`` tells which axis was kept.
    """
    seed = _seed(seed)
    params = {"seed": seed}

    def probe():
        keras = _keras()
        N, T, F, x = sequence_input(seed)
        layer = _call(make_layer, what="make_sequence_bn")
        if layer is None:
            raise CheckFailed("make_sequence_bn returned None: did you forget a `return` statement?", "returned-none")
        if isinstance(layer, type):
            raise CheckFailed("make_sequence_bn returned a class; return a layer: keras.layers.BatchNormalization(...)",
                              "returned-class")
        if not isinstance(layer, keras.layers.BatchNormalization):
            raise CheckFailed("make_sequence_bn must return a keras.layers.BatchNormalization layer; "
                              f"got an object of type {type(layer).__name__}", "not-a-batchnorm-layer")
        if layer.built:
            raise CheckFailed("return a new layer, not yet called on data: each call of make_sequence_bn() "
                              "must give a fresh layer", "layer-already-built")
        out = layer(x, training=True)
        kept = tuple(int(d) for d in layer.moving_mean.shape)
        results = {"moving_mean_shape": np.array(kept, dtype=np.float64).reshape(-1)}
        if kept != (F,):  # the judge names the axis from the shape alone
            return results
        results["out"] = _plain(_knp(out), what="the layer's training-mode output", shape=x.shape)
        results["epsilon"] = np.array([float(layer.epsilon)])
        if layer.scale:
            results["gamma"] = _plain(_knp(layer.gamma), what="the layer's gamma", shape=(F,))
        if layer.center:
            results["beta"] = _plain(_knp(layer.beta), what="the layer's beta", shape=(F,))
        return results

    _run("sequence_bn", (make_layer,), params, probe)


def _as_int(value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise CheckFailed(f"{what} must be an int; got {value!r} of type {type(value).__name__}", "not-an-int")
    return int(value)


def check_param_counts(fn, *, seed: int = 0) -> None:
    """Check ``fn(n_in, n_hidden, n_out) -> (trainable, non_trainable)`` against Keras itself.

    The model is ``Sequential([Input((n_in,)), Dense(n_hidden), BatchNormalization(),
    Dense(n_out)])``, built for random sizes; Keras counts its weights.
    """
    seed = _seed(seed)
    params = {"seed": seed}

    def probe():
        n_in, n_hidden, n_out = count_sizes(seed)
        result = _call(fn, n_in, n_hidden, n_out, what="param_counts")
        if result is None:
            raise CheckFailed("param_counts returned None: did you forget a `return` statement?", "returned-none")
        if not isinstance(result, tuple) or len(result) != 2:
            got = f"a tuple of {len(result)}" if isinstance(result, tuple) else f"an object of type {type(result).__name__}"
            raise CheckFailed(f"param_counts must return a tuple (trainable, non_trainable); got {got}", "wrong-return")
        counts = [_as_int(result[0], "trainable"), _as_int(result[1], "non_trainable")]
        return {"counts": np.array(counts, dtype=np.float64)}

    _run("param_counts", (fn,), params, probe)


def check_freeze_batchnorm(fn, *, seed: int = 0) -> None:
    """Check ``fn(model)``: freeze every BatchNormalization layer of a Keras model for fine-tuning.

    After ``fn(model)``, a training-mode call must give the inference-mode
    output and leave the moving statistics unchanged, no gamma or beta may be
    trainable, and every Dense weight must still be trainable.
    """
    seed = _seed(seed)
    params = {"seed": seed}

    def probe():
        model, x = freeze_setup(seed)
        bns, dense = _bn_layers(model), _dense_layers(model)
        _call(fn, model, what="freeze_batchnorm")
        trainable = {id(w) for w in model.trainable_weights}
        results = {
            "dense_trainable": _flags(id(w) in trainable for layer in dense for w in layer.weights),
            "bn_layer_frozen": _flags(not bn.trainable for bn in bns),
            "bn_affine_frozen": _flags(all(id(w) not in trainable for w in (bn.gamma, bn.beta)) for bn in bns),
        }

        def stats():
            return np.concatenate([_knp(w).astype(np.float64).ravel()
                                   for bn in bns for w in (bn.moving_mean, bn.moving_variance)])

        results["stats_before"] = stats()
        results["infer"] = _plain(_knp(model(x, training=False)), what="the inference-mode output", shape=(x.shape[0], 1))
        results["train"] = _plain(_knp(model(x, training=True)), what="the training-mode output", shape=(x.shape[0], 1))
        results["stats_after"] = stats()
        return results

    _run("freeze_batchnorm", (fn,), params, probe)


# ============================================================= PyTorch ====
def _torch():
    import torch

    return torch


def _np(t) -> np.ndarray:
    return t.detach().cpu().to(dtype=_torch().float64).numpy().copy()


def _bn_fill(torch, bn, r, eps=None):
    C = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(r.uniform(0.5, 2.0, C) * r.choice([-1.0, 1.0], C)))
        bn.bias.copy_(torch.from_numpy(r.normal(0, 2, C)))
        bn.running_mean.copy_(torch.from_numpy(r.normal(0, 3, C)))
        bn.running_var.copy_(torch.from_numpy(r.uniform(0.2, 4.0, C)))
        bn.num_batches_tracked.fill_(int(r.integers(10, 100)))
    if eps is not None:
        bn.eps = eps


def state_vector(module) -> np.ndarray:
    """Every entry of ``module.state_dict()`` (parameters and buffers), flattened into one float64 array."""
    values = [_np(v).ravel() for v in module.state_dict().values()]
    return np.concatenate(values) if values else np.zeros(0)


def predict_setup(seed: int, start_training: bool):
    """``(model, x)``: Linear-BatchNorm1d-ReLU-Linear with running statistics drawn from
    ``seed``, in training mode if ``start_training``, and a float32 batch ``(N, n_in)``."""
    torch = _torch()
    r = np.random.default_rng(60_000 + seed)
    n_in, h, n_out = _sizes(r, 2, 9, 3)
    N = int(r.integers(3, 7))
    torch.manual_seed(60_000 + seed)
    model = torch.nn.Sequential(torch.nn.Linear(n_in, h), torch.nn.BatchNorm1d(h), torch.nn.ReLU(),
                                torch.nn.Linear(h, n_out))
    _bn_fill(torch, model[1], r)
    model.train(start_training)
    x = (5 * r.standard_normal((N, n_in)) + 12).astype(np.float32)
    return model, x


def check_predict(fn, *, seed: int = 0, start_training: bool = True) -> None:
    """Check ``fn(model, x) -> ndarray``: inference-mode predictions of a torch model with BatchNorm1d.

    ``x`` is a float32 numpy array ``(N, n_in)``. The answer must use the running
    statistics (eval mode) whatever mode the model is in, return a numpy array
    ``(N, n_out)``, leave the model's state unchanged, and leave the model in
    the mode it was in (``start_training`` chooses it).
    """
    seed = _seed(seed)
    params = {"seed": seed, "start_training": bool(start_training)}

    def probe():
        torch = _torch()
        model, x = predict_setup(seed, start_training)
        n_out = model[3].out_features

        def judged():  # the records the judge compares with the model as it was
            return (state_vector(model), _flags(p.requires_grad for p in model.parameters()),
                    _flags(m.training for m in model.modules()))

        before, seen = _snapshot(model), judged()
        result = _call(fn, model, x, what="your predict")
        if isinstance(result, torch.Tensor):
            raise CheckFailed("predict returned a torch tensor; return a numpy array: "
                              "tensor.detach().numpy() (or compute under torch.no_grad())", "returned-tensor")
        results = {
            "out": _plain(result, what="the predictions", shape=(x.shape[0], n_out)),
            "state_after": state_vector(model),
            "requires_grad_after": _flags(p.requires_grad for p in model.parameters()),
            "modes_after": _flags(m.training for m in model.modules()),
        }
        # A changed state, requires_grad or mode is the judge's to name (forgot-eval, changed-requires-grad,
        # mode-not-restored: putting the mode back is part of this task); a change the judge cannot see
        # in those records (a dtype, a device, a parameter added or gone) is named here.
        changes = _differences(before, _snapshot(model), "model")
        if changes and all(np.array_equal(a, b) for a, b in zip(seen, judged())):
            raise CheckFailed(_changed_message("your predict", "model", changes, "Leave the model as it was handed "
                                               "to you: convert the input to the model's dtype and device, not the "
                                               "model to the input's."), "modified-input")
        return results

    _run("predict", (fn,), params, probe)


def _tensor(module, name, C):
    value = getattr(module, name, None)
    if value is None:
        raise CheckFailed(f"the returned module's `{name}` is None (did you pass affine=False or "
                          "track_running_stats=False?)", "missing-attribute")
    return _plain(_np(value), what=name, shape=(C,))


def _number(value) -> float:
    """A module's hyperparameter as a float; None (or anything not a number) as NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def check_keras_bn_to_torch(fn, *, seed: int = 0) -> None:
    """Check ``fn(layer) -> torch.nn.BatchNorm1d``: a Keras BatchNormalization layer ported to PyTorch.

    The ported module must carry gamma, beta and the moving statistics, Keras's
    epsilon, and the momentum in PyTorch's convention (``1 - keras momentum``);
    in eval mode it must give Keras's inference-mode outputs. The Keras layer must
    come back unchanged: its weights, settings and trainable flags.
    """
    seed = _seed(seed)
    params = {"seed": seed}

    def probe():
        torch = _torch()
        layer, x = port_setup(seed)
        C = x.shape[1]
        module = _call(fn, layer, what="keras_bn_to_torch", unchanged=_snapshot,
                       advice="It must only read the Keras layer: its weights, settings and trainable flags.")
        if module is None:
            raise CheckFailed("keras_bn_to_torch returned None: did you forget a `return` statement?", "returned-none")
        if not isinstance(module, torch.nn.BatchNorm1d):
            raise CheckFailed(f"return a torch.nn.BatchNorm1d; got an object of type {type(module).__name__}",
                              "not-a-batchnorm1d")
        if module.num_features != C:
            raise CheckFailed(f"the Keras layer has {C} features; your module has num_features={module.num_features}",
                              "wrong-shape")
        results = {name: _tensor(module, name, C) for name in ("weight", "bias", "running_mean", "running_var")}
        results["momentum"] = np.array([_number(module.momentum)])
        results["eps"] = np.array([_number(module.eps)])
        was = module.training
        with torch.no_grad():
            results["out"] = _plain(_np(module.eval()(torch.from_numpy(x))),
                                    what="the ported module's eval-mode output", shape=x.shape,
                                    finite=False)  # NaN when var < 0: the judge says why
        module.train(was)
        return results

    _run("keras_bn_to_torch", (fn,), params, probe)


def fold_setup(seed: int, bias: bool = True):
    """``(linear, bn, x)``: a Linear layer (with a bias, or built with ``bias=False``) and a
    BatchNorm1d (in training mode, gamma of both signs, running statistics far from 0 and 1,
    a large eps) drawn from ``seed``, and a float32 batch ``(N, n_in)``."""
    torch = _torch()
    r = np.random.default_rng(62_000 + seed)
    n_in, n_out = _sizes(r, 2, 8, 2)
    torch.manual_seed(62_000 + seed)
    linear = torch.nn.Linear(n_in, n_out, bias=bool(bias))
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(r.normal(0, 1, (n_out, n_in))))
        b = r.normal(0, 3, n_out)          # drawn either way: the same seed gives the same other values
        if bias:
            linear.bias.copy_(torch.from_numpy(b))
    bn = torch.nn.BatchNorm1d(n_out)
    _bn_fill(torch, bn, r, eps=float(r.uniform(0.05, 0.5)))
    x = (5 * r.standard_normal((int(r.integers(3, 7)), n_in)) + 12).astype(np.float32)
    return linear, bn, x


def check_fold_into_linear(fn, *, seed: int = 0, bias: bool = True) -> None:
    """Check ``fn(linear, bn) -> torch.nn.Linear`` equal to ``bn(linear(x))`` with ``bn`` in eval mode.

    ``bn`` has gamma of both signs, running statistics far from 0 and 1, and a
    large eps; it is handed over in training mode, and ``fn`` must use its
    running statistics anyway and change neither input module. With
    ``bias=False`` the Linear layer has no bias (``linear.bias is None``).
    """
    seed = _seed(seed)
    params = {"seed": seed, "bias": bool(bias)}

    def probe():
        torch = _torch()
        linear, bn, x = fold_setup(seed, bias)
        n_in, n_out = linear.in_features, linear.out_features
        folded = _call(fn, linear, bn, what="fold_into_linear", unchanged=_snapshot,
                       advice="Build a new Linear layer and leave both inputs as they were (their mode, dtype, "
                              "requires_grad and values); if you switch one to eval mode, put it back with "
                              ".train(was_training).")
        if folded is None:
            raise CheckFailed("fold_into_linear returned None: did you forget a `return` statement?", "returned-none")
        if not isinstance(folded, torch.nn.Linear):
            raise CheckFailed(f"return a torch.nn.Linear; got an object of type {type(folded).__name__}", "not-a-linear")
        if folded is linear:
            raise CheckFailed("fold_into_linear returned the `linear` it was given; return a new layer", "modified-input")
        if folded.bias is None:  # the judge says what the bias must be
            return {"has_bias": _flags([False])}
        with torch.no_grad():
            out = _np(folded(torch.from_numpy(x)))
        return {
            "has_bias": _flags([True]),
            "weight": _plain(_np(folded.weight), what="the folded weight", shape=(n_out, n_in)),
            "bias": _plain(_np(folded.bias), what="the folded bias", shape=(n_out,)),
            "out": _plain(out, what="the folded layer's output", shape=(x.shape[0], n_out)),
        }

    _run("fold_into_linear", (fn,), params, probe)

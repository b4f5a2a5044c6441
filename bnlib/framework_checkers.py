"""Checkers for the framework exercises (chapter 5, Keras; chapter 6, PyTorch).

They follow :mod:`bnlib.checkers`: build inputs on which no common mistake
can hide (random sizes that all differ, statistics far from 0 and 1, gamma of
both signs, eps large enough to matter), call the learner's function, convert
what comes back to plain numbers after checking its type and shape, compare
with the framework itself, and on a mismatch raise :class:`~bnlib.checkers.CheckFailed` naming
the mistake, e.g. ``[forgot-eval]``.

Keras and PyTorch are imported inside the functions, so ``bnlib`` still
imports with numpy alone. The Keras checkers expect ``KERAS_BACKEND`` and the
TensorFlow log settings to be chosen before Keras is first imported (the
exercise notebooks do it in their first cell). No checker prints to stderr:
nbgrader gives 0 to a test cell that does.
"""

from __future__ import annotations

import copy

import numpy as np

from .checkers import CheckFailed, _call, _close, _plain

__all__ = [
    "check_sequence_bn",
    "check_param_counts",
    "check_freeze_batchnorm",
    "check_predict",
    "check_keras_bn_to_torch",
    "check_fold_into_linear",
]

# float32 frameworks: loose tolerances (float64 references).
RTOL32 = 1e-5
ATOL32 = 1e-5


def _match(got, expected, what, mistakes, *, rtol=RTOL32, atol=ATOL32):
    """Like :func:`bnlib.checkers._compare`, with float32 tolerances.

    ``mistakes`` is a dict ``{name: (compute, explanation)}`` or a list of
    such pairs (so that one name can cover several candidates).
    """
    if _close(got, expected, rtol, atol):
        return
    for name, (compute, explanation) in (mistakes.items() if isinstance(mistakes, dict) else mistakes):
        try:
            candidate = np.asarray(compute(), dtype=np.float64)
        except Exception:  # a mistake that cannot be computed here does not apply
            continue
        if candidate.shape == got.shape and _close(got, candidate, rtol, atol) and not _close(candidate, expected, rtol, atol):
            raise CheckFailed(f"wrong {what}: {explanation}", name)
    err = float(np.max(np.abs(got - expected)))
    raise CheckFailed(
        f"{what} differs from the reference by up to {err:.3g} (tolerance {atol:g} + {rtol:g} * |reference|); "
        "no common mistake matches: print your values next to the reference's",
        "wrong-values",
    )


def _not_implemented(what):
    return CheckFailed(f"{what} is not implemented yet (it raised NotImplementedError)", "not-implemented")


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


def check_sequence_bn(make_layer, *, seed: int = 0) -> None:
    """Check ``make_layer() -> keras.layers.BatchNormalization`` for sequences ``(N, T, F)``.

    The layer must normalize each of the F features over the batch and the time
    steps: F moving means, and every feature of the training-mode output with
    mean 0 and variance ``var / (var + epsilon)``. N, T and F all differ, so
    the shape of ``moving_mean`` tells which axis was kept.
    """
    keras = _keras()
    r = np.random.default_rng(50_000 + seed)
    N, T, F = _sizes(r, 3, 9, 3)
    scale = r.uniform(0.5, 50.0, F)
    x = (scale * r.standard_normal((N, T, F)) + r.uniform(-100, 100, F)).astype(np.float32)
    try:
        layer = make_layer()
    except NotImplementedError:
        raise _not_implemented("make_sequence_bn") from None
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
    got_shape = tuple(int(d) for d in layer.moving_mean.shape)
    kept = {N: ("normalized-examples", "axis 0 (the batch): each example got its own statistics"),
            T: ("normalized-time-steps", "axis 1 (time): each time step got its own statistics, "
                "taken over the batch and the features, which mixes features of very different scales "
                "(PyTorch puts features on dim 1; Keras puts them last)")}
    if got_shape != (F,):
        name, text = kept.get(got_shape[0] if len(got_shape) == 1 else -1, ("wrong-axis", "another axis"))
        raise CheckFailed(f"for input of shape (N, T, F) = {(N, T, F)} the layer kept moving_mean of shape "
                          f"{got_shape}, so it normalizes {text}; it must keep one statistic per feature, "
                          f"shape ({F},): the feature axis is the last one, axis=-1", name)
    got = _plain(_knp(out), what="the layer's training-mode output", shape=x.shape)
    x64 = x.astype(np.float64)
    mu, var = x64.mean(axis=(0, 1)), x64.var(axis=(0, 1))
    gamma = _knp(layer.gamma).astype(np.float64) if layer.scale else 1.0
    beta = _knp(layer.beta).astype(np.float64) if layer.center else 0.0
    ref = gamma * (x64 - mu) / np.sqrt(var + layer.epsilon) + beta
    _match(got, ref, "training-mode output", {
        "normalized-time-steps": (
            lambda: (x64 - x64.mean(axis=(0, 2), keepdims=True)) / np.sqrt(x64.var(axis=(0, 2), keepdims=True) + layer.epsilon),
            "each time step was normalized; normalize each feature (axis=-1).",
        ),
    }, rtol=1e-4, atol=1e-4)


def _model_counts(keras, n_in, n_hidden, n_out):
    model = keras.Sequential([
        keras.Input((n_in,)),
        keras.layers.Dense(n_hidden),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(n_out),
    ])
    size = lambda ws: sum(int(np.prod(w.shape)) for w in ws)
    return size(model.trainable_weights), size(model.non_trainable_weights)


def _as_int(value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise CheckFailed(f"{what} must be an int; got {value!r} of type {type(value).__name__}", "not-an-int")
    return int(value)


def check_param_counts(fn, *, seed: int = 0) -> None:
    """Check ``fn(n_in, n_hidden, n_out) -> (trainable, non_trainable)`` against Keras itself.

    The model is ``Sequential([Input((n_in,)), Dense(n_hidden), BatchNormalization(),
    Dense(n_out)])``, built for random sizes; Keras counts its weights.
    """
    keras = _keras()
    r = np.random.default_rng(51_000 + seed)
    n_in, n_hidden, n_out = _sizes(r, 2, 40, 3)
    want = np.array(_model_counts(keras, n_in, n_hidden, n_out), dtype=np.float64)
    try:
        result = fn(n_in, n_hidden, n_out)
    except NotImplementedError:
        raise _not_implemented("param_counts") from None
    if result is None:
        raise CheckFailed("param_counts returned None: did you forget a `return` statement?", "returned-none")
    if not isinstance(result, tuple) or len(result) != 2:
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else f"an object of type {type(result).__name__}"
        raise CheckFailed(f"param_counts must return a tuple (trainable, non_trainable); got {got}", "wrong-return")
    got = np.array([_as_int(result[0], "trainable"), _as_int(result[1], "non_trainable")], dtype=np.float64)
    h = n_hidden
    dense = n_in * h + h + h * n_out + n_out
    kernels = n_in * h + h * n_out
    mistakes = {
        "moving-stats-trainable": ((dense + 4 * h, 0), "the moving mean and variance are weights Keras does not "
                                   "train (non-trainable); only gamma and beta are trainable."),
        "forgot-moving-statistics": ((dense + 2 * h, 0), "the moving mean and variance are weights too: "
                                     "2 per feature, non-trainable."),
        "forgot-batchnorm": ((dense, 0), "the batch-norm layer has 4 weights per feature: gamma, beta "
                             "(trainable), moving mean and moving variance (non-trainable)."),
        "forgot-biases": ((kernels + 2 * h, 2 * h), "each Dense layer has a bias (one per output) besides its kernel."),
        "counts-swapped": ((2 * h, dense + 2 * h), "the two counts are swapped: return (trainable, non_trainable)."),
        "bn-sized-by-input": ((dense + 2 * n_in, 2 * n_in), "the batch-norm layer follows Dense(n_hidden): it has "
                              "n_hidden features, not n_in."),
        "counted-num-batches-tracked": ((dense + 2 * h, 2 * h + 1), "that is PyTorch's count (its BatchNorm has a "
                                        "num_batches_tracked buffer); Keras's layer has 2 non-trainable weights per feature."),
    }
    _match(got, want, f"(trainable, non_trainable) for n_in={n_in}, n_hidden={n_hidden}, n_out={n_out}",
           {k: (lambda v=v: np.array(v, dtype=np.float64), text) for k, (v, text) in mistakes.items()},
           rtol=0.0, atol=0.0)


def _freeze_model(keras, r, blocks, n_in):
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
    return model


def check_freeze_batchnorm(fn, *, seed: int = 0) -> None:
    """Check ``fn(model)``: freeze every BatchNormalization layer of a Keras model for fine-tuning.

    After ``fn(model)``, a training-mode call must give the inference-mode
    output and leave the moving statistics unchanged, no gamma or beta may be
    trainable, and every Dense weight must still be trainable.
    """
    keras = _keras()
    r = np.random.default_rng(52_000 + seed)
    n_in = int(r.integers(2, 6))
    model = _freeze_model(keras, r, int(r.integers(2, 4)), n_in)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    try:
        fn(model)
    except NotImplementedError:
        raise _not_implemented("freeze_batchnorm") from None
    trainable = {id(w) for w in model.trainable_weights}
    dense_ok = all(id(w) in trainable for l in dense for w in l.weights)
    frozen = [not l.trainable for l in bns]
    affine_frozen = [all(id(w) not in trainable for w in (l.gamma, l.beta)) for l in bns]
    if not dense_ok:
        if all(frozen):
            raise CheckFailed("the Dense layers were frozen too, so fine-tuning would change nothing: "
                              "set trainable=False on the BatchNormalization layers only", "froze-everything")
        raise CheckFailed("Dense layers were frozen; freeze the BatchNormalization layers and leave "
                          "the others trainable", "froze-other-layers")
    if not any(frozen):
        if any(affine_frozen):
            raise CheckFailed("gamma and beta no longer train, but the layers themselves are still trainable, so "
                              "training=True still uses and updates batch statistics: set layer.trainable = False "
                              "on the layer (Keras 3 then runs it in inference mode)", "froze-gamma-beta-only")
        raise CheckFailed(f"none of the {len(bns)} BatchNormalization layers of the model was frozen: set "
                          "trainable=False on each, in place, on the model you were given", "not-frozen")
    if not all(frozen):
        raise CheckFailed(f"{frozen.count(True)} of the {len(bns)} BatchNormalization layers were frozen; "
                          "freeze every one of them (loop over all of model.layers)", "some-bn-not-frozen")
    x = (5 * r.standard_normal((int(r.integers(3, 7)), n_in)) + 12).astype(np.float32)
    before = [_knp(w) for l in bns for w in l.non_trainable_weights]
    infer = _plain(_knp(model(x, training=False)), what="the inference-mode output", shape=(x.shape[0], 1))
    train = _plain(_knp(model(x, training=True)), what="the training-mode output", shape=(x.shape[0], 1))
    after = [_knp(w) for l in bns for w in l.non_trainable_weights]
    if any(not np.array_equal(b, a) for b, a in zip(before, after)):
        raise CheckFailed("a training-mode call changed the moving statistics of a frozen layer", "moving-stats-changed")
    if not _close(train, infer, RTOL32, ATOL32):
        raise CheckFailed("with training=True the frozen model still uses batch statistics: its output differs "
                          f"from the inference-mode output by up to {np.abs(train - infer).max():.3g}",
                          "batch-stats-still-used")


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


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def _modes(model):
    return [m.training for m in model.modules()]


def check_predict(fn, *, seed: int = 0, start_training: bool = True) -> None:
    """Check ``fn(model, x) -> ndarray``: inference-mode predictions of a torch model with BatchNorm1d.

    ``x`` is a float32 numpy array ``(N, n_in)``. The answer must use the running
    statistics (eval mode) whatever mode the model is in, return a numpy array
    ``(N, n_out)``, leave the model's state unchanged, and leave the model in
    the mode it was in (``start_training`` chooses it).
    """
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
    reference = copy.deepcopy(model)
    with torch.no_grad():
        want = _np(reference.eval()(torch.from_numpy(x)))
        wrong_train = _np(copy.deepcopy(model).train()(torch.from_numpy(x)))
    state, modes = _state(model), _modes(model)
    grads = [p.requires_grad for p in model.parameters()]
    result = _call(fn, model, x, what="your predict")
    if isinstance(result, torch.Tensor):
        raise CheckFailed("predict returned a torch tensor; return a numpy array: "
                          "tensor.detach().numpy() (or compute under torch.no_grad())", "returned-tensor")
    got = _plain(result, what="the predictions", shape=(N, n_out))
    _match(got, want, "predictions", {
        "forgot-eval": (lambda: wrong_train, "these are training-mode outputs: batch norm normalized with the "
                        "statistics of this batch. Call model.eval() before the forward pass."),
    })
    if not _same_state(state, _state(model)):
        raise CheckFailed("predict changed the model's running statistics (a forward pass ran in training "
                          "mode); only eval-mode forward passes leave them alone", "forgot-eval")
    if [p.requires_grad for p in model.parameters()] != grads:
        raise CheckFailed("predict changed requires_grad of the parameters; use torch.no_grad() instead, "
                          "which leaves the model as it was", "changed-requires-grad")
    if _modes(model) != modes:
        was = "training" if start_training else "eval"
        raise CheckFailed(f"the model was in {was} mode before predict and is not after it: remember "
                          "model.training and restore it with model.train(was_training)", "mode-not-restored")


def _keras_bn(keras, r, C):
    momentum = float(r.uniform(0.8, 0.98))
    eps = float(r.uniform(0.01, 0.3))
    layer = keras.layers.BatchNormalization(momentum=momentum, epsilon=eps)
    layer.build((None, C))
    layer.set_weights([
        (r.uniform(0.5, 2.0, C) * r.choice([-1.0, 1.0], C)).astype(np.float32),
        r.normal(0, 2, C).astype(np.float32),
        r.normal(0, 3, C).astype(np.float32),
        r.uniform(0.05, 4.0, C).astype(np.float32),
    ])
    return layer


def _tensor(module, name, C):
    value = getattr(module, name, None)
    if value is None:
        raise CheckFailed(f"the returned module's `{name}` is None (did you pass affine=False or "
                          "track_running_stats=False?)", "missing-attribute")
    return _plain(_np(value), what=name, shape=(C,))


def check_keras_bn_to_torch(fn, *, seed: int = 0) -> None:
    """Check ``fn(layer) -> torch.nn.BatchNorm1d``: a Keras BatchNormalization layer ported to PyTorch.

    The ported module must carry gamma, beta and the moving statistics, Keras's
    epsilon, and the momentum in PyTorch's convention (``1 - keras momentum``);
    in eval mode it must give Keras's inference-mode outputs.
    """
    torch = _torch()
    r = np.random.default_rng(61_000 + seed)
    C = int(r.integers(2, 7))
    keras = _keras()
    layer = _keras_bn(keras, r, C)
    kg, kb, km, kv = [w.astype(np.float64) for w in layer.get_weights()]
    before = [w.copy() for w in layer.get_weights()]
    try:
        module = fn(layer)
    except NotImplementedError:
        raise _not_implemented("keras_bn_to_torch") from None
    if any(not np.array_equal(b, a) for b, a in zip(before, layer.get_weights())):
        raise CheckFailed("keras_bn_to_torch changed the Keras layer's weights; it must only read them",
                          "modified-input")
    if module is None:
        raise CheckFailed("keras_bn_to_torch returned None: did you forget a `return` statement?", "returned-none")
    if not isinstance(module, torch.nn.BatchNorm1d):
        raise CheckFailed(f"return a torch.nn.BatchNorm1d; got an object of type {type(module).__name__}",
                          "not-a-batchnorm1d")
    if module.num_features != C:
        raise CheckFailed(f"the Keras layer has {C} features; your module has num_features={module.num_features}",
                          "wrong-shape")
    gamma, beta = _tensor(module, "weight", C), _tensor(module, "bias", C)
    mean, var = _tensor(module, "running_mean", C), _tensor(module, "running_var", C)
    _match(np.concatenate([gamma, beta]), np.concatenate([kg, kb]), "weight and bias (gamma and beta)", {
        "gamma-beta-swapped": (lambda: np.concatenate([kb, kg]), "gamma and beta are swapped: weight = gamma, bias = beta."),
        "weights-not-copied": (lambda: np.concatenate([np.ones(C), np.zeros(C)]), "weight and bias still hold "
                               "PyTorch's initial values (1 and 0): copy gamma into weight and beta into bias."),
    })
    _match(np.concatenate([mean, var]), np.concatenate([km, kv]), "running_mean and running_var", {
        "mean-var-swapped": (lambda: np.concatenate([kv, km]), "the moving mean and variance are swapped: "
                             "running_mean = moving_mean, running_var = moving_variance."),
        "stats-not-copied": (lambda: np.concatenate([np.zeros(C), np.ones(C)]), "the running statistics still hold "
                             "PyTorch's initial values (0 and 1): copy moving_mean and moving_variance."),
    })
    k_eps, k_m = float(layer.epsilon), float(layer.momentum)
    if module.momentum is None or abs(module.momentum - (1 - k_m)) > 1e-6:
        if module.momentum is not None and abs(module.momentum - k_m) <= 1e-6:
            raise CheckFailed(f"momentum={module.momentum:.4g} is Keras's value unchanged. The conventions are "
                              "opposite: Keras's momentum weights the old value, PyTorch's the new batch, so "
                              f"momentum_torch = 1 - momentum_keras = {1 - k_m:.4g}", "momentum-not-converted")
        raise CheckFailed(f"momentum must be 1 - {k_m:.4g} = {1 - k_m:.4g} (PyTorch's convention); "
                          f"got {module.momentum}", "momentum-not-copied")
    if abs(module.eps - k_eps) > 1e-9 * max(1.0, k_eps):
        name = "eps-not-copied" if module.eps == 1e-5 else "wrong-eps"
        raise CheckFailed(f"eps={module.eps:g}, but the Keras layer uses epsilon={k_eps:.4g}: pass "
                          "eps=layer.epsilon (the defaults differ: 1e-3 in Keras, 1e-5 in PyTorch)", name)
    x = (3 * r.standard_normal((int(r.integers(3, 7)), C)) + km).astype(np.float32)
    want = _knp(layer(x, training=False)).astype(np.float64)
    was = module.training
    with torch.no_grad():
        got = _plain(_np(module.eval()(torch.from_numpy(x))), what="the ported module's eval-mode output", shape=x.shape)
    module.train(was)
    _match(got, want, "eval-mode output of the ported module (compared with Keras, training=False)", {}, rtol=1e-4, atol=1e-4)


def check_fold_into_linear(fn, *, seed: int = 0) -> None:
    """Check ``fn(linear, bn) -> torch.nn.Linear`` equal to ``bn(linear(x))`` with ``bn`` in eval mode.

    ``bn`` has gamma of both signs, running statistics far from 0 and 1, and a
    large eps; it is handed over in training mode, and ``fn`` must use its
    running statistics anyway and change neither input module.
    """
    torch = _torch()
    r = np.random.default_rng(62_000 + seed)
    n_in, n_out = _sizes(r, 2, 8, 2)
    torch.manual_seed(62_000 + seed)
    linear = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(r.normal(0, 1, (n_out, n_in))))
        linear.bias.copy_(torch.from_numpy(r.normal(0, 3, n_out)))
    bn = torch.nn.BatchNorm1d(n_out)
    _bn_fill(torch, bn, r, eps=float(r.uniform(0.05, 0.5)))
    W, b = _np(linear.weight), _np(linear.bias)
    g, beta, mu, var, eps = _np(bn.weight), _np(bn.bias), _np(bn.running_mean), _np(bn.running_var), bn.eps
    states = (_state(linear), _state(bn))
    try:
        folded = fn(linear, bn)
    except NotImplementedError:
        raise _not_implemented("fold_into_linear") from None
    if not (_same_state(states[0], _state(linear)) and _same_state(states[1], _state(bn))):
        raise CheckFailed("fold_into_linear changed `linear` or `bn`; build a new Linear layer and leave both "
                          "inputs as they were", "modified-input")
    if folded is None:
        raise CheckFailed("fold_into_linear returned None: did you forget a `return` statement?", "returned-none")
    if not isinstance(folded, torch.nn.Linear):
        raise CheckFailed(f"return a torch.nn.Linear; got an object of type {type(folded).__name__}", "not-a-linear")
    if folded is linear:
        raise CheckFailed("fold_into_linear returned the `linear` it was given; return a new layer", "modified-input")
    if folded.bias is None:
        raise CheckFailed("the folded layer has no bias (bias=False); it needs one: beta - gamma * mean / std "
                          "plus the scaled old bias", "no-bias")
    W2 = _plain(_np(folded.weight), what="the folded weight", shape=(n_out, n_in))
    b2 = _plain(_np(folded.bias), what="the folded bias", shape=(n_out,))
    s = g / np.sqrt(var + eps)
    wrong_eps = (f"eps is missing, or PyTorch's default 1e-5 was used; use the layer's own, bn.eps = {eps:.4g}: "
                 "s = gamma / sqrt(running_var + bn.eps).")
    scales = [
        ("wrong-eps", g / np.sqrt(var), wrong_eps),
        ("wrong-eps", g / np.sqrt(var + 1e-5), wrong_eps),
        ("eps-outside-sqrt", g / (np.sqrt(var) + eps), "eps is outside the square root: s = gamma / sqrt(running_var + eps)."),
        ("divided-by-variance", g / (var + eps), "you divided by the variance; divide by sqrt(running_var + eps)."),
        ("no-gamma", 1 / np.sqrt(var + eps), "gamma (bn.weight) is missing from the scale s = gamma / sqrt(var + eps)."),
    ]
    _match(W2, W * s[:, None], "folded weight", [
        *[(k, (lambda v=v: W * v[:, None], text)) for k, v, text in scales],
        ("scaled-input-axis", (lambda: W * s[None, :], "each column was scaled; scale each ROW (output feature): "
                               "W' = W * s[:, None].")),
        ("weight-not-scaled", (lambda: W, "the weight was copied unchanged; scale each row by s = gamma / sqrt(var + eps).")),
    ])
    _match(b2, (b - mu) * s + beta, "folded bias", [
        ("forgot-linear-bias", (lambda: -mu * s + beta, "the Linear layer's own bias is missing: b' = (b - mean) * s + beta.")),
        ("bias-not-scaled", (lambda: b - mu * s + beta, "the Linear layer's bias must be scaled too: b' = (b - mean) * s + beta.")),
        ("no-beta", (lambda: (b - mu) * s, "beta (bn.bias) is missing: b' = (b - mean) * s + beta.")),
        *[(k, (lambda v=v: (b - mu) * v + beta, text)) for k, v, text in scales],
    ])
    x = torch.from_numpy((5 * r.standard_normal((int(r.integers(3, 7)), n_in)) + 12).astype(np.float32))
    was = bn.training
    with torch.no_grad():
        want = _np(bn.eval()(linear(x)))
        got = _plain(_np(folded(x)), what="the folded layer's output", shape=(x.shape[0], n_out))
    bn.train(was)
    _match(got, want, "output of the folded layer (compared with bn(linear(x)) in eval mode)", {}, rtol=1e-4, atol=1e-4)

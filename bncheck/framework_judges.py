"""The judges of the framework exercises (chapter 5, Keras; chapter 6, PyTorch).

Each ``_judge_<kind>(params, results)`` builds the probe's setup again from
``params`` (same seed, same model, same inputs), asks the framework for the
right answer, and raises :class:`~bncheck.probes.CheckFailed` naming the
mistake whose answer matches the learner's. It never looks at the learner's
objects, only at the arrays the probe recorded. Keras and PyTorch are
imported on first use, so :mod:`bncheck.registry` loads this module only to
judge such a check.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .framework_probes import (
    _bn_layers,
    _dense_layers,
    _knp,
    _np,
    count_sizes,
    fold_setup,
    freeze_setup,
    port_setup,
    predict_setup,
    sequence_input,
    state_vector,
)
from .judges import _compare, _need
from .probes import CheckFailed, _close

# float32 frameworks: loose tolerances (float64 references).
RTOL32 = 1e-5
ATOL32 = 1e-5


def _keras():
    # the grader's process may not have chosen these before Keras's first import
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


def _torch():
    import torch

    return torch


def _match(got, expected, what, mistakes, *, rtol=RTOL32, atol=ATOL32):
    """``bncheck.judges._compare`` with float32 tolerances, after a shape check."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        raise CheckFailed(f"{what} must have shape {expected.shape}; got shape {got.shape}", "wrong-shape")
    _compare(got, expected, what, mistakes, rtol=rtol, atol=atol)


def _scalar(results, name) -> float:
    (arr,) = _need(results, name)
    if arr.shape != (1,):
        raise CheckFailed(f"the check recorded {name} of shape {arr.shape}; expected one number", "incomplete-record")
    return float(arr[0])


def _all_set(flags: np.ndarray, count: int, what: str) -> list[bool]:
    """Recorded 0/1 flags as booleans, after checking there is one per expected item."""
    if flags.shape != (count,):
        raise CheckFailed(f"the check recorded {flags.shape[0] if flags.ndim == 1 else flags.shape} {what}; "
                          f"the model has {count}", "incomplete-record")
    return [bool(v) for v in flags]


# ============================================================ chapter 5 ===
def _judge_sequence_bn(params, results):
    N, T, F, x = sequence_input(params["seed"])
    (kept,) = _need(results, "moving_mean_shape")
    kept = tuple(int(d) for d in kept)
    named = {N: ("normalized-examples", "axis 0 (the batch): each example got its own statistics"),
             T: ("normalized-time-steps", "axis 1 (time): each time step got its own statistics, "
                 "taken over the batch and the features, which mixes features of very different scales "
                 "(PyTorch puts features on dim 1; Keras puts them last)")}
    if kept != (F,):
        name, text = named.get(kept[0] if len(kept) == 1 else -1, ("wrong-axis", "another axis"))
        raise CheckFailed(f"for input of shape (N, T, F) = {(N, T, F)} the layer kept moving_mean of shape "
                          f"{kept}, so it normalizes {text}; it must keep one statistic per feature, "
                          f"shape ({F},): the feature axis is the last one, axis=-1", name)
    (got,) = _need(results, "out")
    eps = _scalar(results, "epsilon")
    if not (math.isfinite(eps) and eps > 0):
        raise CheckFailed(f"the layer's epsilon must be a positive number; got {eps}", "wrong-eps")
    gamma = np.asarray(results["gamma"], dtype=np.float64) if "gamma" in results else 1.0
    beta = np.asarray(results["beta"], dtype=np.float64) if "beta" in results else 0.0
    for name, value in (("gamma", gamma), ("beta", beta)):
        if not np.isscalar(value) and value.shape != (F,):
            raise CheckFailed(f"the layer's {name} must have shape ({F},); got {value.shape}", "wrong-shape")
    x64 = x.astype(np.float64)
    mu, var = x64.mean(axis=(0, 1)), x64.var(axis=(0, 1))
    ref = gamma * (x64 - mu) / np.sqrt(var + eps) + beta
    _match(got, ref, "training-mode output", {
        "normalized-time-steps": (
            lambda: (x64 - x64.mean(axis=(0, 2), keepdims=True)) / np.sqrt(x64.var(axis=(0, 2), keepdims=True) + eps),
            "each time step was normalized; normalize each feature (axis=-1).",
        ),
    }, rtol=1e-4, atol=1e-4)


def _model_counts(n_in, n_hidden, n_out):
    """(trainable, non_trainable) as Keras counts them for Dense -> BatchNormalization -> Dense."""
    keras = _keras()
    model = keras.Sequential([
        keras.Input((n_in,)),
        keras.layers.Dense(n_hidden),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(n_out),
    ])
    def size(ws):
        return sum(int(np.prod(w.shape)) for w in ws)

    return size(model.trainable_weights), size(model.non_trainable_weights)


def _judge_param_counts(params, results):
    n_in, h, n_out = count_sizes(params["seed"])
    (got,) = _need(results, "counts")
    want = np.array(_model_counts(n_in, h, n_out), dtype=np.float64)
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
    _match(got, want, f"(trainable, non_trainable) for n_in={n_in}, n_hidden={h}, n_out={n_out}",
           {k: (lambda v=v: np.array(v, dtype=np.float64), text) for k, (v, text) in mistakes.items()},
           rtol=0.0, atol=0.0)


def _judge_freeze_batchnorm(params, results):
    _keras()
    model, x = freeze_setup(params["seed"])
    bns, dense = _bn_layers(model), _dense_layers(model)
    dense_flags, frozen_flags, affine_flags = _need(results, "dense_trainable", "bn_layer_frozen", "bn_affine_frozen")
    dense_ok = all(_all_set(dense_flags, sum(len(layer.weights) for layer in dense), "Dense weights"))
    frozen = _all_set(frozen_flags, len(bns), "BatchNormalization layers")
    affine_frozen = _all_set(affine_flags, len(bns), "BatchNormalization layers")
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
    before, after, infer, train = _need(results, "stats_before", "stats_after", "infer", "train")
    n_stats = sum(2 * int(np.prod(bn.moving_mean.shape)) for bn in bns)
    if before.shape != (n_stats,) or after.shape != (n_stats,):
        raise CheckFailed(f"the check recorded moving statistics of shapes {before.shape} and {after.shape}; "
                          f"the model has {n_stats}", "incomplete-record")
    if not np.array_equal(before, after):
        raise CheckFailed("a training-mode call changed the moving statistics of a frozen layer", "moving-stats-changed")
    want = _knp(model(x, training=False)).astype(np.float64)
    if infer.shape != want.shape or train.shape != want.shape:
        raise CheckFailed(f"the model's outputs must have shape {want.shape}; got {infer.shape} and {train.shape}",
                          "wrong-shape")
    if not _close(train, infer, RTOL32, ATOL32):
        raise CheckFailed("with training=True the frozen model still uses batch statistics: its output differs "
                          f"from the inference-mode output by up to {np.abs(train - infer).max():.3g}",
                          "batch-stats-still-used")
    _match(infer, want, "inference-mode output of the frozen model (compared with the model as it was handed "
           "over: freezing changes trainable flags only, never a weight or a moving statistic)", {})


# ============================================================ chapter 6 ===
def _judge_predict(params, results):
    torch = _torch()
    start_training = bool(params["start_training"])
    model, x = predict_setup(params["seed"], start_training)
    got, state, grads, modes = _need(results, "out", "state_after", "requires_grad_after", "modes_after")
    with torch.no_grad():
        want = _np(_copy(model).eval()(torch.from_numpy(x)))
        wrong_train = _np(_copy(model).train()(torch.from_numpy(x)))
    _match(got, want, "predictions", {
        "forgot-eval": (lambda: wrong_train, "these are training-mode outputs: batch norm normalized with the "
                        "statistics of this batch. Call model.eval() before the forward pass."),
    })
    expected_state = state_vector(model)
    if state.shape != expected_state.shape or not np.array_equal(state, expected_state):
        raise CheckFailed("predict changed the model's running statistics (a forward pass ran in training "
                          "mode); only eval-mode forward passes leave them alone", "forgot-eval")
    if grads.shape != (len(list(model.parameters())),) or not (grads == 1.0).all():
        raise CheckFailed("predict changed requires_grad of the parameters; use torch.no_grad() instead, "
                          "which leaves the model as it was", "changed-requires-grad")
    expected_modes = np.array([1.0 if m.training else 0.0 for m in model.modules()])
    if modes.shape != expected_modes.shape or not np.array_equal(modes, expected_modes):
        was = "training" if start_training else "eval"
        raise CheckFailed(f"the model was in {was} mode before predict and is not after it: remember "
                          "model.training and restore it with model.train(was_training)", "mode-not-restored")


def _copy(module):
    import copy

    return copy.deepcopy(module)


def _judge_keras_bn_to_torch(params, results):
    _keras()
    layer, x = port_setup(params["seed"])
    C = x.shape[1]
    kg, kb, km, kv = [w.astype(np.float64) for w in layer.get_weights()]
    gamma, beta, mean, var = _need(results, "weight", "bias", "running_mean", "running_var")
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
    momentum, eps = _scalar(results, "momentum"), _scalar(results, "eps")
    if not abs(momentum - (1 - k_m)) <= 1e-6:  # NaN (None) fails too
        if abs(momentum - k_m) <= 1e-6:
            raise CheckFailed(f"momentum={momentum:.4g} is Keras's value unchanged. The conventions are "
                              "opposite: Keras's momentum weights the old value, PyTorch's the new batch, so "
                              f"momentum_torch = 1 - momentum_keras = {1 - k_m:.4g}", "momentum-not-converted")
        shown = "None" if math.isnan(momentum) else f"{momentum:.6g}"
        raise CheckFailed(f"momentum must be 1 - {k_m:.4g} = {1 - k_m:.4g} (PyTorch's convention); "
                          f"got {shown}", "momentum-not-copied")
    if not abs(eps - k_eps) <= 1e-9 * max(1.0, k_eps):
        name = "eps-not-copied" if eps == 1e-5 else "wrong-eps"
        raise CheckFailed(f"eps={eps:g}, but the Keras layer uses epsilon={k_eps:.4g}: pass "
                          "eps=layer.epsilon (the defaults differ: 1e-3 in Keras, 1e-5 in PyTorch)", name)
    (got,) = _need(results, "out")
    want = _knp(layer(x, training=False)).astype(np.float64)
    _match(got, want, "eval-mode output of the ported module (compared with Keras, training=False)", {}, rtol=1e-4, atol=1e-4)


def _judge_fold_into_linear(params, results):
    torch = _torch()
    linear, bn, x = fold_setup(params["seed"], params.get("bias", True))
    n_out = linear.out_features
    if not _scalar(results, "has_bias"):
        raise CheckFailed("the folded layer has no bias (bias=False); it needs one: beta - gamma * mean / std "
                          "plus the scaled old bias", "no-bias")
    W2, b2, got = _need(results, "weight", "bias", "out")
    W = _np(linear.weight)
    b = _np(linear.bias) if linear.bias is not None else np.zeros(n_out)
    g, beta, mu, var, eps = _np(bn.weight), _np(bn.bias), _np(bn.running_mean), _np(bn.running_var), bn.eps
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
        ("bias-not-scaled", (lambda: b - mu * s + beta,
                             "the Linear layer's bias must be scaled too: b' = (b - mean) * s + beta.")),
        ("no-beta", (lambda: (b - mu) * s, "beta (bn.bias) is missing: b' = (b - mean) * s + beta.")),
        *[(k, (lambda v=v: (b - mu) * v + beta, text)) for k, v, text in scales],
    ])
    with torch.no_grad():
        want = _np(bn.eval()(linear(torch.from_numpy(x))))
    if got.shape != (x.shape[0], n_out):
        raise CheckFailed(f"the folded layer's output must have shape {(x.shape[0], n_out)}; got {got.shape}", "wrong-shape")
    _match(got, want, "output of the folded layer (compared with bn(linear(x)) in eval mode)", {}, rtol=1e-4, atol=1e-4)

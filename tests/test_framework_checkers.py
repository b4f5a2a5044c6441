"""The chapter 5 and 6 checkers accept right answers and name each wrong one.

Each wrong answer below is a realistic mistake; the checker must reject it
with the expected diagnosis on several seeds (sizes and values differ with
the seed), and accept the right answer on the same seeds.
"""

from __future__ import annotations

import copy
import json
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest

from bncheck import framework_probes as fc  # numpy only: Keras and PyTorch are imported when a checker runs
from bncheck.probes import CheckFailed

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

SEEDS = (0, 1, 7)


def diagnosis(check, answer, **kwargs):
    """The mistake name the checker gives ``answer`` (fails the test if it accepts it)."""
    with pytest.raises(CheckFailed) as info:
        check(answer, **kwargs)
    return info.value.mistake


# ------------------------------------------------------------ chapter 5 ---
def seq_bn(**kw):
    return lambda: keras.layers.BatchNormalization(**kw)


@pytest.mark.parametrize("seed", SEEDS)
def test_sequence_bn_accepts_the_last_axis_however_it_is_written(seed):
    fc.check_sequence_bn(seq_bn(), seed=seed)
    fc.check_sequence_bn(seq_bn(axis=2), seed=seed)
    fc.check_sequence_bn(seq_bn(axis=-1, epsilon=0.01), seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer, mistake", [
    (seq_bn(axis=1), "normalized-time-steps"),
    (seq_bn(axis=0), "normalized-examples"),
    (lambda: keras.layers.BatchNormalization, "returned-class"),
    (lambda: keras.layers.LayerNormalization(), "not-a-batchnorm-layer"),
    (lambda: None, "returned-none"),
])
def test_sequence_bn_names_the_mistake(seed, answer, mistake):
    assert diagnosis(fc.check_sequence_bn, answer, seed=seed) == mistake


def test_sequence_bn_refuses_a_layer_that_was_already_built():
    layer = keras.layers.BatchNormalization()
    layer.build((None, 3, 4))
    assert diagnosis(fc.check_sequence_bn, lambda: layer, seed=0) == "layer-already-built"


def counts(n_in, h, n_out):
    return n_in * h + h + h * n_out + n_out + 2 * h, 2 * h


PARAM_MISTAKES = [
    (lambda i, h, o: (counts(i, h, o)[0] + 2 * h, 0), "moving-stats-trainable"),
    (lambda i, h, o: (counts(i, h, o)[0], 0), "forgot-moving-statistics"),
    (lambda i, h, o: (counts(i, h, o)[0] - 2 * h, 0), "forgot-batchnorm"),
    (lambda i, h, o: (i * h + h * o + 2 * h, 2 * h), "forgot-biases"),
    (lambda i, h, o: counts(i, h, o)[::-1], "counts-swapped"),
    (lambda i, h, o: (counts(i, h, o)[0], 2 * h + 1), "counted-num-batches-tracked"),
    (lambda i, h, o: (counts(i, h, o)[0] + 1, 2 * h), "wrong-values"),
    (lambda i, h, o: list(counts(i, h, o)), "wrong-return"),
    (lambda i, h, o: (float(counts(i, h, o)[0]), 2 * h), "not-an-int"),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_param_counts_accepts_the_formula_that_keras_confirms(seed):
    fc.check_param_counts(counts, seed=seed)
    fc.check_param_counts(lambda *a: tuple(np.int64(v) for v in counts(*a)), seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer, mistake", PARAM_MISTAKES, ids=[m for _, m in PARAM_MISTAKES])
def test_param_counts_names_the_mistake(seed, answer, mistake):
    assert diagnosis(fc.check_param_counts, answer, seed=seed) == mistake


def freeze(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def freeze_all(model):
    model.trainable = False


def freeze_first(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            break


def freeze_others(model):
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def freeze_affine(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.trainable = layer.beta.trainable = False


def momentum_one(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 1.0
            layer.gamma.trainable = layer.beta.trainable = False


@pytest.mark.parametrize("seed", SEEDS)
def test_freeze_accepts_trainable_false_on_every_batchnorm_layer(seed):
    fc.check_freeze_batchnorm(freeze, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer, mistake", [
    (lambda model: None, "not-frozen"),
    (freeze_all, "froze-everything"),
    (freeze_first, "some-bn-not-frozen"),
    (freeze_others, "froze-other-layers"),
    (freeze_affine, "froze-gamma-beta-only"),
])
def test_freeze_names_the_mistake(seed, answer, mistake):
    assert diagnosis(fc.check_freeze_batchnorm, answer, seed=seed) == mistake


# ------------------------------------------------------------ chapter 6 ---
def predict(model, x):
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    model.train(was)
    return out


def predict_no_eval(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def predict_not_restored(model, x):
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def predict_tensor(model, x):
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    model.train(was)
    return out


def predict_copy_then_train(model, x):
    out = predict(copy.deepcopy(model), x)
    with torch.no_grad():
        model(torch.from_numpy(x))  # a stray training-mode pass
    return out


def predict_requires_grad(model, x):
    model.requires_grad_(False)
    return predict(model, x)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("start_training", [True, False])
def test_predict_accepts_eval_then_restoring_the_mode(seed, start_training):
    fc.check_predict(predict, seed=seed, start_training=start_training)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer, mistake, start_training", [
    (predict_no_eval, "forgot-eval", True),
    (predict_not_restored, "mode-not-restored", True),
    (predict_tensor, "returned-tensor", True),
    (predict_copy_then_train, "forgot-eval", True),
    (predict_requires_grad, "changed-requires-grad", False),
])
def test_predict_names_the_mistake(seed, answer, mistake, start_training):
    assert diagnosis(fc.check_predict, answer, seed=seed, start_training=start_training) == mistake


def port(layer, *, eps=True, momentum=True, swap_stats=False, swap_affine=False, copy_stats=True):
    gamma, beta, mean, var = layer.get_weights()
    if swap_stats:
        mean, var = var, mean
    if swap_affine:
        gamma, beta = beta, gamma
    bn = torch.nn.BatchNorm1d(gamma.shape[0], eps=layer.epsilon if eps else 1e-5,
                              momentum=1 - layer.momentum if momentum else layer.momentum)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
        if copy_stats:
            bn.running_mean.copy_(torch.from_numpy(mean))
            bn.running_var.copy_(torch.from_numpy(var))
    return bn


@pytest.mark.parametrize("seed", SEEDS)
def test_keras_to_torch_accepts_a_full_port(seed):
    fc.check_keras_bn_to_torch(port, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("options, mistake", [
    ({"eps": False}, "eps-not-copied"),
    ({"momentum": False}, "momentum-not-converted"),
    ({"swap_stats": True}, "mean-var-swapped"),
    ({"swap_affine": True}, "gamma-beta-swapped"),
    ({"copy_stats": False}, "stats-not-copied"),
])
def test_keras_to_torch_names_the_mistake(seed, options, mistake):
    assert diagnosis(fc.check_keras_bn_to_torch, lambda layer: port(layer, **options), seed=seed) == mistake


def test_keras_to_torch_refuses_a_module_of_another_kind():
    assert diagnosis(fc.check_keras_bn_to_torch, lambda layer: torch.nn.BatchNorm2d(3), seed=0) == "not-a-batchnorm1d"


def fold(linear, bn, *, eps=None, bias=True, beta=True, scale_bias=True, rows=True):
    eps = bn.eps if eps is None else eps
    with torch.no_grad():
        s = bn.weight / torch.sqrt(bn.running_var + eps)
        out = torch.nn.Linear(linear.in_features, linear.out_features)
        out.weight.copy_(linear.weight * (s[:, None] if rows else s[None, : linear.in_features]))
        b = linear.bias if bias and linear.bias is not None else torch.zeros(linear.out_features)
        shifted = (b - bn.running_mean) * s if scale_bias else b - bn.running_mean * s
        out.bias.copy_(shifted + (bn.bias if beta else 0))
    return out


def fold_in_place(linear, bn):
    new = fold(linear, bn)
    with torch.no_grad():
        linear.weight.copy_(new.weight)
    return new


@pytest.mark.parametrize("seed", SEEDS)
def test_fold_accepts_the_eval_mode_formula(seed):
    fc.check_fold_into_linear(fold, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("options, mistake", [
    ({"eps": 0.0}, "wrong-eps"),
    ({"eps": 1e-5}, "wrong-eps"),
    ({"bias": False}, "forgot-linear-bias"),
    ({"scale_bias": False}, "bias-not-scaled"),
    ({"beta": False}, "no-beta"),
])
def test_fold_names_the_mistake(seed, options, mistake):
    assert diagnosis(fc.check_fold_into_linear, lambda linear, bn: fold(linear, bn, **options), seed=seed) == mistake


def test_fold_refuses_to_change_its_inputs():
    assert diagnosis(fc.check_fold_into_linear, fold_in_place, seed=0) == "modified-input"


def fold_reading_linear_bias(linear, bn):
    """The course's own solution until it was fixed: reads linear.bias, which is None for bias=False."""
    with torch.no_grad():
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        out = torch.nn.Linear(linear.in_features, linear.out_features)
        out.weight.copy_(linear.weight * s[:, None])
        out.bias.copy_((linear.bias - bn.running_mean) * s + bn.bias)
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_fold_check_hands_over_a_linear_without_bias_when_asked(seed):
    fc.check_fold_into_linear(fold, seed=seed, bias=False)
    fc.check_fold_into_linear(fold_reading_linear_bias, seed=seed)           # fine with a bias
    with pytest.raises(TypeError):                                           # None - tensor
        fc.check_fold_into_linear(fold_reading_linear_bias, seed=seed, bias=False)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("options, mistake", [
    ({"eps": 0.0}, "wrong-eps"),
    ({"beta": False}, "no-beta"),
])
def test_fold_without_bias_names_the_mistake(seed, options, mistake):
    got = diagnosis(fc.check_fold_into_linear, lambda linear, bn: fold(linear, bn, **options), seed=seed, bias=False)
    assert got == mistake


@pytest.mark.parametrize("seed", SEEDS)
def test_the_solution_folds_a_linear_layer_built_without_bias(seed):
    """The course recommends Linear(..., bias=False) before batch norm; its fold solution must accept one."""
    from grading.samples import answer_code

    namespace = {"torch": torch}
    exec(answer_code("ch06-pytorch")["answer-fold"], namespace)
    fc.check_fold_into_linear(namespace["fold_into_linear"], seed=seed, bias=False)
    fc.check_fold_into_linear(namespace["fold_into_linear"], seed=seed)


def test_checkers_emit_no_warning_on_right_answers():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.check_sequence_bn(seq_bn(), seed=3)
        fc.check_param_counts(counts, seed=3)
        fc.check_freeze_batchnorm(freeze, seed=3)
        fc.check_predict(predict, seed=3)
        fc.check_keras_bn_to_torch(port, seed=3)
        fc.check_fold_into_linear(fold, seed=3)


def test_bnlib_imports_without_the_frameworks():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.modules['keras'] = None; sys.modules['tensorflow'] = None\n"
            "import bncheck, bncheck.framework_probes")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------- called by the grader, judged there ---
# During grading the grader calls the probe in the learner's kernel
# (bncheck.probes.grader_call), which returns the answer's arrays as text;
# the grader judges them in its own process. Both ways must give the same verdict.
RECORDED_CASES = [
    (fc.check_sequence_bn, seq_bn(), {}),
    (fc.check_sequence_bn, seq_bn(axis=1), {}),
    (fc.check_sequence_bn, seq_bn(axis=0), {}),
    (fc.check_sequence_bn, lambda: None, {}),
    (fc.check_param_counts, counts, {}),
    *[(fc.check_param_counts, answer, {}) for answer, _ in PARAM_MISTAKES],
    (fc.check_freeze_batchnorm, freeze, {}),
    (fc.check_freeze_batchnorm, lambda model: None, {}),
    (fc.check_freeze_batchnorm, freeze_all, {}),
    (fc.check_freeze_batchnorm, freeze_first, {}),
    (fc.check_freeze_batchnorm, freeze_others, {}),
    (fc.check_freeze_batchnorm, freeze_affine, {}),
    (fc.check_predict, predict, {"start_training": True}),
    (fc.check_predict, predict, {"start_training": False}),
    (fc.check_predict, predict_no_eval, {}),
    (fc.check_predict, predict_not_restored, {}),
    (fc.check_predict, predict_tensor, {}),
    (fc.check_predict, predict_copy_then_train, {}),
    (fc.check_predict, predict_requires_grad, {"start_training": False}),
    (fc.check_keras_bn_to_torch, port, {}),
    *[(fc.check_keras_bn_to_torch, lambda layer, o=o: port(layer, **o), {}) for o in (
        {"eps": False}, {"momentum": False}, {"swap_stats": True}, {"swap_affine": True}, {"copy_stats": False})],
    (fc.check_fold_into_linear, fold, {}),
    (fc.check_fold_into_linear, fold_in_place, {}),
    *[(fc.check_fold_into_linear, lambda linear, bn, o=o: fold(linear, bn, **o), {}) for o in (
        {"eps": 0.0}, {"eps": 1e-5}, {"bias": False}, {"scale_bias": False}, {"beta": False})],
]


def verdict_now(check, answer, **kwargs):
    """The mistake named when the check judges in-process, or None if it passes."""
    try:
        check(answer, **kwargs)
    except CheckFailed as e:
        return e.mistake
    return None


def _listed(check, answer, **kwargs):
    """(kind, params) of a check as the grader lists it (defaults filled in), without running it."""
    from bncheck import probes

    calls = []
    probes._COLLECT = calls
    try:
        check(answer, **kwargs)
    finally:
        probes._COLLECT = None
    ((kind, _, params),) = calls
    return kind, json.dumps(params, sort_keys=True)


def verdict_called(check, answer, **kwargs):
    """The mistake named when the grader calls the probe (as in a graded kernel) and judges its reply."""
    from bncheck import probes
    from grading import judge
    from grading.plan import Check

    kind, params = _listed(check, answer, **kwargs)
    reply = probes.grader_call(kind, (answer,), params)
    v = judge.verdict(Check("test", 0, kind, ("answer",), params, hidden=False), reply)
    assert v.passed == (v.mistake is None)
    return v.mistake


@pytest.mark.parametrize("seed", (0, 7))
def test_a_check_the_grader_calls_and_judges_gives_the_in_process_verdict(seed):
    names = []
    for i, (check, answer, kwargs) in enumerate(RECORDED_CASES):
        now = verdict_now(check, answer, seed=seed, **kwargs)
        later = verdict_called(check, answer, seed=seed, **kwargs)
        assert later == now, f"case {i} ({check.__name__}): judged in-process {now!r}, called then judged {later!r}"
        names.append(now)
    # the cases exercise right answers and wrong ones alike
    assert None in names and len({n for n in names if n}) >= 20, names


def test_the_reply_holds_plain_arrays_and_the_judge_rebuilds_the_rest():
    from bncheck import probes
    from grading import judge

    reply = probes.grader_call("fold_into_linear", (fold,), json.dumps({"seed": 0}))
    results, failure = judge.decode(reply)
    assert failure is None and set(results) == {"has_bias", "weight", "bias", "out"}
    for name, arr in results.items():
        assert arr.dtype == np.float64, f"{name}: expected float64, received {arr.dtype}"


def test_a_forged_reply_is_judged_against_the_graders_own_setup():
    """A reply whose numbers were tampered with fails: the judge computes the reference itself."""
    from bncheck import probes
    from grading import judge
    from grading.plan import Check

    reply = json.loads(probes.grader_call("fold_into_linear", (fold,), json.dumps({"seed": 1})))
    results, _ = judge.decode(json.dumps(reply))
    forged = probes.encode(results | {"weight": results["weight"] + 1.0}, None)
    kind, params = _listed(fc.check_fold_into_linear, fold, seed=1)
    v = judge.verdict(Check("test", 0, kind, ("fold",), params, hidden=False), forged)
    assert not v.passed and v.mistake == "wrong-values", v


def test_the_graded_kernels_bncheck_probes_without_the_judges(tmp_path):
    """The jail's shim holds the probe modules only, and the grader's call works without any judge present."""
    import subprocess
    import sys

    from grading import jail

    jail.make_shim(tmp_path / "lib")
    shipped = sorted(p.name for p in (tmp_path / "lib" / "bncheck").glob("*.py"))
    assert shipped == ["__init__.py", "framework_probes.py", "probes.py", "registry.py"], shipped
    code = (
        "import json, bncheck, bncheck.probes as p\n"
        f"assert bncheck.__file__.startswith({str(tmp_path)!r}), bncheck.__file__\n"
        "r = p.grader_call('param_counts', (lambda i, h, o: (1, 2),), json.dumps({'seed': 1}))\n"
        "assert json.loads(r)['results']['counts'][0] == [2], r\n"
        "import sys; assert not [m for m in sys.modules if 'judge' in m or m.startswith('bnlib')], sorted(sys.modules)\n"
        "try:\n    import bnlib\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('bnlib importable')\n"
    )
    # as in the jail: the shim first, no project folder, no editable-install finder
    prelude = (
        "import importlib, sys\n"
        f"sys.path[:] = [{str(tmp_path / 'lib')!r}] + [p for p in sys.path if 'site-packages' in p or 'lib/python3' in p]\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
        "importlib.invalidate_caches()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", prelude + code], check=True, env=env, cwd=tmp_path)


def test_the_grader_lists_the_checks_of_the_framework_test_cells():
    from pathlib import Path

    from grading import plan

    root = Path(__file__).resolve().parent.parent / "solutions"
    listed = {gid: [(c.kind, c.targets[0], c.params, c.hidden) for c in cell.checks]
              for nb in ("ch05-keras", "ch06-pytorch")
              for gid, cell in plan.plan(root / nb / f"{nb}.ipynb", b"s" * 32).items()}
    want = {"test-axis": ("sequence_bn", "make_sequence_bn"), "test-counts": ("param_counts", "param_counts"),
            "test-freeze": ("freeze_batchnorm", "freeze_batchnorm"), "test-predict": ("predict", "predict"),
            "test-port": ("keras_bn_to_torch", "keras_bn_to_torch"), "test-fold": ("fold_into_linear", "fold_into_linear")}
    assert set(listed) == set(want), sorted(listed)
    for gid, (kind, fn) in want.items():
        keys = listed[gid]
        assert len(keys) >= 2 and all(k[:2] == (kind, fn) for k in keys), (gid, keys)
        assert len(set(keys)) == len(keys), f"{gid}: a check is listed twice: {keys}"
        assert any(k[3] for k in keys) and not all(k[3] for k in keys), f"{gid}: visible and hidden checks expected"


# ------------------------------------- the caller's objects left as they were ---
# fold_into_linear and keras_bn_to_torch must change neither input: not a value, and
# not a mode, a dtype, a requires_grad flag, a trainable flag or a setting either.
# The message names what changed. Changing a module and putting it back passes.
def fold_eval_not_restored(linear, bn):
    bn.eval()
    return fold(linear, bn)


def fold_double(linear, bn):
    linear.double()  # "to compute in float64"
    return fold(linear, bn)


def fold_frozen(linear, bn):
    for p in list(linear.parameters()) + list(bn.parameters()):
        p.requires_grad_(False)
    return fold(linear, bn)


def fold_default_eps_in_place(linear, bn):
    bn.eps = 1e-5
    return fold(linear, bn)


def fold_drops_the_bias(linear, bn):
    folded = fold(linear, bn)
    linear.bias = None
    return folded


def fold_eval_then_restored(linear, bn):
    was = bn.training, linear.training
    bn.eval()
    linear.eval()
    try:
        return fold(linear, bn)
    finally:
        bn.train(was[0])
        linear.train(was[1])


def fold_with_torch_fusion(linear, bn):
    from torch.nn.utils.fusion import fuse_linear_bn_eval

    was = bn.training, linear.training
    linear.eval()
    bn.eval()
    folded = fuse_linear_bn_eval(linear, bn)
    bn.train(was[0])
    linear.train(was[1])
    return folded


def fold_scaling_in_place_and_back(linear, bn):
    with torch.no_grad():
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        linear.weight.mul_(s[:, None])
        folded = torch.nn.Linear(linear.in_features, linear.out_features)
        folded.weight.copy_(linear.weight)
        folded.bias.copy_((linear.bias - bn.running_mean) * s + bn.bias)
        linear.weight.div_(s[:, None])  # put back by arithmetic: off by rounding only
    return folded


FOLD_CHANGES = [
    (fold_eval_not_restored, r"changed its input `bn`: `bn\.training`: expected True, received False"),
    (fold_double, r"changed its input `linear`: `linear\.weight\.dtype`: expected torch\.float32, received torch\.float64"),
    (fold_frozen, r"changed its input `linear`: `linear\.weight\.requires_grad`: expected True, received False"),
    (fold_default_eps_in_place, r"changed its input `bn`: `bn\.eps`: expected [\d.]+, received 1e-05"),
    (fold_drops_the_bias, r"changed its input `linear`: `linear\.bias` is gone"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer, named", FOLD_CHANGES, ids=[a.__name__ for a, _ in FOLD_CHANGES])
def test_fold_names_what_it_changed_in_the_callers_modules(seed, answer, named):
    with pytest.raises(CheckFailed, match=named) as info:
        fc.check_fold_into_linear(answer, seed=seed)
    assert info.value.mistake == "modified-input", str(info.value)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer", [fold_eval_then_restored, fold_with_torch_fusion, fold_scaling_in_place_and_back],
                         ids=lambda f: f.__name__)
def test_fold_that_changes_its_inputs_and_puts_them_back_passes(seed, answer):
    fc.check_fold_into_linear(answer, seed=seed)


def port_freezing_the_layer(layer):
    layer.trainable = False
    return port(layer)


def port_converting_momentum_in_place(layer):
    layer.momentum = 1 - layer.momentum
    bn = port(layer, momentum=False)  # momentum=layer.momentum, already converted
    return bn


def port_after_a_training_call(layer):
    layer(np.ones((2, layer.gamma.shape[0]), dtype=np.float32), training=True)
    return port(layer)


PORT_CHANGES = [
    (port_freezing_the_layer, r"changed its input `layer`: `layer\.trainable`: expected True, received False"),
    (port_converting_momentum_in_place, r"changed its input `layer`: `layer\.momentum`: expected 0\.\d+, received 0\.\d+"),
    (port_after_a_training_call, r"changed its input `layer`: values of `layer\.moving_mean`: \d of \d values changed"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer, named", PORT_CHANGES, ids=[a.__name__ for a, _ in PORT_CHANGES])
def test_keras_to_torch_names_what_it_changed_in_the_keras_layer(seed, answer, named):
    with pytest.raises(CheckFailed, match=named) as info:
        fc.check_keras_bn_to_torch(answer, seed=seed)
    assert info.value.mistake == "modified-input", str(info.value)


def predict_in_float64(model, x):
    model.double()  # the caller's model is float64 from now on
    return predict(model, x.astype(np.float64))


def predict_in_float64_without_eval(model, x):
    model.double()
    with torch.no_grad():
        return model(torch.from_numpy(x).double()).numpy()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("start_training", [True, False])
def test_predict_names_a_model_converted_to_float64(seed, start_training):
    with pytest.raises(CheckFailed, match=r"`model\[0\]\.weight\.dtype`: expected torch\.float32, "
                       r"received torch\.float64") as info:
        fc.check_predict(predict_in_float64, seed=seed, start_training=start_training)
    assert info.value.mistake == "modified-input", str(info.value)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("answer, mistake, start_training", [
    (predict_in_float64_without_eval, "forgot-eval", True),  # the judge's diagnosis comes first
    (predict_not_restored, "mode-not-restored", True),
    (predict_requires_grad, "changed-requires-grad", False),
])
def test_predict_keeps_the_judges_diagnoses_of_mode_state_and_requires_grad(seed, answer, mistake, start_training):
    assert diagnosis(fc.check_predict, answer, seed=seed, start_training=start_training) == mistake


def test_unchanged_covers_torch_tensors_and_modules():
    from bncheck.probes import _call

    t = torch.tensor([1.5, -2.0, 3.0])

    def flag(t):
        t.requires_grad_(True)

    with pytest.raises(CheckFailed, match=r"`t\.requires_grad`: expected False, received True"):
        _call(flag, t, what="f", unchanged=fc._snapshot)

    def nudge_and_back(t):
        t += 1e-3
        t -= 1e-3  # float32 rounding only

    _call(nudge_and_back, torch.tensor([1.5, -2.1, 3.3]), what="f", unchanged=fc._snapshot)

    def add_parameter(module):
        module[1].extra = torch.nn.Parameter(torch.zeros(2))

    with pytest.raises(CheckFailed, match=r"`module\[1\]\.extra` was added"):
        _call(add_parameter, torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), what="f",
              unchanged=fc._snapshot)


MODIFYING_CASES = [
    (fc.check_fold_into_linear, fold_eval_not_restored, {}),
    (fc.check_fold_into_linear, fold_double, {}),
    (fc.check_fold_into_linear, fold_frozen, {}),
    (fc.check_keras_bn_to_torch, port_freezing_the_layer, {}),
    (fc.check_predict, predict_in_float64, {"start_training": False}),
]


@pytest.mark.parametrize("check, answer, kwargs", MODIFYING_CASES, ids=[a.__name__ for _, a, _ in MODIFYING_CASES])
def test_a_changed_input_is_named_the_same_when_the_grader_calls_the_probe(check, answer, kwargs):
    assert verdict_now(check, answer, seed=7, **kwargs) == "modified-input"
    assert verdict_called(check, answer, seed=7, **kwargs) == "modified-input"

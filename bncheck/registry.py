"""The one table of checks: each kind's probe (run where the learner's code
runs) and judge (run where the reference is).

Entries are ``"module:function"`` names resolved on first use, so this table
imports nothing: a graded kernel holds the probe modules only, and the grader
imports the judges (and, for the framework kinds, Keras or PyTorch) only when
it judges such a check.
"""

from __future__ import annotations

import importlib

# kind: (the learner-facing check function, the judge)
KINDS: dict[str, tuple[str, str]] = {
    "forward": ("bncheck.probes:check_forward", "bncheck.judges:_judge_forward"),
    "backward": ("bncheck.probes:check_backward", "bncheck.judges:_judge_backward"),
    "running_layer": ("bncheck.probes:check_running_layer", "bncheck.judges:_judge_running_layer"),
    "scaler": ("bncheck.probes:check_scaler", "bncheck.judges:_judge_scaler"),
    "numgrad": ("bncheck.probes:check_numerical_gradient", "bncheck.judges:_judge_numgrad"),
    "sequence_bn": ("bncheck.framework_probes:check_sequence_bn", "bncheck.framework_judges:_judge_sequence_bn"),
    "param_counts": ("bncheck.framework_probes:check_param_counts", "bncheck.framework_judges:_judge_param_counts"),
    "freeze_batchnorm": ("bncheck.framework_probes:check_freeze_batchnorm",
                         "bncheck.framework_judges:_judge_freeze_batchnorm"),
    "predict": ("bncheck.framework_probes:check_predict", "bncheck.framework_judges:_judge_predict"),
    "keras_bn_to_torch": ("bncheck.framework_probes:check_keras_bn_to_torch",
                          "bncheck.framework_judges:_judge_keras_bn_to_torch"),
    "fold_into_linear": ("bncheck.framework_probes:check_fold_into_linear",
                         "bncheck.framework_judges:_judge_fold_into_linear"),
}


def _resolve(name: str):
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def _entry(kind: str) -> tuple[str, str]:
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown check kind {kind!r}; expected one of {sorted(KINDS)}") from None


def check_function(kind: str):
    """The ``check_<what>`` function of ``kind``."""
    return _resolve(_entry(kind)[0])


def judge_function(kind: str):
    """The judge of ``kind``: ``judge(params, results)`` raises CheckFailed if the results are wrong."""
    return _resolve(_entry(kind)[1])

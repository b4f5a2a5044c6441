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
    "layernorm": ("bncheck.probes:check_layernorm", "bncheck.normfamily_judges:_judge_layernorm"),
    "layernorm_backward": ("bncheck.probes:check_layernorm_backward",
                           "bncheck.normfamily_judges:_judge_layernorm_backward"),
    "groupnorm": ("bncheck.probes:check_groupnorm", "bncheck.normfamily_judges:_judge_groupnorm"),
    "groupnorm_backward": ("bncheck.probes:check_groupnorm_backward",
                           "bncheck.normfamily_judges:_judge_groupnorm_backward"),
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

# kind: the judge of what a check of that kind records before a later part fails (see bncheck.probes._after)
PARTIAL: dict[str, str] = {
    "layernorm_backward": "bncheck.normfamily_judges:_judge_layernorm_forward_part",
    "groupnorm_backward": "bncheck.normfamily_judges:_judge_groupnorm_forward_part",
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


def partial_judge_function(kind: str):
    """The judge of what a ``kind`` check recorded before it failed, or None (its failure is all there is)."""
    _entry(kind)
    return _resolve(PARTIAL[kind]) if kind in PARTIAL else None

"""bncheck: how a learner's answer is probed and judged.

- :mod:`bncheck.probes` and :mod:`bncheck.framework_probes`: the ``check_*``
  functions the exercise notebooks call. They build seeded inputs, call the
  learner's function and turn its answer into plain arrays. Numpy only (the
  framework probes import Keras or PyTorch inside their functions); the only
  part of the course a graded kernel sees.
- :mod:`bncheck.judges`, :mod:`bncheck.normfamily_judges` (layer and group
  norm) and :mod:`bncheck.framework_judges`: compare those
  arrays with ``bnlib``'s reference (or the frameworks themselves) and name
  the mistake. They run in the learner's own kernel when the learner checks
  their work, and in the grader's process during grading, never in a graded
  kernel.
- :mod:`bncheck.registry`: the one table of kinds, probe and judge.
"""

from .framework_probes import (
    check_fold_into_linear,
    check_freeze_batchnorm,
    check_keras_bn_to_torch,
    check_param_counts,
    check_predict,
    check_sequence_bn,
)
from .probes import (
    HIDDEN,
    CheckFailed,
    check_backward,
    check_forward,
    check_groupnorm,
    check_groupnorm_backward,
    check_layernorm,
    check_layernorm_backward,
    check_numerical_gradient,
    check_running_layer,
    check_scaler,
)

__all__ = [
    "HIDDEN",
    "CheckFailed",
    "check_backward",
    "check_fold_into_linear",
    "check_forward",
    "check_freeze_batchnorm",
    "check_groupnorm",
    "check_groupnorm_backward",
    "check_keras_bn_to_torch",
    "check_layernorm",
    "check_layernorm_backward",
    "check_numerical_gradient",
    "check_param_counts",
    "check_predict",
    "check_running_layer",
    "check_scaler",
    "check_sequence_bn",
]

"""bnlib: batch normalization in numpy, the reference implementation of the course.

What is taught, in the order of the book:

* :mod:`bnlib.preprocessing` -- min-max normalization and z-score standardization (chapter 1);
* :mod:`bnlib.functional` -- the forward/backward pair and inference mode (chapters 2-4);
* :mod:`bnlib.conventions` -- PyTorch's and Keras's running-statistics conventions, as data (chapter 4);
* :mod:`bnlib.layer` -- :class:`BatchNorm`, a stateful layer that converts to and from
  PyTorch and Keras (chapters 4-6);
* :mod:`bnlib.gradcheck` -- numerical gradient checking (chapter 3);
* :mod:`bnlib.fold` -- folding batch norm into the previous layer (chapter 6);
* :mod:`bnlib.normfamily` -- layer norm and group norm (instance norm), batch norm's relatives.

Depends on numpy only; PyTorch and Keras are imported by the conversion methods alone.
"""

from .conventions import CONVENTIONS, KERAS, TORCH, Convention
from .fold import fold_batchnorm
from .functional import (
    BatchNormCache,
    batch_statistics,
    batchnorm_backward,
    batchnorm_backward_staged,
    batchnorm_forward,
    batchnorm_inference,
    batchnorm_inference_backward,
    update_running_stats,
)
from .gradcheck import gradcheck_batchnorm, numerical_gradient, rel_error
from .layer import BatchNorm
from .normfamily import (
    GroupNormCache,
    LayerNormCache,
    groupnorm_backward,
    groupnorm_forward,
    layernorm_backward,
    layernorm_forward,
)
from .preprocessing import MinMaxScaler, NotFittedError, StandardScaler

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BatchNormCache",
    "CONVENTIONS",
    "Convention",
    "GroupNormCache",
    "KERAS",
    "LayerNormCache",
    "MinMaxScaler",
    "NotFittedError",
    "StandardScaler",
    "TORCH",
    "batch_statistics",
    "batchnorm_backward",
    "batchnorm_backward_staged",
    "batchnorm_forward",
    "batchnorm_inference",
    "batchnorm_inference_backward",
    "fold_batchnorm",
    "gradcheck_batchnorm",
    "groupnorm_backward",
    "groupnorm_forward",
    "layernorm_backward",
    "layernorm_forward",
    "numerical_gradient",
    "rel_error",
    "update_running_stats",
]

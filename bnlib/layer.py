"""A small stateful batch-norm layer on top of the functional core.

State handling follows PyTorch's ``_BatchNorm`` (parameters, running buffers,
``reset_running_stats``, ``train()``/``eval()``); framework differences come
from a :class:`~bnlib.Convention`, never from the framework's name.
PyTorch and Keras are imported only by the conversion methods.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from .conventions import TORCH, Convention, get_convention
from .functional import (
    _forward,
    batchnorm_backward,
    batchnorm_inference,
    batchnorm_inference_backward,
    update_running_stats,
)

_DEFAULT = object()


class BatchNorm:
    """Batch normalization with running statistics, in PyTorch's or Keras's convention.

    **Training mode** (``bn.train()``, the default for a new layer, as in
    PyTorch) normalizes with the statistics of the batch and updates the running
    statistics (``running-mean``, ``running-var``)::

        running = keep * running + new * batch_statistic

    with ``(keep, new) = (1 - momentum, momentum)`` and the **unbiased** batch
    variance in the PyTorch convention, ``(momentum, 1 - momentum)`` and the
    **biased** one in the Keras convention.

    **Inference mode** (``bn.eval()``) normalizes with the running statistics,
    so each example's output depends on that example alone, and updates nothing.

    As in Keras, **a layer with trainable=False runs in inference mode even
    in training mode**, and updates nothing. As in PyTorch, a layer with
    ``track_running_stats=False`` has no running statistics and always uses the
    batch's.

    Parameters
    ----------
    num_features : int
        ``C``, the size of the feature axis.
    axis : int, optional
        Feature axis of the input; the convention's by default (1 for PyTorch,
        -1 for Keras).
    eps : float, optional
        The convention's by default (1e-5 PyTorch, 1e-3 Keras).
    momentum : float or None, optional
        In the convention's meaning (0.1 weights the new batch in PyTorch; 0.99
        weights the old value in Keras). ``None`` (PyTorch only) is a cumulative
        moving average, ``new = 1 / num_batches_tracked``.
    convention : {"torch", "keras"} or Convention
    affine : bool
        Whether gamma and beta are learned (carried to the framework layer).
    track_running_stats : bool
    trainable : bool
    dtype : numpy dtype
        Of the parameters and running statistics.

    Shape
    -----
    Input ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` with ``axis=1``, or
    ``(N, ..., C)`` with ``axis=-1``; output the same shape.

    Examples
    --------
    >>> import numpy as np, bnlib
    >>> bn = bnlib.BatchNorm(3)                       # PyTorch convention
    >>> x = np.random.default_rng(0).normal(12, 5, size=(8, 3))
    >>> y = bn(x)                                     # batch statistics
    >>> bool(np.allclose(bn.running_mean, 0.1 * x.mean(0)))
    True
    >>> y_eval = bn.eval()(x)                         # running statistics
    """

    def __init__(
        self,
        num_features: int,
        *,
        axis: int | None = None,
        eps: float | None = None,
        momentum=_DEFAULT,
        convention: str | Convention = "torch",
        affine: bool = True,
        track_running_stats: bool = True,
        trainable: bool = True,
        dtype=np.float64,
    ):
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"num_features must be an int >= 1; got {num_features!r}")
        self.convention = get_convention(convention)
        self.num_features = int(num_features)
        self.axis = self.convention.channel_axis if axis is None else axis
        self.eps = _checks.positive_eps(self.convention.eps if eps is None else eps)
        if momentum is _DEFAULT:
            momentum = self.convention.momentum
        if momentum is None and not self.convention.allows_cumulative:
            raise ValueError(
                f"momentum=None (cumulative average) exists only in PyTorch; got it with the {self.convention.name} convention"
            )
        self.momentum = None if momentum is None else _checks.momentum_value(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.trainable = bool(trainable)
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.floating):
            raise TypeError(f"dtype must be a floating-point dtype; got {self.dtype}")
        self.gamma = np.ones(self.num_features, self.dtype)
        self.beta = np.zeros(self.num_features, self.dtype)
        self.reset_running_stats()
        self.training = True
        self._saved = None  # what backward needs from the last call
        self._input_ndim = None  # last input rank, for to_torch / to_keras

    # ----------------------------------------------------------- state ----
    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches seen (both frameworks' start)."""
        self.running_mean = np.zeros(self.num_features, self.dtype)
        self.running_var = np.ones(self.num_features, self.dtype)
        self.num_batches_tracked = 0

    def train(self, mode: bool = True) -> BatchNorm:
        """Training mode: batch statistics, running statistics updated. Returns self."""
        self.training = bool(mode)
        return self

    def eval(self) -> BatchNorm:
        """Inference mode: running statistics, nothing updated. Returns self."""
        return self.train(False)

    @property
    def uses_batch_statistics(self) -> bool:
        """Whether the next call normalizes with the batch's own statistics."""
        return (self.training and self.trainable) or not self.track_running_stats

    def __repr__(self) -> str:
        mode = "train" if self.training else "eval"
        return (
            f"BatchNorm({self.num_features}, axis={self.axis}, eps={self.eps:g}, momentum={self.momentum}, "
            f"convention={self.convention.name!r}, trainable={self.trainable}, "
            f"track_running_stats={self.track_running_stats}) [{mode}]"
        )

    # --------------------------------------------------------- compute ----
    def __call__(self, x) -> np.ndarray:
        """Normalize ``x``; in training mode also update the running statistics."""
        x = _checks.as_float_array(x, "x")
        ax = _checks.feature_axis(self.axis, x.ndim, x.shape)
        if x.shape[ax] != self.num_features:
            raise ValueError(
                f"x must have {self.num_features} features on axis {self.axis}, as this layer; "
                f"got x of shape {x.shape} with {x.shape[ax]} there"
            )
        self._input_ndim = x.ndim
        gamma, beta = self.gamma.astype(x.dtype), self.beta.astype(x.dtype)
        if not self.uses_batch_statistics:
            stats = (self.running_mean.copy(), self.running_var.copy())
            self._saved = ("inference", x, ax, stats)
            return batchnorm_inference(x, gamma, beta, *stats, axis=ax, eps=self.eps)
        out, cache = _forward(x, gamma, beta, ax, self.eps, allow_single_value=not self.convention.single_value_error)
        self._saved = ("batch", cache)
        if self.training and self.trainable and self.track_running_stats:
            self._update(cache, x.size // self.num_features)
        return out

    def _update(self, cache, n: int) -> None:
        self.num_batches_tracked += 1
        momentum = "cumulative" if self.momentum is None else self.momentum
        new_mean, new_var = update_running_stats(
            self.running_mean,
            self.running_var,
            cache.mean.astype(self.dtype),
            cache.var.astype(self.dtype),
            n,
            convention=self.convention,
            momentum=momentum,
            num_batches_tracked=self.num_batches_tracked,
        )
        self.running_mean, self.running_var = new_mean.astype(self.dtype), new_var.astype(self.dtype)

    def backward(self, dout):
        """Gradients for the last call: ``(dx, dgamma, dbeta)``.

        After a batch-statistics call this is :func:`bnlib.batchnorm_backward`;
        after an inference call the statistics are constants
        (:func:`bnlib.batchnorm_inference_backward`).
        """
        if self._saved is None:
            raise RuntimeError("backward needs a forward call first: call the layer on a batch, then backward(dout)")
        if self._saved[0] == "batch":
            return batchnorm_backward(dout, self._saved[1])
        _, x, ax, (rm, rv) = self._saved
        return batchnorm_inference_backward(dout, x, self.gamma.astype(x.dtype), rm, rv, axis=ax, eps=self.eps)

    # ------------------------------------------------------ momentum --------
    @property
    def new_batch_weight(self) -> float | None:
        """Weight of the new batch in the running update, or None for a cumulative average."""
        return None if self.momentum is None else self.convention.update_weights(self.momentum)[1]

    # --------------------------------------------------------- PyTorch ----
    @classmethod
    def from_torch(cls, module) -> BatchNorm:
        """A layer with the configuration, weights, statistics and mode of a PyTorch batch norm.

        Parameters
        ----------
        module : torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d
        """
        torch = _import("torch")
        if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            raise TypeError(
                "from_torch expects a torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d; "
                f"got an object of type {type(module).__name__}"
            )
        if isinstance(module, torch.nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
            raise ValueError("from_torch needs an initialized module; got a lazy batch norm that has not seen an input yet")
        dtype = _torch_numpy_dtype(module)
        bn = cls(
            module.num_features,
            axis=1,
            eps=module.eps,
            momentum=module.momentum,
            convention=TORCH,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            dtype=dtype,
        )
        with torch.no_grad():
            if module.affine:
                bn.gamma = module.weight.detach().cpu().numpy().astype(dtype)
                bn.beta = module.bias.detach().cpu().numpy().astype(dtype)
            if module.track_running_stats:
                bn.running_mean = module.running_mean.detach().cpu().numpy().astype(dtype)
                bn.running_var = module.running_var.detach().cpu().numpy().astype(dtype)
                bn.num_batches_tracked = int(module.num_batches_tracked)
        bn.training = module.training
        # BatchNorm1d takes 2-D and 3-D input alike: its rank stays unknown.
        bn._input_ndim = {2: 4, 3: 5}.get(_torch_spatial_dims(module))
        bn._torch_dims = _torch_spatial_dims(module)
        return bn

    def to_torch(self, input_ndim: int | None = None):
        """An equivalent ``torch.nn.BatchNorm{1,2,3}d``, in this layer's mode.

        Momentum is converted to PyTorch's meaning (new-batch weight: a Keras
        momentum of 0.99 becomes 0.01) and eps is kept. The running variance is
        copied as it is: in eval mode outputs agree exactly, but a Keras-style
        (biased) running variance then drifts from what PyTorch would have
        accumulated by the factor n/(n-1).

        Parameters
        ----------
        input_ndim : int, optional
            Rank of the inputs: 2 or 3 gives BatchNorm1d, 4 BatchNorm2d,
            5 BatchNorm3d. By default the rank of the last input or of the
            module this layer came from.
        """
        torch = _import("torch")
        if input_ndim is None and self._input_ndim is None and getattr(self, "_torch_dims", None) == 1:
            input_ndim = 2  # from a BatchNorm1d: 2-D or 3-D, the same module
        ndim = self._rank(input_ndim, "to_torch")
        if self.axis % ndim != 1:
            raise ValueError(
                f"PyTorch normalizes over dim 1 (channels first); this layer's axis is {self.axis} "
                f"for {ndim}-D inputs. Expected axis=1: move the channel axis first (e.g. NHWC -> NCHW) "
                "and build the layer with axis=1"
            )
        cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[ndim]
        module = cls(
            self.num_features,
            eps=self.eps,
            momentum=self.new_batch_weight,
            affine=self.affine,
            track_running_stats=self.track_running_stats,
            dtype=getattr(torch, self.dtype.name),
        )
        with torch.no_grad():
            if self.affine:
                module.weight.copy_(torch.from_numpy(self.gamma))
                module.bias.copy_(torch.from_numpy(self.beta))
            if self.track_running_stats:
                module.running_mean.copy_(torch.from_numpy(self.running_mean))
                module.running_var.copy_(torch.from_numpy(self.running_var))
                module.num_batches_tracked.fill_(self.num_batches_tracked)
        module.train(self.training and self.trainable)
        module.requires_grad_(self.trainable)
        return module

    # ----------------------------------------------------------- Keras ----
    @classmethod
    def from_keras(cls, layer) -> BatchNorm:
        """A layer with the configuration and weights of a built ``keras.layers.BatchNormalization``.

        Keras has no mode on the layer (``training`` is an argument of each
        call, False by default outside ``fit``), so the result starts in
        inference mode: call ``.train()`` for ``training=True``.
        """
        keras = _import("keras")
        if not isinstance(layer, keras.layers.BatchNormalization):
            raise TypeError(
                f"from_keras expects a keras.layers.BatchNormalization; got an object of type {type(layer).__name__}"
            )
        if not layer.built:
            raise ValueError("from_keras needs a built layer: call it on an input or layer.build(input_shape) first")
        if getattr(layer, "renorm", False):
            raise ValueError("from_keras does not support batch renormalization; got a layer with renorm=True")
        moving_mean = np.asarray(layer.moving_mean.numpy())
        dtype = moving_mean.dtype
        C = moving_mean.shape[0]
        bn = cls(
            C,
            axis=layer.axis,
            eps=layer.epsilon,
            momentum=layer.momentum,
            convention="keras",
            # Either learned vector makes the layer affine; the missing one keeps
            # its neutral value (gamma 1 or beta 0), so to_torch/to_keras keep it.
            affine=bool(layer.scale or layer.center),
            trainable=layer.trainable,
            dtype=dtype,
        )
        if layer.scale:
            bn.gamma = np.asarray(layer.gamma.numpy(), dtype)
        if layer.center:
            bn.beta = np.asarray(layer.beta.numpy(), dtype)
        bn.running_mean = moving_mean
        bn.running_var = np.asarray(layer.moving_variance.numpy(), dtype)
        bn.training = False
        spec = getattr(layer, "input_spec", None)
        bn._input_ndim = getattr(spec, "ndim", None)
        return bn

    def to_keras(self, input_ndim: int | None = None):
        """An equivalent, built ``keras.layers.BatchNormalization``.

        Momentum is converted to Keras's meaning (old-value weight: a PyTorch
        momentum of 0.1 becomes 0.9), epsilon and axis are kept, and
        ``trainable`` is carried over. Call the result with ``training=True``
        for this layer's training mode.
        """
        keras = _import("keras")
        if self.momentum is None:
            raise ValueError(
                "Keras has no cumulative moving average; expected a numeric momentum, got momentum=None. "
                "Set bn.momentum (PyTorch meaning) before converting"
            )
        ndim = self._rank(input_ndim, "to_keras")
        ax = _checks.feature_axis(self.axis, ndim, (None,) * ndim)
        layer = keras.layers.BatchNormalization(
            axis=self.axis,
            momentum=1.0 - self.new_batch_weight,
            epsilon=self.eps,
            center=self.affine,
            scale=self.affine,
            dtype=self.dtype.name,
        )
        shape = [None] * ndim
        shape[ax] = self.num_features
        layer.build(tuple(shape))
        if self.affine:
            layer.gamma.assign(self.gamma)
            layer.beta.assign(self.beta)
        layer.moving_mean.assign(self.running_mean)
        layer.moving_variance.assign(self.running_var)
        layer.trainable = self.trainable
        return layer

    def _rank(self, input_ndim, what: str) -> int:
        ndim = self._input_ndim if input_ndim is None else input_ndim
        if ndim is None:
            raise ValueError(
                f"{what} needs the rank of the inputs (2 to 5); got none: pass input_ndim=..., "
                "or call the layer on an input first"
            )
        if not isinstance(ndim, (int, np.integer)) or not 2 <= ndim <= 5:
            raise ValueError(f"input_ndim must be an int from 2 to 5; got {ndim!r}")
        return int(ndim)


def _import(name: str):
    try:
        return __import__(name)
    except ImportError as err:  # pragma: no cover - both are course dependencies
        raise ImportError(f"this conversion needs {name}, which is not installed: pip install {name}") from err


def _torch_numpy_dtype(module) -> np.dtype:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return np.dtype(str(t.dtype).removeprefix("torch."))
    return np.dtype(np.float32)


def _torch_spatial_dims(module) -> int | None:
    for dims in (1, 2, 3):
        if type(module).__name__.endswith(f"BatchNorm{dims}d"):
            return dims
    return None

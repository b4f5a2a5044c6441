"""Input checks shared by every public function.

Each check raises with a message that says what was expected and what was
received, so that a learner (or an instructor reading a grading report) can act
on it without reading bnlib's source.
"""

from __future__ import annotations

import numbers

import numpy as np


def as_float_array(x, name: str = "x") -> np.ndarray:
    """Return ``x`` as a real floating-point ndarray, or raise TypeError.

    Integer, boolean, complex and object inputs are refused rather than cast:
    batch norm of integers is almost always a mistake upstream.
    """
    if isinstance(x, np.ndarray):
        arr = x
    elif isinstance(x, (list, tuple, numbers.Real)) or hasattr(x, "__array__"):
        arr = np.asarray(x)
    else:
        raise TypeError(
            f"{name} must be a numpy array of real floating-point numbers; "
            f"got an object of type {type(x).__name__}"
        )
    if type(arr) is not np.ndarray:  # subclasses (np.matrix, masked arrays)
        arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"{name} must have a real floating-point dtype (float32 or float64); "
            f"got dtype {arr.dtype}"
            + (" (complex numbers are not supported)" if np.issubdtype(arr.dtype, np.complexfloating) else "")
        )
    return arr


def feature_axis(axis, ndim: int, shape) -> int:
    """Normalise ``axis`` for an input of rank ``ndim``; the batch axis 0 is refused."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (numbers.Integral,)):
        raise TypeError(f"axis must be an int; got {axis!r} of type {type(axis).__name__}")
    if ndim < 2:
        raise ValueError(
            "x must have at least 2 dimensions (batch, features, ...); "
            f"got shape {tuple(shape)} with {ndim} dimension(s)"
        )
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis must be in [-{ndim}, {ndim - 1}] for an input of shape {tuple(shape)}; got axis={axis}"
        )
    ax = int(axis) % ndim
    if ax == 0:
        raise ValueError(
            f"axis={axis} is the batch axis of an input of shape {tuple(shape)}; "
            "the feature (channel) axis must be another one: 1 for (N, C, ...) or -1 for (N, ..., C)"
        )
    return ax


def per_feature(v, name: str, num_features: int, dtype, axis: int, x_shape) -> np.ndarray:
    """Return a (C,) vector of ``dtype``, or raise naming the expected and received shape."""
    arr = as_float_array(v, name)
    if arr.shape != (num_features,):
        raise ValueError(
            f"{name} must have shape ({num_features},) to match x.shape[{axis}] = {num_features} "
            f"for x of shape {tuple(x_shape)}; got {name} of shape {arr.shape}"
        )
    return arr.astype(dtype, copy=False)


def positive_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0; got eps={eps!r}")
    return float(eps)


def momentum_value(momentum, name: str = "momentum") -> float:
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1]; got {name}={momentum!r}")
    return float(momentum)


def check_finite(x: np.ndarray, name: str = "x") -> None:
    """Raise ValueError if ``x`` holds NaN or inf, naming how many and where the first is.

    Called only after a cheap check (a non-finite sum or statistic) has failed,
    so that the common, clean case pays nothing extra.
    """
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        kinds = " and ".join(k for k, found in (("NaN", np.isnan(x).any()), ("inf", np.isinf(x).any())) if found)
        raise ValueError(
            f"{name} must contain only finite numbers; got {int(bad.sum())} {kinds} value(s), "
            f"the first at index {first}. Batch norm would spread them to the whole channel."
        )


def raise_overflow(x: np.ndarray, name: str = "x") -> None:
    raise ValueError(
        f"the batch statistics of {name} overflowed (dtype {x.dtype}, largest |value| "
        f"{float(np.abs(x).max()):.3g}); expected values whose squares fit the dtype: "
        "use float64 or rescale the input"
    )

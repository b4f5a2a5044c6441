"""Normalization and standardization of input features (chapter 1).

Both scalers learn per-feature statistics from **training** data in ``fit``
and apply those same statistics to any data in ``transform``. Fitting on the
test set too (or on all data before splitting) leaks information from the test
set into the model: the "leakage trap" of chapter 1.

Min-max normalization (``prep-minmax``)::

    z = lo + (x - min) / (max - min) * (hi - lo)

Z-score standardization (``prep-zscore``), with the biased standard deviation::

    z = (x - mean) / std

A constant feature (``max == min`` or ``std == 0``) would divide by zero;
its scale is taken as 1, so it maps to ``lo`` (min-max) or 0 (z-score), and
``inverse_transform`` restores it exactly.
"""

from __future__ import annotations

import numpy as np

from . import _checks


class NotFittedError(RuntimeError):
    """A scaler was used before ``fit``."""


def _as_table(X, name="X") -> np.ndarray:
    X = _checks.as_float_array(X, name)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D, (n_samples, n_features); got shape {X.shape}")
    if not np.isfinite(X).all():
        _checks.check_finite(X, name)
    return X


class _Scaler:
    """Shared fit/transform plumbing: subclasses set ``offset_`` and ``scale_``
    in ``_fit``, and ``z = (x - offset_) / scale_ * span + lo``."""

    _lo = 0.0
    _span = 1.0

    def fit(self, X):
        """Learn per-feature statistics from training data ``X``, (n_samples, n_features)."""
        X = _as_table(X)
        if X.shape[0] < 1:
            raise ValueError(f"X must have at least 1 sample to fit; got shape {X.shape}")
        self._fit(X)
        self.n_features_in_ = X.shape[1]
        return self

    def _checked(self, X, name):
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(X_train) first")
        X = _as_table(X, name)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{name} must have {self.n_features_in_} features, as the data fitted; "
                f"got {X.shape[1]} features (shape {X.shape})"
            )
        return X

    def transform(self, X):
        """Scale ``X`` with the statistics learned in ``fit`` (never refitted)."""
        X = self._checked(X, "X")
        return (X - self.offset_) / self.scale_ * self._span + self._lo

    def fit_transform(self, X):
        """``fit(X)`` then ``transform(X)``; for training data only."""
        return self.fit(X).transform(X)

    def inverse_transform(self, Z):
        """Undo :meth:`transform`: ``x = (z - lo) / span * scale_ + offset_``."""
        Z = self._checked(Z, "Z")
        return (Z - self._lo) / self._span * self.scale_ + self.offset_


class MinMaxScaler(_Scaler):
    """Min-max normalization to ``feature_range`` (``prep-minmax``).

    Parameters
    ----------
    feature_range : (float, float)
        ``(lo, hi)`` with ``lo < hi``; training data map into it.

    Attributes
    ----------
    data_min_, data_max_ : ndarray, (n_features,)
        Per-feature minimum and maximum of the training data.
    scale_ : ndarray, (n_features,)
        ``data_max_ - data_min_``, or 1 for a constant feature.

    Examples
    --------
    >>> import numpy as np
    >>> from bnlib import MinMaxScaler
    >>> s = MinMaxScaler().fit(np.array([[0.0, 5.0], [10.0, 5.0]]))
    >>> s.transform(np.array([[5.0, 5.0], [20.0, 7.0]]))
    array([[0.5, 0. ],
           [2. , 2. ]])
    """

    def __init__(self, feature_range=(0.0, 1.0)):
        lo, hi = (float(v) for v in feature_range)
        if not lo < hi:
            raise ValueError(f"feature_range must be (lo, hi) with lo < hi; got {tuple(feature_range)}")
        self.feature_range = (lo, hi)
        self._lo, self._span = lo, hi - lo

    def _fit(self, X):
        self.data_min_ = X.min(axis=0)
        self.data_max_ = X.max(axis=0)
        rng = self.data_max_ - self.data_min_
        self.offset_ = self.data_min_
        self.scale_ = np.where(rng > 0, rng, 1.0)


class StandardScaler(_Scaler):
    """Z-score standardization (``prep-zscore``): zero mean, unit biased std on the training data.

    Attributes
    ----------
    mean_, var_ : ndarray, (n_features,)
        Per-feature mean and biased variance (``ddof=0``) of the training data.
    scale_ : ndarray, (n_features,)
        ``sqrt(var_)``, or 1 for a constant feature.
    """

    def _fit(self, X):
        # accumulated in float64 (as scikit-learn does), stored in X's dtype: a float32
        # feature with mean 1e4 and std 2 would otherwise lose three digits of its mean
        mean = X.mean(axis=0, dtype=np.float64)
        self.mean_ = mean.astype(X.dtype)
        self.var_ = ((X - mean) ** 2).mean(axis=0).astype(X.dtype)
        std = np.sqrt(self.var_)
        self.offset_ = self.mean_
        self.scale_ = np.where(std > 0, std, 1.0)

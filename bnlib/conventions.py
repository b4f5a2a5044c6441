"""How PyTorch and Keras differ, written down as data.

The two frameworks compute the same training-mode normalization but keep their
running statistics differently (chapter "Training versus inference statistics",
equations :math:`(4.1)`-:math:`(4.3)`):

================================  =========================  ========================
setting                           PyTorch ``BatchNorm2d``    Keras 3 ``BatchNormalization``
================================  =========================  ========================
eps default                       1e-5                       1e-3
momentum default                  0.1                        0.99
momentum weights                  the NEW batch              the OLD running value
running variance stored           unbiased, ``var*n/(n-1)``  biased ``var``
one value per channel (training)  ValueError                 allowed, output = beta
``momentum=None``                 cumulative average         not available
================================  =========================  ========================

Every place in bnlib that depends on the framework reads one of these fields;
nothing else branches on the framework's name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Convention:
    """The settings that make a batch-norm implementation behave like a framework's.

    Attributes
    ----------
    name : str
        ``"torch"`` or ``"keras"``.
    eps : float
        Default epsilon added to the variance inside the square root.
    momentum : float
        Default momentum, in the framework's own meaning (see ``momentum_weights_new``).
    momentum_weights_new : bool
        True if momentum is the weight of the new batch statistic (PyTorch),
        False if it is the weight of the old running value (Keras).
    unbiased_running_var : bool
        True if the running variance stores the Bessel-corrected batch variance
        ``var * n / (n - 1)``, with ``n`` the number of values per channel.
    single_value_error : bool
        True if training on one value per channel is an error (PyTorch).
    allows_cumulative : bool
        True if ``momentum=None`` means a cumulative moving average (PyTorch).
    channel_axis : int
        The feature axis the framework uses by default.
    """

    name: str
    eps: float
    momentum: float
    momentum_weights_new: bool
    unbiased_running_var: bool
    single_value_error: bool
    allows_cumulative: bool
    channel_axis: int

    def update_weights(self, momentum: float) -> tuple[float, float]:
        """``(keep, new)``: running = keep * running + new * batch_statistic.

        Computed the way the framework computes them, so that float64 results
        agree to the last bits: PyTorch ``(1 - m, m)``, Keras ``(m, 1 - m)``.
        """
        if self.momentum_weights_new:
            return 1.0 - momentum, momentum
        return momentum, 1.0 - momentum

    def from_new_batch_weight(self, weight: float) -> float:
        """The momentum, in this framework's meaning, that gives new-batch weight ``weight``."""
        return weight if self.momentum_weights_new else 1.0 - weight


TORCH = Convention(
    name="torch",
    eps=1e-5,
    momentum=0.1,
    momentum_weights_new=True,
    unbiased_running_var=True,
    single_value_error=True,
    allows_cumulative=True,
    channel_axis=1,
)

KERAS = Convention(
    name="keras",
    eps=1e-3,
    momentum=0.99,
    momentum_weights_new=False,
    unbiased_running_var=False,
    single_value_error=False,
    allows_cumulative=False,
    channel_axis=-1,
)

CONVENTIONS = {c.name: c for c in (TORCH, KERAS)}


def get_convention(convention) -> Convention:
    """Return a :class:`Convention` from itself or its name."""
    if isinstance(convention, Convention):
        return convention
    try:
        return CONVENTIONS[convention]
    except (KeyError, TypeError):
        raise ValueError(
            f"convention must be one of {sorted(CONVENTIONS)} or a bnlib.Convention; got {convention!r}"
        ) from None

"""Round trips between bnlib.BatchNorm, PyTorch and Keras.

``BatchNorm.from_torch(module)`` / ``.to_torch()`` and ``BatchNorm.from_keras(layer)``
/ ``.to_keras()`` must carry the weights, the running statistics, eps, the
momentum (converted: Keras's 0.99 weights the OLD value, PyTorch's 0.1 the NEW
one) and the mode, so that the converted object reproduces the original's
outputs in training and inference mode and keeps doing so over further steps.

Tolerances as in the parity tests: float64 ``1e-10``, float32 ``1e-4``,
relative to max(1, max|expected|).
"""

from __future__ import annotations

import numpy as np
import pytest

import bnlib
from _support import TOL, assert_close

STEPS = 5


# ------------------------------------------------------------- helpers ----
def make_batch(rng, shape, axis, dtype, step=0):
    """``5*randn + 12`` plus a per-channel offset on ``axis``."""
    ax = axis % len(shape)
    bshape = [1] * len(shape)
    bshape[ax] = shape[ax]
    x = 5.0 * rng.standard_normal(shape) + 12.0 + 2.0 * np.arange(shape[ax]).reshape(bshape) + step
    return x.astype(dtype)


def make_affine(rng, C, dtype):
    return (1.5 + rng.random(C)).astype(dtype), rng.standard_normal(C).astype(dtype)


def torch_dtype(torch, dtype):
    return {np.float64: torch.float64, np.float32: torch.float32}[dtype]


def trained_module(torch, rng, name, shape, dtype, **kwargs):
    """A torch batch norm with non-trivial weights that has seen STEPS training batches."""
    module = getattr(torch.nn, name)(shape[1], dtype=torch_dtype(torch, dtype), **kwargs)
    gamma, beta = make_affine(rng, shape[1], dtype)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(gamma))
        module.bias.copy_(torch.from_numpy(beta))
        for step in range(STEPS):
            module(torch.from_numpy(make_batch(rng, shape, 1, dtype, step)))
    return module


def torch_out(torch, module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def trained_layer(rng, shape, axis, dtype, **kwargs):
    """A bnlib layer with non-trivial weights that has seen STEPS training batches."""
    bn = bnlib.BatchNorm(shape[axis], axis=axis, dtype=dtype, **kwargs)
    bn.gamma, bn.beta = make_affine(rng, shape[axis], dtype)
    for step in range(STEPS):
        bn(make_batch(rng, shape, axis, dtype, step))
    return bn


def trained_keras_layer(keras, rng, shape, axis, dtype, *, momentum=0.9, eps=1e-3):
    layer = keras.layers.BatchNormalization(axis=axis, momentum=momentum, epsilon=eps, dtype=np.dtype(dtype).name)
    build_shape = [None] * len(shape)
    build_shape[axis] = shape[axis]
    layer.build(tuple(build_shape))
    gamma, beta = make_affine(rng, shape[axis], dtype)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    for step in range(STEPS):
        layer(make_batch(rng, shape, axis, dtype, step), training=True)
    return layer


def keras_out(layer, x, *, training):
    return np.asarray(layer(x, training=training))


TORCH_CASES = [
    pytest.param("BatchNorm1d", (2, 3), id="BatchNorm1d-N2xC3"),
    pytest.param("BatchNorm1d", (2, 3, 4), id="BatchNorm1d-N2xC3xL4"),
    pytest.param("BatchNorm2d", (3, 2, 3, 3), id="BatchNorm2d-N3xC2x3x3"),
]
KERAS_CASES = [
    pytest.param(-1, (2, 3), id="axis-1-N2xD3"),
    pytest.param(-1, (2, 3, 3, 2), id="axis-1-NHWC-N2x3x3xC2"),
    pytest.param(1, (2, 3, 3, 3), id="axis1-NCHW-N2xC3x3x3"),
]
DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]
TORCH_MOMENTA = [pytest.param(0.1, id="momentum0.1"), pytest.param(None, id="momentumNone-cumulative")]


def assert_torch_and_layer_agree(torch, rng, module, bn, shape, dtype, steps=3):
    """Training steps on both, comparing outputs and running statistics, then one eval call."""
    tol = TOL[dtype]
    for step in range(steps):
        x = make_batch(rng, shape, 1, dtype, STEPS + step)
        assert_close(bn(x), torch_out(torch, module, x), tol=tol, what=f"training step {step} output")
    if module.track_running_stats:
        assert_close(bn.running_mean, module.running_mean.numpy(), tol=tol, what="running_mean after further steps")
        assert_close(bn.running_var, module.running_var.numpy(), tol=tol, what="running_var after further steps")
        assert bn.num_batches_tracked == int(module.num_batches_tracked), (
            f"expected num_batches_tracked {int(module.num_batches_tracked)}, received {bn.num_batches_tracked}"
        )
    x = make_batch(rng, shape, 1, dtype, STEPS + steps)
    bn.eval()
    module.eval()
    assert_close(bn(x), torch_out(torch, module, x), tol=tol, what="eval output")


# ------------------------------------------------------------ PyTorch ----
@pytest.mark.torch
@pytest.mark.parametrize("momentum", TORCH_MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape", TORCH_CASES)
def test_from_torch_reproduces_module_in_training_and_eval(torch, rng, name, shape, dtype, momentum):
    module = trained_module(torch, rng, name, shape, dtype, eps=1e-4, momentum=momentum)
    bn = bnlib.BatchNorm.from_torch(module)
    assert (bn.eps, bn.momentum, bn.training, bn.convention.name) == (1e-4, momentum, True, "torch"), (
        f"expected eps 1e-4, momentum {momentum}, training, torch convention; received {bn!r}"
    )
    assert bn.num_batches_tracked == STEPS, f"expected {STEPS} batches tracked, received {bn.num_batches_tracked}"
    assert bn.running_mean.dtype == dtype, f"expected dtype {np.dtype(dtype)}, received {bn.running_mean.dtype}"
    assert_torch_and_layer_agree(torch, rng, module, bn, shape, dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape", TORCH_CASES)
def test_from_torch_of_an_eval_module_starts_in_eval_mode(torch, rng, name, shape, dtype):
    module = trained_module(torch, rng, name, shape, dtype).eval()
    bn = bnlib.BatchNorm.from_torch(module)
    assert not bn.training, f"expected an eval-mode layer from an eval module, received {bn!r}"
    x = make_batch(rng, shape, 1, dtype, STEPS)
    assert_close(bn(x), torch_out(torch, module, x), tol=TOL[dtype], what="eval output")


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name, shape", TORCH_CASES)
def test_from_torch_without_running_stats_keeps_using_batch_statistics(torch, rng, name, shape, mode):
    module = trained_module(torch, rng, name, shape, np.float64, track_running_stats=False).train(mode == "train")
    bn = bnlib.BatchNorm.from_torch(module)
    assert not bn.track_running_stats and bn.uses_batch_statistics, f"expected batch statistics, received {bn!r}"
    x = make_batch(rng, shape, 1, np.float64, STEPS)
    assert_close(bn(x), torch_out(torch, module, x), tol=TOL[np.float64], what=f"{mode} output")


@pytest.mark.torch
@pytest.mark.parametrize("momentum", TORCH_MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape", TORCH_CASES)
def test_to_torch_gives_a_module_that_reproduces_the_layer(torch, rng, name, shape, dtype, momentum):
    bn = trained_layer(rng, shape, 1, dtype, eps=1e-4, momentum=momentum)
    module = bn.to_torch()
    assert type(module).__name__ == name, f"expected {name} for {len(shape)}-D input, received {type(module).__name__}"
    assert (module.eps, module.momentum, module.training) == (1e-4, momentum, True), (
        f"expected eps 1e-4, momentum {momentum}, training; received {module}, training={module.training}"
    )
    assert module.weight.dtype == torch_dtype(torch, dtype), f"expected {dtype}, received {module.weight.dtype}"
    assert int(module.num_batches_tracked) == STEPS, f"expected {STEPS}, received {int(module.num_batches_tracked)}"
    assert_torch_and_layer_agree(torch, rng, module, bn, shape, dtype)


@pytest.mark.torch
def test_to_torch_converts_a_keras_momentum_to_the_new_batch_weight(torch, rng):
    bn = bnlib.BatchNorm(3, axis=1, convention="keras")  # momentum 0.99, eps 1e-3
    module = bn.to_torch(input_ndim=4)
    assert abs(module.momentum - 0.01) < 1e-15 and module.eps == 1e-3, (
        f"expected momentum 0.01 and eps 1e-3 (Keras 0.99 weights the old value), received {module}"
    )
    assert type(module).__name__ == "BatchNorm2d", f"expected BatchNorm2d, received {type(module).__name__}"


# -------------------------------------------------------------- Keras ----
@pytest.mark.keras
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis, shape", KERAS_CASES)
def test_from_keras_reproduces_the_layer_in_both_call_modes(keras, rng, axis, shape, dtype):
    layer = trained_keras_layer(keras, rng, shape, axis, dtype, momentum=0.9, eps=2e-3)
    bn = bnlib.BatchNorm.from_keras(layer)
    config = (bn.momentum, bn.eps, bn.axis, bn.convention.name, bn.training)
    assert config == (0.9, 2e-3, axis, "keras", False), (
        f"expected (momentum 0.9, eps 2e-3, axis {axis}, keras, inference mode); received {config}"
    )
    tol = TOL[dtype]
    x = make_batch(rng, shape, axis, dtype, STEPS)
    assert_close(bn(x), keras_out(layer, x, training=False), tol=tol, what="inference output")
    bn.train()
    for step in range(3):
        x = make_batch(rng, shape, axis, dtype, STEPS + 1 + step)
        assert_close(bn(x), keras_out(layer, x, training=True), tol=tol, what=f"training call {step} output")
    assert_close(bn.running_mean, layer.moving_mean.numpy(), tol=tol, what="moving_mean after further calls")
    assert_close(bn.running_var, layer.moving_variance.numpy(), tol=tol, what="moving_variance after further calls")


@pytest.mark.keras
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis, shape", KERAS_CASES)
def test_to_keras_gives_a_layer_that_reproduces_the_bnlib_layer(keras, rng, axis, shape, dtype):
    bn = trained_layer(rng, shape, axis, dtype, convention="keras", momentum=0.9, eps=2e-3)
    layer = bn.to_keras()
    config = (layer.momentum, layer.epsilon, layer.axis, layer.trainable)
    assert config == (0.9, 2e-3, axis, True), (
        f"expected (momentum 0.9, epsilon 2e-3, axis {axis}, trainable); received {config}"
    )
    tol = TOL[dtype]
    x = make_batch(rng, shape, axis, dtype, STEPS)
    assert_close(keras_out(layer, x, training=False), bn.eval()(x), tol=tol, what="inference output")
    bn.train()
    for step in range(3):
        x = make_batch(rng, shape, axis, dtype, STEPS + 1 + step)
        assert_close(keras_out(layer, x, training=True), bn(x), tol=tol, what=f"training call {step} output")
    assert_close(layer.moving_mean.numpy(), bn.running_mean, tol=tol, what="moving_mean after further calls")
    assert_close(layer.moving_variance.numpy(), bn.running_var, tol=tol, what="moving_variance after further calls")


@pytest.mark.keras
def test_to_keras_converts_a_torch_momentum_to_the_old_value_weight(keras):
    bn = bnlib.BatchNorm(4, convention="torch")  # momentum 0.1, eps 1e-5, axis 1
    layer = bn.to_keras(input_ndim=4)
    assert abs(layer.momentum - 0.9) < 1e-15 and layer.epsilon == 1e-5, (
        f"expected momentum 0.9 and epsilon 1e-5 (PyTorch 0.1 weights the new batch); "
        f"received momentum {layer.momentum}, epsilon {layer.epsilon}"
    )


@pytest.mark.keras
def test_to_keras_refuses_a_cumulative_momentum(keras):
    bn = bnlib.BatchNorm(3, momentum=None)
    with pytest.raises(ValueError, match="cumulative"):
        bn.to_keras(input_ndim=2)


@pytest.mark.keras
@pytest.mark.torch
def test_a_frozen_keras_layer_stays_frozen_through_bnlib_and_torch(torch, keras, rng):
    shape, axis = (2, 3, 3, 3), 1
    layer = trained_keras_layer(keras, rng, shape, axis, np.float64)
    layer.trainable = False
    bn = bnlib.BatchNorm.from_keras(layer)
    assert not bn.trainable, f"expected trainable=False carried over, received {bn!r}"
    module = bn.train().to_torch()
    assert not module.training and not any(p.requires_grad for p in module.parameters()), (
        f"expected a module in eval mode without gradients, received training={module.training}, "
        f"requires_grad={[p.requires_grad for p in module.parameters()]}"
    )
    x = make_batch(rng, shape, axis, np.float64, STEPS)
    expected = keras_out(layer, x, training=True)  # frozen: inference mode even with training=True
    assert_close(bn(x), expected, tol=TOL[np.float64], what="bnlib output of the frozen layer")
    assert_close(torch_out(torch, module, x), expected, tol=TOL[np.float64], what="torch output of the frozen layer")


@pytest.mark.keras
@pytest.mark.torch
def test_a_channels_last_keras_layer_cannot_become_a_torch_module(keras, rng):
    bn = bnlib.BatchNorm.from_keras(trained_keras_layer(keras, rng, (2, 3, 3, 2), -1, np.float64))
    with pytest.raises(ValueError, match="axis=1"):
        bn.to_torch()


# ------------------------------------------------ torch -> bnlib -> keras ----
PORT_CASES = [
    pytest.param("BatchNorm1d", (2, 3), id="BatchNorm1d-N2xC3"),
    pytest.param("BatchNorm1d", (2, 3, 4), id="BatchNorm1d-N2xC3xL4"),
    pytest.param("BatchNorm2d", (2, 3, 4, 5), id="BatchNorm2d-N2xC3x4x5"),
]


@pytest.mark.torch
@pytest.mark.keras
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, shape", PORT_CASES)
def test_a_torch_module_ported_through_bnlib_to_keras_gives_the_same_eval_output(torch, keras, rng, name, shape, dtype):
    module = trained_module(torch, rng, name, shape, dtype, eps=1e-5, momentum=0.1).eval()
    layer = bnlib.BatchNorm.from_torch(module).to_keras(input_ndim=len(shape))
    config = (layer.axis, layer.epsilon)
    assert config == (1, 1e-5) and abs(layer.momentum - 0.9) < 1e-15, (
        f"expected axis 1, epsilon 1e-5, momentum 0.9; received {config}, momentum {layer.momentum}"
    )
    x = make_batch(rng, shape, 1, dtype, STEPS)
    assert_close(keras_out(layer, x, training=False), torch_out(torch, module, x), tol=TOL[dtype], what="eval output")


@pytest.mark.torch
@pytest.mark.keras
@pytest.mark.parametrize("name, shape", PORT_CASES)
def test_after_porting_the_running_variances_drift_apart_by_the_bessel_factor(torch, keras, rng, name, shape):
    """One training step on both: outputs and means agree, variances differ by m * var / (n - 1)."""
    module = trained_module(torch, rng, name, shape, np.float64, momentum=0.1)
    layer = bnlib.BatchNorm.from_torch(module).to_keras(input_ndim=len(shape))
    x = make_batch(rng, shape, 1, np.float64, STEPS)
    tol = TOL[np.float64]
    assert_close(keras_out(layer, x, training=True), torch_out(torch, module, x), tol=tol, what="training output")
    assert_close(layer.moving_mean.numpy(), module.running_mean.numpy(), tol=tol, what="means after one step")
    _, var, n = bnlib.batch_statistics(x, axis=1)
    drift = module.running_var.numpy() - layer.moving_variance.numpy()
    assert_close(drift, 0.1 * var / (n - 1), tol=tol, what="torch running_var - keras moving_variance")


# ------------------------------------------------ keras -> bnlib -> torch ----
@pytest.mark.torch
@pytest.mark.keras
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis, shape", [KERAS_CASES[0], KERAS_CASES[2]])
def test_a_keras_layer_ported_through_bnlib_to_torch_gives_the_same_inference_output(
    torch, keras, rng, axis, shape, dtype
):
    layer = trained_keras_layer(keras, rng, shape, axis, dtype, momentum=0.99, eps=1e-3)
    module = bnlib.BatchNorm.from_keras(layer).to_torch()
    assert abs(module.momentum - 0.01) < 1e-15 and module.eps == 1e-3 and not module.training, (
        f"expected momentum 0.01, eps 1e-3, eval mode; received {module}, training={module.training}"
    )
    x = make_batch(rng, shape, axis, dtype, STEPS)
    expected = keras_out(layer, x, training=False)
    assert_close(torch_out(torch, module, x), expected, tol=TOL[dtype], what="inference output")


@pytest.mark.torch
@pytest.mark.keras
@pytest.mark.parametrize(
    "center, scale", [pytest.param(False, True, id="scale-only"), pytest.param(True, False, id="center-only")]
)
def test_a_keras_layer_with_one_learned_vector_keeps_it_through_the_round_trip(torch, keras, rng, center, scale):
    """center=False or scale=False: the other vector must not be dropped by to_torch/to_keras."""
    shape = (4, 3)
    layer = keras.layers.BatchNormalization(center=center, scale=scale, dtype="float64")
    layer.build((None, 3))
    if scale:
        layer.gamma.assign(1.5 + rng.random(3))
    if center:
        layer.beta.assign(rng.standard_normal(3))
    bn = bnlib.BatchNorm.from_keras(layer)
    x = make_batch(rng, shape, -1, np.float64)
    expected = keras_out(layer, x, training=False)
    assert_close(bn(x), expected, tol=TOL[np.float64], what="bnlib from_keras output")
    assert_close(torch_out(torch, bn.to_torch().eval(), x), expected, tol=TOL[np.float64], what="to_torch output")
    assert_close(keras_out(bn.to_keras(), x, training=False), expected, tol=TOL[np.float64], what="to_keras output")

"""bnlib in the Keras convention against ``keras.layers.BatchNormalization``.

Keras has no mode on the layer: ``training`` is an argument of each call, and
a training call updates ``moving_mean``/``moving_variance`` as
``moving * momentum + batch * (1 - momentum)`` with the **biased** batch
variance. A layer with ``trainable=False`` runs in inference mode even when
called with ``training=True``. Gradients come from ``tf.GradientTape``.

Comparisons use :func:`assert_close` (max |difference| <= tol * max(1,
max|expected|)) with float64 ``1e-10`` and float32 ``1e-4``; on the
cancellation input (mean 1e4, std 1e-2) outputs and gradients use ``1e-7``,
because Keras evaluates ``x * a + (beta - mean * a)`` with ``|x * a|`` near
1e6, and the variance is compared relative to itself at ``1e-9``.
"""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest

import bnlib
from _support import TOL, assert_close

pytestmark = pytest.mark.keras

CANCELLATION_TOL = 1e-7
CANCELLATION_VAR_RTOL = 1e-9
STEPS = 5
EPS = 1e-3


# ------------------------------------------------------------- helpers ----
def make_batch(rng, shape, axis, dtype, kind="shifted", step=0):
    """``5*randn + 12`` plus a per-channel offset on ``axis``, or the cancellation input."""
    ax = axis % len(shape)
    bshape = [1] * len(shape)
    bshape[ax] = shape[ax]
    channel = np.arange(shape[ax]).reshape(bshape)
    if kind == "shifted":
        x = 5.0 * rng.standard_normal(shape) + 12.0 + 2.0 * channel + step
    else:
        x = 1e4 + 1e-2 * rng.standard_normal(shape) + 1e-3 * channel
    return x.astype(dtype)


def make_affine(rng, C, dtype):
    return (1.5 + rng.random(C)).astype(dtype), rng.standard_normal(C).astype(dtype)


def make_keras_layer(keras, axis, shape, dtype, gamma, beta, *, momentum, eps=EPS):
    layer = keras.layers.BatchNormalization(axis=axis, momentum=momentum, epsilon=eps, dtype=np.dtype(dtype).name)
    build_shape = [None] * len(shape)
    build_shape[axis] = shape[axis]
    layer.build(tuple(build_shape))
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer


def make_layer(axis, shape, dtype, gamma, beta, *, momentum, eps=EPS, trainable=True):
    bn = bnlib.BatchNorm(
        shape[axis], axis=axis, eps=eps, momentum=momentum, convention="keras", dtype=dtype, trainable=trainable
    )
    bn.gamma, bn.beta = gamma.copy(), beta.copy()
    return bn


def keras_forward_backward(tf, layer, x, dout, *, training):
    """Layer output and the tape's (dx, dgamma, dbeta) for the loss sum(y * dout)."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=training)
        loss = tf.reduce_sum(y * tf.constant(dout))
    dx, dgamma, dbeta = tape.gradient(loss, [xt, layer.gamma, layer.beta])
    return np.asarray(y), dx.numpy(), dgamma.numpy(), dbeta.numpy()


def moving_stats(layer):
    return layer.moving_mean.numpy(), layer.moving_variance.numpy()


@pytest.fixture(scope="module")
def tf(keras):
    import tensorflow as tf

    return tf


LAYOUTS = [
    pytest.param(-1, (2, 3), id="axis-1-N2xD3"),
    pytest.param(-1, (5, 4), id="axis-1-N5xD4"),
    pytest.param(-1, (2, 3, 3, 2), id="axis-1-NHWC-N2x3x3xC2"),
    pytest.param(1, (2, 3, 3, 3), id="axis1-NCHW-N2xC3x3x3"),
    pytest.param(1, (3, 2, 4), id="axis1-NCL-N3xC2xL4"),
]
DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]
MOMENTA = [pytest.param(0.99, id="momentum0.99"), pytest.param(0.8, id="momentum0.8")]


@functools.cache
def training_scenario(axis, shape, dtype, momentum, kind="shifted", eps=EPS):
    """A bnlib layer (train mode) and a Keras layer (``training=True``) on the same STEPS batches,
    then one inference call and one frozen call (``trainable=False``, ``training=True``).

    Shared (cached) by the layer tests below, so that each scenario runs once.
    Returns numpy results only: ``steps`` is a list of ``(ours, theirs)`` with
    ``(output, dx, dgamma, dbeta)`` each; ``bn_stats``/``keras_stats`` the
    running/moving ``(mean, var)`` after training; ``inference_*`` and
    ``frozen_*`` the four results of those calls and the statistics after them;
    ``frozen_expected`` the inference formula with the moving statistics.
    """
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(20261124)
    gamma, beta = make_affine(rng, shape[axis], dtype)
    bn = make_layer(axis, shape, dtype, gamma, beta, momentum=momentum, eps=eps)
    layer = make_keras_layer(keras, axis, shape, dtype, gamma, beta, momentum=momentum, eps=eps)
    run = types.SimpleNamespace(steps=[])
    for step in range(STEPS):
        x = make_batch(rng, shape, axis, dtype, kind, step)
        dout = rng.standard_normal(shape).astype(dtype)
        ours = (bn(x), *bn.backward(dout))
        run.steps.append((ours, keras_forward_backward(tf, layer, x, dout, training=True)))
    run.bn_stats = (bn.running_mean.copy(), bn.running_var.copy())
    run.keras_stats = moving_stats(layer)

    x = make_batch(rng, shape, axis, dtype, kind, STEPS)
    dout = rng.standard_normal(shape).astype(dtype)
    bn.eval()
    run.inference_ours = (bn(x), *bn.backward(dout))
    run.inference_theirs = keras_forward_backward(tf, layer, x, dout, training=False)
    run.inference_bn_stats = (bn.running_mean.copy(), bn.running_var.copy())
    run.inference_keras_stats = moving_stats(layer)

    x = make_batch(rng, shape, axis, dtype, kind, STEPS + 1)
    dout = rng.standard_normal(shape).astype(dtype)
    layer.trainable = False
    bn.trainable = False
    bn.train()  # the bnlib analogue of training=True
    run.frozen_ours = (bn(x), *bn.backward(dout))
    run.frozen_theirs = keras_forward_backward(tf, layer, x, dout, training=True)
    run.frozen_expected = bnlib.batchnorm_inference(x, gamma, beta, *run.keras_stats, axis=axis, eps=eps)
    run.frozen_bn_stats = (bn.running_mean.copy(), bn.running_var.copy())
    run.frozen_keras_stats = moving_stats(layer)
    return run


# --------------------------------------------------- training=True ----
@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis, shape", LAYOUTS)
def test_training_call_outputs_and_gradients_match_keras_at_every_step(axis, shape, dtype, momentum):
    run = training_scenario(axis, shape, dtype, momentum)
    for step, (ours, theirs) in enumerate(run.steps):
        for what, a, b in zip(("output", "dx", "dgamma", "dbeta"), ours, theirs):
            assert_close(a, b, tol=TOL[dtype], what=f"step {step}: {what} vs keras training=True")


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis, shape", LAYOUTS)
def test_moving_statistics_match_keras_after_five_training_calls(axis, shape, dtype, momentum):
    run = training_scenario(axis, shape, dtype, momentum)
    (mean, var), (moving_mean, moving_var) = run.bn_stats, run.keras_stats
    assert_close(mean, moving_mean, tol=TOL[dtype], what="running_mean vs moving_mean")
    assert_close(var, moving_var, tol=TOL[dtype], what="running_var vs moving_variance (biased)")


# -------------------------------------------------- training=False ----
@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis, shape", LAYOUTS)
def test_inference_call_matches_keras_and_updates_nothing(axis, shape, dtype, momentum):
    run = training_scenario(axis, shape, dtype, momentum)
    for what, a, b in zip(("output", "dx", "dgamma", "dbeta"), run.inference_ours, run.inference_theirs):
        assert_close(a, b, tol=TOL[dtype], what=f"{what} vs keras training=False")
    for who, after, before in (
        ("keras", run.inference_keras_stats, run.keras_stats),
        ("bnlib", run.inference_bn_stats, run.bn_stats),
    ):
        assert_close(after[0], before[0], tol=0.0, what=f"{who} moving mean after an inference call")
        assert_close(after[1], before[1], tol=0.0, what=f"{who} moving variance after an inference call")


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis, shape", LAYOUTS)
def test_frozen_layer_runs_in_inference_mode_even_with_training_true(axis, shape, dtype, momentum):
    run = training_scenario(axis, shape, dtype, momentum)
    for what, a, b in zip(("output", "dx", "dgamma", "dbeta"), run.frozen_ours, run.frozen_theirs):
        assert_close(a, b, tol=TOL[dtype], what=f"frozen {what} vs keras trainable=False, training=True")
    assert_close(
        run.frozen_theirs[0], run.frozen_expected, tol=TOL[dtype], what="keras frozen output vs inference formula"
    )
    for who, after, before in (
        ("keras", run.frozen_keras_stats, run.keras_stats),
        ("bnlib", run.frozen_bn_stats, run.bn_stats),
    ):
        assert_close(after[0], before[0], tol=0.0, what=f"{who} moving mean after a frozen training call")
        assert_close(after[1], before[1], tol=0.0, what=f"{who} moving variance after a frozen training call")


# --------------------------------------------------- functional API ----
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis, shape", LAYOUTS)
def test_functional_api_matches_keras_training_call(tf, keras, rng, axis, shape, dtype):
    C = shape[axis]
    gamma, beta = make_affine(rng, C, dtype)
    layer = make_keras_layer(keras, axis, shape, dtype, gamma, beta, momentum=0.8)
    running_mean, running_var = np.zeros(C, dtype), np.ones(C, dtype)
    for step in range(STEPS):
        x = make_batch(rng, shape, axis, dtype, step=step)
        dout = rng.standard_normal(shape).astype(dtype)
        out, cache = bnlib.batchnorm_forward(x, gamma, beta, axis=axis, eps=EPS)
        ours = (out, *bnlib.batchnorm_backward(dout, cache))
        mean, var, n = bnlib.batch_statistics(x, axis=axis)
        running_mean, running_var = bnlib.update_running_stats(
            running_mean, running_var, mean, var, n, convention="keras", momentum=0.8
        )
        theirs = keras_forward_backward(tf, layer, x, dout, training=True)
        for what, a, b in zip(("output", "dx", "dgamma", "dbeta"), ours, theirs):
            assert_close(a, b, tol=TOL[dtype], what=f"step {step}: functional {what} vs keras")
    moving_mean, moving_var = moving_stats(layer)
    assert_close(running_mean, moving_mean, tol=TOL[dtype], what="update_running_stats(keras) mean")
    assert_close(running_var, moving_var, tol=TOL[dtype], what="update_running_stats(keras) var")


# ----------------------------------------------- numerically hard input ----
@pytest.mark.parametrize("axis, shape", LAYOUTS)
def test_cancellation_input_training_matches_keras(axis, shape):
    run = training_scenario(axis, shape, np.float64, 0.8, kind="cancellation", eps=1e-6)
    for step, (ours, theirs) in enumerate(run.steps):
        for what, a, b in zip(("output", "dx", "dgamma", "dbeta"), ours, theirs):
            assert_close(a, b, tol=CANCELLATION_TOL, what=f"step {step}: {what}, mean 1e4 std 1e-2")
    (mean, var), (moving_mean, moving_var) = run.bn_stats, run.keras_stats
    assert_close(mean, moving_mean, tol=1e-10, what="moving_mean, mean 1e4 std 1e-2")
    ratio = var / moving_var
    assert_close(ratio, np.ones_like(ratio), tol=CANCELLATION_VAR_RTOL, what="moving_variance ratio, mean 1e4 std 1e-2")


# ----------------------------------------- the comparisons are sharp ----
@pytest.mark.parametrize("axis, shape", [LAYOUTS[0], LAYOUTS[3]])
def test_torch_style_unbiased_running_var_fails_the_keras_tolerance(tf, keras, rng, axis, shape):
    """The same data in the PyTorch convention (unbiased variance, momentum 0.2 = 1 - 0.8) drifts from Keras."""
    gamma, beta = make_affine(rng, shape[axis], np.float64)
    torch_style = bnlib.BatchNorm(shape[axis], axis=axis, eps=EPS, momentum=0.2, convention="torch")
    layer = make_keras_layer(keras, axis, shape, np.float64, gamma, beta, momentum=0.8)
    for step in range(STEPS):
        x = make_batch(rng, shape, axis, np.float64, step=step)
        torch_style(x)
        layer(x, training=True)
    moving_mean, moving_var = moving_stats(layer)
    assert_close(
        torch_style.running_mean, moving_mean, tol=TOL[np.float64], what="means agree once momentum is converted"
    )
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close(torch_style.running_var, moving_var, tol=TOL[np.float64], what="unbiased running var")


def test_flipped_keras_momentum_fails_the_keras_tolerance(tf, keras, rng):
    """Reading Keras's 0.8 as the NEW-batch weight (the PyTorch meaning) is caught."""
    axis, shape = -1, (5, 4)
    gamma, beta = make_affine(rng, 4, np.float64)
    flipped = make_layer(axis, shape, np.float64, gamma, beta, momentum=0.2)  # 0.2 = weight of the old value
    layer = make_keras_layer(keras, axis, shape, np.float64, gamma, beta, momentum=0.8)
    for step in range(STEPS):
        x = make_batch(rng, shape, axis, np.float64, step=step)
        flipped(x)
        layer(x, training=True)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close(flipped.running_mean, moving_stats(layer)[0], tol=TOL[np.float64], what="flipped momentum")

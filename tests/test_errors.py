"""Every bad input is refused with a message that says what was expected and what was received."""

import re

import numpy as np
import pytest

import bnlib


@pytest.fixture
def x(rng):
    return 12.0 + 5.0 * rng.standard_normal((4, 3))


ONES, ZEROS = np.ones(3), np.zeros(3)


# ------------------------------------------------------------- shapes ----
@pytest.mark.parametrize("name", ["gamma", "beta"])
def test_gamma_or_beta_of_the_wrong_length_names_expected_and_received_shape(x, name):
    params = {"gamma": ONES, "beta": ZEROS, name: np.ones(4)}
    expected = re.escape(f"{name} must have shape (3,) to match x.shape[1] = 3 for x of shape (4, 3); got {name} of shape (4,)")
    with pytest.raises(ValueError, match=expected):
        bnlib.batchnorm_forward(x, params["gamma"], params["beta"])


def test_gamma_for_the_wrong_feature_axis_of_an_nhwc_batch_is_refused(rng):
    x = rng.standard_normal((2, 5, 5, 3))  # NHWC, but the default axis=1 sees C = 5
    with pytest.raises(
        ValueError,
        match=re.escape("gamma must have shape (5,) to match x.shape[1] = 5") + r".*got gamma of shape \(3,\)",
    ):
        bnlib.batchnorm_forward(x, np.ones(3), np.zeros(3))


def test_a_two_dimensional_gamma_is_refused_with_its_shape(x):
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\).*got gamma of shape \(1, 3\)"):
        bnlib.batchnorm_forward(x, np.ones((1, 3)), ZEROS)


@pytest.mark.parametrize("axis", [2, -3, 7])
def test_axis_out_of_range_names_the_valid_range_and_the_axis_received(x, axis):
    with pytest.raises(ValueError, match=re.escape(f"axis must be in [-2, 1] for an input of shape (4, 3); got axis={axis}")):
        bnlib.batchnorm_forward(x, ONES, ZEROS, axis=axis)


@pytest.mark.parametrize("axis", [0, -2])
def test_axis_on_the_batch_dimension_is_refused_and_the_message_suggests_1_or_minus_1(x, axis):
    with pytest.raises(
        ValueError,
        match=rf"axis={axis} is the batch axis of an input of shape \(4, 3\).*1 for \(N, C, \.\.\.\) or -1",
    ):
        bnlib.batchnorm_forward(x, ONES, ZEROS, axis=axis)


@pytest.mark.parametrize("axis", [1.0, "1", True])
def test_a_non_integer_axis_is_refused_with_its_type(x, axis):
    with pytest.raises(TypeError, match=rf"axis must be an int; got {re.escape(repr(axis))} of type {type(axis).__name__}"):
        bnlib.batchnorm_forward(x, ONES, ZEROS, axis=axis)


def test_a_one_dimensional_input_is_refused_with_its_shape():
    msg = "x must have at least 2 dimensions (batch, features, ...); got shape (5,) with 1 dimension(s)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        bnlib.batchnorm_forward(np.arange(5.0), np.ones(5), np.zeros(5))


# -------------------------------------------------------------- dtypes ----
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_a_non_floating_input_names_the_dtype_expected_and_received(dtype):
    x = np.ones((4, 3), dtype=dtype)
    with pytest.raises(
        TypeError,
        match=rf"x must have a real floating-point dtype \(float32 or float64\); got dtype {np.dtype(dtype)}",
    ):
        bnlib.batchnorm_forward(x, ONES, ZEROS)


def test_a_complex_input_is_refused_and_the_message_says_complex_is_unsupported(x):
    with pytest.raises(
        TypeError,
        match=r"real floating-point dtype .*got dtype complex128 \(complex numbers are not supported\)",
    ):
        bnlib.batchnorm_forward(x + 1j, ONES, ZEROS)


def test_an_integer_gamma_is_refused_naming_gamma(x):
    with pytest.raises(TypeError, match=r"gamma must have a real floating-point dtype.*got dtype int"):
        bnlib.batchnorm_forward(x, np.ones(3, dtype=int), ZEROS)


def test_an_object_that_is_not_an_array_is_refused_with_its_type():
    with pytest.raises(TypeError, match=r"x must be a numpy array of real floating-point numbers; got an object of type dict"):
        bnlib.batchnorm_forward({"a": 1}, ONES, ZEROS)


# ---------------------------------------------------- non-finite input ----
@pytest.mark.parametrize(
    ("bad", "kind"), [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")], ids=["nan", "inf", "minus-inf"]
)
def test_non_finite_input_raises_value_error_naming_it_and_its_index(x, bad, kind):
    x[2, 1] = bad
    with pytest.raises(
        ValueError,
        match=rf"x must contain only finite numbers; got 1 {kind} value\(s\), the first at index \(2, 1\)",
    ):
        bnlib.batchnorm_forward(x, ONES, ZEROS)


# bnlib sums the channel before checking, and numpy warns on inf + (-inf) ("invalid value
# encountered in reduce") just before bnlib's ValueError: reported to the owner of functional.py.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_plus_and_minus_inf_in_one_channel_are_both_named(x):
    x[0, 0], x[1, 0] = np.inf, -np.inf  # the channel sum is NaN, not inf
    with pytest.raises(ValueError, match=r"got 2 inf value\(s\), the first at index \(0, 0\)"):
        bnlib.batchnorm_forward(x, ONES, ZEROS)


def test_nan_and_inf_together_are_both_named(x):
    x[0, 0], x[3, 2] = np.inf, np.nan
    with pytest.raises(ValueError, match=r"got 2 NaN and inf value\(s\)"):
        bnlib.batchnorm_forward(x, ONES, ZEROS)


def test_nan_in_inference_mode_is_refused(x):
    x[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"x must contain only finite numbers; got 1 NaN"):
        bnlib.batchnorm_inference(x, ONES, ZEROS, ZEROS, ONES)


def test_nan_in_dout_is_refused_naming_dout(x):
    _, cache = bnlib.batchnorm_forward(x, ONES, ZEROS)
    dout = np.ones_like(x)
    dout[3, 0] = np.nan
    with pytest.raises(
        ValueError,
        match=r"dout must contain only finite numbers; got 1 NaN value\(s\), the first at index \(3, 0\)",
    ):
        bnlib.batchnorm_backward(dout, cache)


def test_nan_in_a_scaler_input_is_refused():
    X = np.ones((3, 2))
    X[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"X must contain only finite numbers; got 1 NaN"):
        bnlib.StandardScaler().fit(X)


# --------------------------------------------------- one value per channel ----
SINGLE = "Expected more than 1 value per channel when training"


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1), (1, 3, 1)])
def test_a_single_value_per_channel_in_training_is_refused_with_the_shape(rng, shape):
    x = rng.standard_normal(shape)
    with pytest.raises(ValueError, match=re.escape(f"{SINGLE}, got input of shape {shape} (1 value per channel)")):
        bnlib.batchnorm_forward(x, ONES, ZEROS)


def test_one_example_with_several_pixels_per_channel_is_accepted(rng):
    x = rng.standard_normal((1, 3, 2, 2))  # N = 1 but n = H*W = 4 values per channel
    out, cache = bnlib.batchnorm_forward(x, ONES, ZEROS)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    assert out.shape == x.shape


def test_a_single_value_per_channel_in_inference_is_accepted(rng):
    x = rng.standard_normal((1, 3))
    out = bnlib.batchnorm_inference(x, ONES, ZEROS, ZEROS, ONES, eps=1e-5)
    np.testing.assert_allclose(out, x / np.sqrt(1 + 1e-5), rtol=1e-14)


def test_torch_layer_refuses_and_keras_layer_accepts_a_single_value_per_channel(rng):
    x = rng.standard_normal((1, 3))
    with pytest.raises(ValueError, match=SINGLE):
        bnlib.BatchNorm(3)(x)
    out = bnlib.BatchNorm(3, convention="keras", axis=1)(x)
    np.testing.assert_allclose(out, np.zeros((1, 3)), atol=0)  # output = beta


# ------------------------------------------------------ eps and momentum ----
@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf")])
def test_eps_not_a_finite_positive_number_is_refused_with_its_value(x, eps):
    with pytest.raises(ValueError, match=rf"eps must be a finite number > 0; got eps={re.escape(repr(eps))}"):
        bnlib.batchnorm_forward(x, ONES, ZEROS, eps=eps)


def test_eps_zero_is_refused_by_the_layer_and_by_fold(rng):
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0; got eps=0"):
        bnlib.BatchNorm(3, eps=0)
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0; got eps=0"):
        bnlib.fold_batchnorm(np.ones((3, 2)), None, ONES, ZEROS, ZEROS, ONES, eps=0)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan")])
def test_momentum_outside_zero_one_is_refused_with_its_value(momentum):
    with pytest.raises(ValueError, match=rf"momentum must be a number in \[0, 1\]; got momentum={re.escape(repr(momentum))}"):
        bnlib.update_running_stats(ZEROS, ONES, ZEROS, ONES, 4, momentum=momentum)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\]"):
        bnlib.BatchNorm(3, momentum=momentum)


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_at_the_ends_of_zero_one_is_accepted(momentum):
    new_mean, _ = bnlib.update_running_stats(ZEROS, ONES, np.full(3, 2.0), ONES, 4, momentum=momentum)
    np.testing.assert_allclose(new_mean, 2.0 * momentum)


def test_an_unknown_convention_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"convention must be one of \['keras', 'torch'\] or a bnlib.Convention; got 'jax'"):
        bnlib.update_running_stats(ZEROS, ONES, ZEROS, ONES, 4, convention="jax")


def test_bessel_correction_with_a_single_value_is_refused():
    with pytest.raises(ValueError, match=r"needs n >= 2 values per channel; got n=1"):
        bnlib.update_running_stats(ZEROS, ONES, ZEROS, ONES, 1)


def test_cumulative_momentum_without_num_batches_tracked_is_refused():
    with pytest.raises(ValueError, match=r"needs num_batches_tracked >= 1.*got num_batches_tracked=None"):
        bnlib.update_running_stats(ZEROS, ONES, ZEROS, ONES, 4, momentum="cumulative")


# ------------------------------------------------------------ backward ----
def test_backward_with_dout_of_another_shape_names_both_shapes(x):
    _, cache = bnlib.batchnorm_forward(x, ONES, ZEROS)
    msg = re.escape("dout must have the shape of the forward input, (4, 3), as recorded in the cache; got dout of shape (3, 4)")
    for backward in (bnlib.batchnorm_backward, bnlib.batchnorm_backward_staged):
        with pytest.raises(ValueError, match=msg):
            backward(np.ones((3, 4)), cache)


@pytest.mark.parametrize("cache", [None, (1, 2, 3), {"xhat": 0}], ids=["none", "tuple", "dict"])
def test_backward_with_a_cache_that_is_not_a_batchnorm_cache_names_its_type(x, cache):
    msg = f"cache must be the BatchNormCache returned by batchnorm_forward; got an object of type {type(cache).__name__}"
    with pytest.raises(TypeError, match=re.escape(msg)):
        bnlib.batchnorm_backward(np.ones_like(x), cache)


def test_backward_with_the_cache_fields_in_a_plain_tuple_is_refused(x):
    _, cache = bnlib.batchnorm_forward(x, ONES, ZEROS)
    with pytest.raises(TypeError, match=r"got an object of type tuple"):
        bnlib.batchnorm_backward(np.ones_like(x), tuple(cache))


def test_inference_backward_with_dout_of_another_shape_names_both_shapes(x):
    with pytest.raises(ValueError, match=re.escape("dout must have the shape of x, (4, 3); got (4, 2)")):
        bnlib.batchnorm_inference_backward(np.ones((4, 2)), x, ONES, ZEROS, ONES)


def test_negative_running_variance_is_refused(x):
    with pytest.raises(ValueError, match=r"running_var must be finite and >= 0"):
        bnlib.batchnorm_inference(x, ONES, ZEROS, ZEROS, np.array([1.0, -1.0, 1.0]))


# ------------------------------------------------------------- layer ----
def test_layer_called_with_the_wrong_number_of_features_names_both(rng):
    bn = bnlib.BatchNorm(3)
    with pytest.raises(
        ValueError,
        match=re.escape("x must have 3 features on axis 1, as this layer; got x of shape (4, 5) with 5 there"),
    ):
        bn(rng.standard_normal((4, 5)))


def test_layer_in_keras_convention_checks_the_last_axis(rng):
    bn = bnlib.BatchNorm(3, convention="keras")
    with pytest.raises(ValueError, match=r"x must have 3 features on axis -1.*got x of shape \(2, 3, 4\) with 4 there"):
        bn(rng.standard_normal((2, 3, 4)))


@pytest.mark.parametrize("num_features", [0, -1, 2.5, True])
def test_layer_with_an_invalid_num_features_is_refused_with_it(num_features):
    with pytest.raises(ValueError, match=rf"num_features must be an int >= 1; got {re.escape(repr(num_features))}"):
        bnlib.BatchNorm(num_features)


def test_layer_backward_before_forward_says_to_call_the_layer_first():
    with pytest.raises(RuntimeError, match=r"backward needs a forward call first"):
        bnlib.BatchNorm(3).backward(np.ones((2, 3)))


def test_layer_with_cumulative_momentum_in_keras_convention_is_refused():
    with pytest.raises(ValueError, match=r"momentum=None \(cumulative average\) exists only in PyTorch"):
        bnlib.BatchNorm(3, convention="keras", momentum=None)


# ------------------------------------------------------------ scalers ----
@pytest.mark.parametrize("scaler", [bnlib.MinMaxScaler, bnlib.StandardScaler])
@pytest.mark.parametrize("method", ["transform", "inverse_transform"])
def test_scaler_used_before_fit_raises_not_fitted_error(scaler, method):
    with pytest.raises(bnlib.NotFittedError, match=rf"this {scaler.__name__} is not fitted yet: call fit\(X_train\) first"):
        getattr(scaler(), method)(np.ones((2, 3)))


def test_not_fitted_error_is_a_runtime_error():
    assert issubclass(bnlib.NotFittedError, RuntimeError)


@pytest.mark.parametrize("scaler", [bnlib.MinMaxScaler, bnlib.StandardScaler])
def test_scaler_with_the_wrong_number_of_features_at_transform_names_both(scaler, rng):
    s = scaler().fit(rng.standard_normal((5, 3)))
    with pytest.raises(ValueError, match=re.escape("X must have 3 features, as the data fitted; got 4 features (shape (2, 4))")):
        s.transform(rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match=re.escape("Z must have 3 features, as the data fitted; got 2 features")):
        s.inverse_transform(rng.standard_normal((2, 2)))


def test_scaler_on_one_dimensional_data_asks_for_a_table():
    with pytest.raises(ValueError, match=re.escape("X must be 2-D, (n_samples, n_features); got shape (5,)")):
        bnlib.StandardScaler().fit(np.arange(5.0))


def test_min_max_scaler_with_an_empty_feature_range_is_refused():
    with pytest.raises(ValueError, match=re.escape("feature_range must be (lo, hi) with lo < hi; got (1, 1)")):
        bnlib.MinMaxScaler(feature_range=(1, 1))


def test_scaler_fit_on_zero_samples_is_refused():
    with pytest.raises(ValueError, match=re.escape("X must have at least 1 sample to fit; got shape (0, 3)")):
        bnlib.MinMaxScaler().fit(np.empty((0, 3)))


# ---------------------------------------------------------- gradcheck ----
def test_rel_error_of_arrays_of_different_shapes_names_both():
    with pytest.raises(ValueError, match=re.escape("rel_error needs arrays of the same shape; got (2,) and (3,)")):
        bnlib.rel_error(np.ones(2), np.ones(3))


def test_numerical_gradient_with_dout_of_the_wrong_shape_names_both():
    with pytest.raises(ValueError, match=re.escape("f(x) must have the shape of dout, (3,); got (2,)")):
        bnlib.numerical_gradient(lambda v: v, np.ones(2), np.ones(3))


def test_fold_with_out_axis_out_of_range_names_weight_shape_and_axis():
    with pytest.raises(ValueError, match=re.escape("got weight of shape (3, 2) and out_axis=2")):
        bnlib.fold_batchnorm(np.ones((3, 2)), None, ONES, ZEROS, ZEROS, ONES, eps=1e-5, out_axis=2)


def test_fold_with_bias_of_the_wrong_length_names_both():
    with pytest.raises(ValueError, match=re.escape("bias must have shape (3,)") + r".*got bias of shape \(2,\)"):
        bnlib.fold_batchnorm(np.ones((3, 2)), np.ones(2), ONES, ZEROS, ZEROS, ONES, eps=1e-5)

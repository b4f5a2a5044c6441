"""Min-max normalization and z-score standardization (chapter 1), against scikit-learn."""

import numpy as np
import pytest
from sklearn import preprocessing as skp

import bnlib

PAIRS = [
    (bnlib.MinMaxScaler, skp.MinMaxScaler, {}),
    (bnlib.MinMaxScaler, skp.MinMaxScaler, {"feature_range": (-1.0, 2.0)}),
    (bnlib.StandardScaler, skp.StandardScaler, {}),
]
IDS = ["minmax", "minmax-range-(-1,2)", "standard"]


@pytest.fixture
def split(rng):
    """Train and test tables with features of very different scales and offsets; the
    test set is drawn wider than the training set, as new data often is."""
    loc, scale = np.array([12.0, -300.0, 0.0, 1e4]), np.array([5.0, 40.0, 1e-3, 2.0])
    train = loc + scale * rng.standard_normal((40, 4))
    test = loc + 2.5 * scale * rng.standard_normal((25, 4))
    return train, test


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), PAIRS, ids=IDS)
def test_scaler_fit_on_train_matches_scikit_learn_on_train_and_test(split, ours, theirs, kwargs):
    train, test = split
    a, b = ours(**kwargs).fit(train), theirs(**kwargs).fit(train)
    np.testing.assert_allclose(a.transform(train), b.transform(train), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.transform(test), b.transform(test), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.fit_transform(train), b.fit_transform(train), rtol=1e-12, atol=1e-12)


def test_standard_scaler_statistics_match_scikit_learn(split):
    train, _ = split
    a, b = bnlib.StandardScaler().fit(train), skp.StandardScaler().fit(train)
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-14)
    np.testing.assert_allclose(a.var_, b.var_, rtol=1e-12)  # biased, ddof = 0
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=1e-12)


def test_min_max_scaler_statistics_match_scikit_learn(split):
    train, _ = split
    a, b = bnlib.MinMaxScaler().fit(train), skp.MinMaxScaler().fit(train)
    np.testing.assert_array_equal(a.data_min_, b.data_min_)
    np.testing.assert_array_equal(a.data_max_, b.data_max_)


def test_min_max_maps_training_data_onto_zero_one_exactly(split):
    train, _ = split
    z = bnlib.MinMaxScaler().fit_transform(train)
    np.testing.assert_allclose(z.min(axis=0), 0.0, atol=0)
    np.testing.assert_allclose(z.max(axis=0), 1.0, atol=1e-15)


def test_min_max_fit_on_train_puts_wider_test_data_outside_zero_one_the_leakage_trap(split):
    """Statistics are learned once, from training data; test values outside the training
    range land outside [0, 1], and that is correct: refitting on test data would leak."""
    train, test = split
    scaler = bnlib.MinMaxScaler().fit(train)
    z = scaler.transform(test)
    assert z.min() < 0.0 and z.max() > 1.0
    # and transform did not refit: the training statistics are unchanged
    np.testing.assert_array_equal(scaler.data_min_, train.min(axis=0))
    np.testing.assert_array_equal(scaler.data_max_, train.max(axis=0))
    # refitting on the test set would give [0, 1] exactly: a different, leaky answer
    assert not np.allclose(z, bnlib.MinMaxScaler().fit_transform(test))


def test_standard_scaler_fit_on_train_gives_test_data_a_mean_and_std_other_than_0_and_1(split):
    train, test = split
    z = bnlib.StandardScaler().fit(train).transform(test)
    assert np.abs(z.std(axis=0) - 1.0).min() > 0.2  # the test set is 2.5 times wider than train


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), PAIRS, ids=IDS)
def test_inverse_transform_undoes_transform(split, ours, theirs, kwargs):
    train, test = split
    scaler = ours(**kwargs).fit(train)
    for data in (train, test):
        back = scaler.inverse_transform(scaler.transform(data))
        np.testing.assert_allclose(back, data, rtol=1e-12, atol=1e-12 * np.abs(data).max())
    np.testing.assert_allclose(
        scaler.inverse_transform(test), theirs(**kwargs).fit(train).inverse_transform(test), rtol=1e-12, atol=1e-9
    )


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), PAIRS, ids=IDS)
def test_constant_feature_is_not_divided_by_zero_and_matches_scikit_learn(ours, theirs, kwargs, rng):
    train = rng.standard_normal((10, 3))
    train[:, 1] = 7.5  # constant feature
    test = rng.standard_normal((4, 3))
    test[:, 1] = 7.5
    with np.errstate(all="raise"):  # any division by zero would raise here
        scaler = ours(**kwargs).fit(train)
        z_train, z_test = scaler.transform(train), scaler.transform(test)
        back = scaler.inverse_transform(z_test)
    lo = kwargs.get("feature_range", (0.0, 0.0))[0]  # min-max: lo; z-score: 0
    np.testing.assert_array_equal(z_train[:, 1], lo)
    np.testing.assert_array_equal(z_test[:, 1], lo)
    np.testing.assert_array_equal(back[:, 1], 7.5)
    np.testing.assert_allclose(z_test, theirs(**kwargs).fit(train).transform(test), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), PAIRS, ids=IDS)
def test_float32_in_gives_float32_out(split, ours, theirs, kwargs):
    train, test = (a.astype(np.float32) for a in split)
    scaler = ours(**kwargs).fit(train)
    z = scaler.transform(test)
    assert z.dtype == np.float32
    assert scaler.inverse_transform(z).dtype == np.float32
    assert scaler.fit_transform(train).dtype == np.float32
    expected = ours(**kwargs).fit(train.astype(np.float64)).transform(test.astype(np.float64))
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), PAIRS, ids=IDS)
def test_fit_returns_the_scaler_and_transform_leaves_its_input_alone(split, ours, theirs, kwargs):
    train, test = split
    before = test.copy()
    scaler = ours(**kwargs)
    assert scaler.fit(train) is scaler
    scaler.transform(test)
    scaler.inverse_transform(test)
    np.testing.assert_array_equal(test, before)


def test_min_max_docstring_example_numbers():
    s = bnlib.MinMaxScaler().fit(np.array([[0.0, 5.0], [10.0, 5.0]]))
    np.testing.assert_array_equal(s.transform(np.array([[5.0, 5.0], [20.0, 7.0]])), [[0.5, 0.0], [2.0, 2.0]])

"""Shared test set-up: quiet, offline, deterministic frameworks."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Tiny tensors: one thread is several times faster on a busy 2-core machine.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "course",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("course")

# Markers by file, so the slow end-to-end tests can be left out (`make test-fast`
# runs -m "not grading and not site and not cluster"): `grading` for the tests that run
# the real nbgrader and kernels, `site` for the page tests in a browser, `cluster` for
# the tests that start a PostgreSQL server and a Dask cluster (tests/_cluster.py).
GRADING_FILES = {"test_exercises.py", "test_adversarial.py", "test_jail.py", "test_learner_wheel.py"}
CLUSTER_FILES = {"test_cluster_infra.py", "test_grading_cluster.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        if name in CLUSTER_FILES:
            item.add_marker(pytest.mark.cluster)
        if name in GRADING_FILES or name.startswith("test_grading_"):
            item.add_marker(pytest.mark.grading)
        elif name == "test_site.py":
            item.add_marker(pytest.mark.site)


@pytest.fixture
def rng():
    """A seeded generator, new for every test."""
    return np.random.default_rng(20261124)


@pytest.fixture(scope="session")
def torch():
    """PyTorch, imported once (a required dependency: never skipped)."""
    import torch

    torch.set_num_threads(1)
    return torch


@pytest.fixture(scope="session")
def keras():
    """Keras 3 on the TensorFlow backend."""
    import keras

    assert keras.backend.backend() == "tensorflow"
    return keras

"""Session-wide test set-up: quiet TF logs and two logical CPUs for tf.distribute tests.

Under pytest-xdist (``-n 2``) the controller process runs no test and never imports TensorFlow
(TF 2.21 prints its start-up lines whatever TF_CPP_MIN_LOG_LEVEL says); each worker configures
its own devices.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _is_xdist_controller(config: pytest.Config) -> bool:
    workers = getattr(config.option, "numprocesses", None)
    return bool(workers) and "PYTEST_XDIST_WORKER" not in os.environ


def pytest_configure(config: pytest.Config) -> None:
    if _is_xdist_controller(config):
        return
    import tensorflow as tf

    # MirroredStrategy tests need two devices; logical devices must be configured before TF
    # initialises its runtime, so this happens once per process, before any test module loads.
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:  # Runtime already initialised (e.g. by a plugin): keep what exists.
        pass


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts with float32 policy, a fresh name scope and fixed seeds."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")

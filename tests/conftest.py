"""Session-wide test set-up: quiet TF logs and two logical CPUs for tf.distribute tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# MirroredStrategy tests need two devices; logical devices must be configured before TF
# initialises its runtime, so this happens once, at collection time, for the whole session.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # Runtime already initialised (e.g. by a plugin): keep what exists.
    pass


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts with float32 policy, a fresh name scope and fixed seeds."""
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")

"""Session-wide test set-up: quiet TF logs, two logical CPUs, and artifacts shared by tests.

Under pytest-xdist (``-n 2``) the controller process runs no test and never imports TensorFlow
(TF 2.21 prints its start-up lines whatever TF_CPP_MIN_LOG_LEVEL says); each worker configures
its own devices.

Shared artifacts (`shared_artifact`): what several test files need and what takes seconds to
make (a trained run, its export, trained TFLite fixtures) is built once per test session and
shared by the xdist workers through a lock directory: the first worker to create it builds, the
others wait for its ``done`` file. `tiny_run` and `tiny_export` are the two every tier uses.
"""

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from tests import gcs_emulator as _gcs_emulator

# A directory shared by several pytest runs of one checkout (`shared_artifact`); .ci/run sets it.
SHARED_DIR_ENV = "TFSD_TEST_SHARED_DIR"
# The 3-class image folder of `tiny_run` (class names = folder names, in label order).
TINY_RUN_CLASSES = ("red", "green", "blue")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA on CPU spends most of a tiny model's jit_compile=True step in compiling it; the tests check
# that steps compile (what a TPU needs: TF's lowering to HLO) and what they compute, not how fast
# the CPU code runs, so they (and the processes they start, which inherit the environment)
# compile cheaply: LLVM at its lowest optimisation level, and XLA:CPU's older per-instruction
# code generation instead of its MLIR "fusion emitters" (xla_cpu_use_fusion_emitters in XLA's
# debug_options_flags.cc: "Use fusion emitters for code generation in the CPU backend"). Measured
# 2026-12-05, first jit step of test_efficientnet: 15.1 -> 8.6 CPU-s on the default strategy,
# 32.7 -> 17.1 under two-replica MirroredStrategy; the jit tests pass either way.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
)
# TF reads its GCS retry and cache settings once, when its gs:// filesystem is made (at import):
# no stat cache (other processes' writes are seen at once) and failures in seconds, not minutes,
# if the emulator of the `gcs` fixture is down. Harmless for tests that never touch gs://.
for _key, _value in _gcs_emulator.RETRY_ENV.items():
    os.environ.setdefault(_key, _value)


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
    # No gc.collect() (free_memory=False): it cost up to ~1 s per test with TF objects alive;
    # the names and global state are reset all the same.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


def shared_artifact(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """``build(directory)`` run once per test session across xdist workers; returns directory.

    xdist workers have their own temporary directories under one shared parent; the first worker
    to create ``<parent>/tfsd-shared-<name>`` builds into its ``artifact`` sub-directory, the
    others wait (at most 15 minutes) for its ``done`` file. A JSON-serialisable value returned by
    ``build`` is stored as ``artifact/result.json``. A failed build fails every waiting test.

    With ``$TFSD_TEST_SHARED_DIR`` set (`.ci/run` sets it to a directory of its own, removed
    when it ends), that directory is the parent instead, so the default tier and the e2e/slow
    tier, two pytest runs of one checkout, build each artifact once between them. Left unset, as
    on a developer's machine, artifacts live for one pytest session and are never stale.
    """
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent
    if os.environ.get(SHARED_DIR_ENV):  # .ci/run: one directory for both of its pytest runs
        root = Path(os.environ[SHARED_DIR_ENV])
    home = root / f"tfsd-shared-{name}"
    artifact, done = home / "artifact", home / "done"
    try:
        os.makedirs(home)
    except FileExistsError:
        deadline = time.time() + 900
        while not done.exists():
            if (home / "failed").exists() or time.time() > deadline:
                pytest.fail(f"Building the shared artifact {name!r} failed in another worker.")
            time.sleep(0.5)
        return artifact
    try:
        artifact.mkdir()
        result = build(artifact)
        if result is not None:
            (artifact / "result.json").write_text(json.dumps(result))
    except BaseException:
        (home / "failed").write_text("")
        raise
    done.write_text(str(artifact))
    return artifact


class TinyRun(NamedTuple):
    """A finished ``tfsd.train`` run shared by the session (see `tiny_run`)."""

    model_dir: Path  # the run directory
    images: Path  # its image folder, one sub-folder per class
    final: dict  # train_and_evaluate's return value (final eval metrics, step, digest)


def _build_tiny_run(directory: Path) -> dict:
    # Imported here: the xdist controller process must not import TensorFlow (module docstring).
    from tests.helpers import tiny_config, write_image_folder
    from tfsd.training import loop

    images = write_image_folder(directory / "images", TINY_RUN_CLASSES, per_class=16)
    config = tiny_config(
        total_steps=12, ema_decay=0.5, checkpoint_every_steps=6, eval_every_steps=4
    )
    config.model.survival_prob = 0.5
    config.data.name = f"folder:{images}"
    config.data.num_classes = None
    config.data.folder_eval_fraction = 0.25
    config.data.preprocess = "none"
    config.batch_size = 8
    return loop.train_and_evaluate(config, str(directory / "run"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """A 12-step run of the tiny ResNet on a 3-class image folder, once per session.

    Stochastic depth on (p_L = 0.5), EMA on (decay 0.5), checkpoints at steps 6 and 12, an eval
    every 4 steps and at the end, TensorBoard summaries: what evaluate, predict, plot, restore,
    fine-tuning and export tests read. Treat it as read-only (copy it to change it).
    """
    artifact = shared_artifact(tmp_path_factory, "tiny-run", _build_tiny_run)
    final = json.loads((artifact / "result.json").read_text())
    return TinyRun(artifact / "run", artifact / "images", final)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_run) -> Path:
    """Version 1 of `tiny_run`'s export (folded, the default), once per session; read-only."""

    def build(directory: Path) -> None:
        # Imported here, as in _build_tiny_run.
        from tfsd.serving import saved_model

        saved_model.export_run(str(tiny_run.model_dir), str(directory / "base"))

    return shared_artifact(tmp_path_factory, "tiny-export", build) / "base" / "1"


@pytest.fixture(scope="session")
def gcs():
    """A GCS emulator for TF's own gs:// client, one per test process (`tests/gcs_emulator.py`).

    fake-gcs-server behind mitmproxy on loopback with the bucket ``gs://tfsd-test``; its
    environment is set in ``os.environ`` for this process and the subprocesses it starts. A piece
    that cannot start fails the test with its log (never a skip: CI installs both).
    """
    emulator = _gcs_emulator.GcsEmulator("tfsd-test")
    try:
        emulator.start()
    except _gcs_emulator.GcsEmulatorError as e:
        pytest.fail(f"The GCS emulator did not start: {e}", pytrace=False)
    previous = emulator.apply()
    yield emulator
    _gcs_emulator.restore(previous)
    emulator.stop()

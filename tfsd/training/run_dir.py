"""The on-disk layout of a run directory; the only module that reads or writes it.

A run directory (``--model_dir``) holds:

* ``config.json``: the resolved config, written once at the start of a run and checked on every
  resume (`check_or_write_config`, `load_run_config`);
* ``checkpoints/ckpt-<step>``: ``tf.train.Checkpoint`` files with the items ``model``,
  ``optimizer``, ``step``, ``rng`` (Keras ``SeedGenerator`` states) and ``ema`` (EMA shadows,
  when the run keeps them) (`make_checkpoint`, `restore_latest`, `Saver`, `restore_run`);
* ``train/``, ``eval/``: TensorBoard event files (`TRAIN_LOGS`, `EVAL_LOGS`).

Training, evaluation, prediction, plotting and export all go through this module (timm's
``checkpoint_saver.py`` / ``_helpers.py`` pattern). See ``docs/training.md``.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import keras
import ml_collections
import tensorflow as tf
from absl import logging

from tfsd import config_lib, distribute, models
from tfsd import data as data_lib
from tfsd.training import task as task_lib

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
TRAIN_LOGS, EVAL_LOGS = "train", "eval"


class RunDirError(RuntimeError):
    """A run directory that cannot be read, restored or resumed; nothing was deleted."""


class CheckpointError(RunDirError):
    """A checkpoint or run directory that cannot be resumed; nothing was deleted."""


def config_path(model_dir: str) -> str:
    return os.path.join(model_dir, CONFIG_FILE)


def checkpoint_dir(model_dir: str) -> str:
    return os.path.join(model_dir, CHECKPOINTS)


def latest_checkpoint(model_dir: str) -> str | None:
    """The newest checkpoint prefix of a run, or None."""
    return tf.train.latest_checkpoint(checkpoint_dir(model_dir))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


# Recorded in config.json next to the strategy (not a config field: the hardware decides it).
NUM_REPLICAS = "num_replicas"


def check_or_write_config(
    config: ml_collections.ConfigDict,
    model_dir: str,
    write: bool = True,
    num_replicas: int | None = None,
) -> None:
    """Writes ``model_dir/config.json``, or checks a resumed run's config against it.

    ``write=False`` (non-chief workers) only checks an existing file and creates nothing.
    ``num_replicas`` (the strategy's replica count) is recorded as ``distribute.num_replicas``.
    A resume on another count is allowed (a run may move to other hardware; the global batch and
    so every step's data stay the same) but logs a warning: it changes the per-replica BatchNorm
    groups, ``model.sync_bn=auto`` and the per-replica gate and dropout streams, so the resumed
    run is no longer bit-identical to one that never stopped. The file keeps the first count.

    Raises:
      CheckpointError: the saved config differs in a field other than the run-length fields
        (``config_lib.RUN_LENGTH_FIELDS``); the message lists every differing field.
    """
    path = config_path(model_dir)
    if write:
        tf.io.gfile.makedirs(model_dir)
    current = json.loads(config.to_json_best_effort())
    recorded = num_replicas
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            saved = json.load(f)
        recorded = saved.get("distribute", {}).pop(NUM_REPLICAS, None) or num_replicas
        if None not in (recorded, num_replicas) and recorded != num_replicas:
            logging.warning(
                "%s was trained on %d replicas and resumes on %d: per-replica BatchNorm "
                "statistics, model.sync_bn=auto and the per-replica stochastic-depth and dropout "
                "streams change, so this run will not be bit-identical to one that never "
                "stopped (the global batch and the data stay the same).",
                model_dir, recorded, num_replicas,
            )  # fmt: skip
        # Both sides: a field a config deleted (del c.model.overrides["width"]) holds its default.
        a = {**config_lib.NEW_FIELD_DEFAULTS, **_flatten(saved)}
        b = {**config_lib.NEW_FIELD_DEFAULTS, **_flatten(current)}
        diff = [
            f"  {k}: saved {a.get(k, '<missing>')!r} → now {b.get(k, '<missing>')!r}"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in config_lib.RUN_LENGTH_FIELDS
        ]
        if diff:
            raise CheckpointError(
                f"{model_dir} holds a run with a different config; resuming would mix two runs. "
                "Use a new --model_dir, or restore these fields:\n" + "\n".join(diff)
            )
    if not write:
        return
    if recorded is not None:  # the first count stays recorded
        current.setdefault("distribute", {})[NUM_REPLICAS] = int(recorded)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(json.dumps(current, indent=2, sort_keys=True))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def seed_generator_states(model: keras.Model) -> list:
    """State variables of the Keras ``SeedGenerator``s of ``model`` (e.g. Dropout's).

    They are not model weights, so ``tf.train.Checkpoint(model=...)`` does not save them
    (``keras/src/random/seed_generator.py``: the state is a plain variable of the generator):
    without them a resumed run would replay the dropout masks of the run's first steps.
    """
    return [
        sg.state
        for lay in model._flatten_layers(include_self=True)  # noqa: SLF001
        for sg in getattr(lay, "_seed_generators", [])
    ]


def make_checkpoint(task: task_lib.Task, iterator=None) -> tf.train.Checkpoint:
    """Checkpoint items: ``model``, ``optimizer``, ``step``, ``rng`` and ``ema`` (when on).

    No iterator: the train stream is rebuilt at the restored step (``build_dataset(start_step=)``).
    ``iterator`` is accepted for compatibility and ignored.
    """
    del iterator
    items = dict(model=task.model, optimizer=task.optimizer, step=task.step)
    rng = seed_generator_states(task.model)
    if rng:
        items["rng"] = rng
    if task.ema is not None:
        items["ema"] = task.ema.shadows
    return tf.train.Checkpoint(**items)


def restore_latest(manager: tf.train.CheckpointManager, checkpoint) -> int | None:
    """Restores the newest checkpoint; raises CheckpointError (deleting nothing) if it fails."""
    path = manager.latest_checkpoint
    if path is None:
        return None
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
        if isinstance(getattr(checkpoint, "model", None), keras.Model):
            models.refresh_normalization(checkpoint.model)  # the restored statistics in use
    except Exception as e:  # noqa: BLE001  (TF raises OpError, IndexError, ValueError, ...)
        raise CheckpointError(
            f"Cannot resume from {path}: it is corrupt or belongs to a different model "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]}). Nothing was deleted or "
            "overwritten; point --model_dir at a new directory or move this one aside."
        ) from e
    return int(checkpoint.step.numpy()) if hasattr(checkpoint, "step") else None


class Saver:
    """Saves on every worker; only the chief's files are kept (Model Garden's practice).

    Saving reads sync-on-read variables with collectives, so every worker must save at the same
    step; non-chief workers write to a temporary directory and delete it at once.
    """

    def __init__(self, task: task_lib.Task, checkpoint, model_dir: str):
        self.checkpoint = checkpoint
        self.chief = distribute.is_chief(task.strategy)
        self.manager = tf.train.CheckpointManager(
            checkpoint,
            checkpoint_dir(model_dir),
            max_to_keep=task.config.keep_checkpoints,
        )
        self.strategy = task.strategy

    def save(self, step: int) -> None:
        if self.chief:
            self.manager.save(checkpoint_number=step)
            return
        tmp = distribute.worker_checkpoint_dir(self.strategy, "")
        try:
            self.checkpoint.write(os.path.join(tmp, f"ckpt-{step}"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def load_run_config(model_dir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to ``model_dir/config.json``."""
    path = config_path(model_dir)
    if not tf.io.gfile.isdir(model_dir):
        raise RunDirError(f"Run directory {model_dir} does not exist.")
    if not tf.io.gfile.exists(path):
        raise RunDirError(
            f"{model_dir} is not a tfsd run directory: it has no config.json (written by "
            "python -m tfsd.train at the start of a run)."
        )
    with tf.io.gfile.GFile(path) as f:
        try:
            config = ml_collections.ConfigDict(json.load(f))
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path} is not valid JSON: {e}") from e
    for key in ("model", "data"):
        if key not in config:
            raise RunDirError(f"{path} has no {key!r} section; is it a tfsd run?")
    if "distribute" in config and NUM_REPLICAS in config.distribute:
        with config.unlocked():  # a record of the hardware, not a config field
            del config.distribute[NUM_REPLICAS]
    return config


def restore_run(
    model_dir: str,
    *,
    checkpoint: str | None = None,
    weights: str | None = None,
    data_dir: str | None = None,
) -> tuple[keras.Model, ml_collections.ConfigDict, data_lib.DatasetInfo, str]:
    """Builds a run's model and restores a checkpoint into it.

    Args:
      model_dir: the run directory (``--model_dir`` of ``tfsd.train``).
      checkpoint: a checkpoint prefix (``DIR/checkpoints/ckpt-1000``) or a directory of
        checkpoints (its latest); None takes the run's latest.
      weights: "ema" (the run's EMA weights; an error if it kept none), "raw" (the trained
        weights) or None (EMA when the run has it, else raw).
      data_dir: TFDS data directory, for the class count and names of TFDS runs.

    Returns:
      ``(model, config, dataset_info, checkpoint_path)``, the model in float32 with the chosen
      weights.

    Raises:
      RunDirError: no run, no checkpoint, or a checkpoint that does not match the model.
    """
    if weights not in (None, "ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}.")
    config = load_run_config(model_dir)
    if checkpoint is None:
        checkpoint = latest_checkpoint(model_dir)
        if checkpoint is None:
            raise RunDirError(
                f"{model_dir} has no checkpoint in {checkpoint_dir(model_dir)}: "
                "train first (a run saves every checkpoint_every_steps and at the end)."
            )
    elif tf.io.gfile.isdir(checkpoint):
        directory, checkpoint = checkpoint, tf.train.latest_checkpoint(checkpoint)
        if checkpoint is None:
            raise RunDirError(f"{directory} holds no checkpoint.")
    elif not tf.io.gfile.exists(checkpoint + ".index"):
        raise RunDirError(f"Checkpoint {checkpoint} does not exist (no {checkpoint}.index).")
    info = data_lib.get_dataset_info(config.data, data_dir=data_dir)
    num_classes = config.model.num_classes or info.num_classes
    has_ema = float(config.get("ema_decay", 0.0) or 0.0) > 0
    if weights == "ema" and not has_ema:
        raise RunDirError(f"{model_dir} kept no EMA weights (ema_decay = 0); use weights='raw'.")
    use_ema = has_ema and weights != "raw"

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # served in float32 whatever trained.
    try:
        model = task_lib.build_model(config, num_classes)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    items: dict[str, Any] = {"model": model}
    ema = None
    if has_ema:
        ema = task_lib.EMA(model, float(config.ema_decay))
        items["ema"] = ema.shadows
    try:
        status = tf.train.Checkpoint(**items).restore(checkpoint)
        status.assert_existing_objects_matched()
        status.expect_partial()  # the optimizer, step and data iterator are not needed here.
    except Exception as e:  # noqa: BLE001  (TF raises OpError, AssertionError, ValueError, ...)
        raise RunDirError(
            f"Checkpoint {checkpoint} does not match the model of {model_dir} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]})."
        ) from e
    if use_ema:
        for shadow, variable in zip(ema.shadows, ema.sources):
            variable.assign(shadow.value)
    # Restore and the EMA assign changed the Normalization variables, not the constants its
    # call() uses: without this a fine-tuned import would serve the freshly built statistics.
    models.refresh_normalization(model)
    logging.info("Restored %s (%s weights).", checkpoint, "EMA" if use_ema else "raw")
    return model, config, info, checkpoint


def restore(
    model_dir: str,
    weights: str | None = "ema",
    *,
    checkpoint: str | None = None,
    data_dir: str | None = None,
) -> keras.Model:
    """The Keras model of a ``tfsd.train`` run, with a checkpoint's weights (``tfsd.restore``).

    Args:
      model_dir: the run directory (``--model_dir`` of ``tfsd.train``).
      weights: "ema" (the run's exponential moving average; an error if it kept none), "raw"
        (the trained weights) or None (EMA when the run has it, else raw).
      checkpoint: a checkpoint prefix (``RUN/checkpoints/ckpt-1000``); None takes the latest.
      data_dir: TFDS data directory, for runs on TFDS datasets (class count).

    Returns:
      A float32 ``keras.Model`` built from the run's config (stochastic depth unfolded: call it
      with ``training=False`` for inference).

    Raises:
      RunDirError: no run, no checkpoint, no EMA, or a checkpoint of another model.
    """
    model, _, _, _ = restore_run(
        model_dir, checkpoint=checkpoint, weights=weights, data_dir=data_dir
    )
    return model

"""In-process checks of the replica-related parts of training (issue 18): the learning rate under
float16 follows the training step, the replica count recorded in config.json, ReplicaDropout with
one replica, and the padding of the last eval batch. The two-replica checks of the same features
run in tests/mirrored_child.py (tests/test_distribute.py)."""

import json
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_config
from tfsd.models import common
from tfsd.training import run_dir
from tfsd.training import step as step_lib
from tfsd.training import task as task_lib


def test_float16_lr_follows_the_training_step_not_skipped_optimizer_iterations():
    """Caught: under float16 the schedule was evaluated at ``optimizer.iterations``, which
    LossScaleOptimizer does not advance on a step it skips (non-finite gradients), so every
    skipped step delayed warm-up and decay. Two steps are forced to overflow here."""
    c = tiny_config(precision="float16")
    c.lr.schedule, c.lr.warmup_epochs = "constant", 1.0  # warm-up: lr grows with the step
    task = task_lib.build_task(c, None)
    opt = task.optimizer
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    # Two steps whose gradients overflow, as the training step applies them: the loss-scale
    # optimizer skips both updates; the training step advances anyway (the loop's assign_add).
    variables = task.model.trainable_variables
    for _ in range(2):
        opt.apply([tf.fill(v.shape, float("inf")) for v in variables], variables)
        task.step.assign_add(1)
    assert int(opt.iterations.numpy()) == 0 and int(task.step.numpy()) == 2
    schedule = task_lib.optim.make_lr_schedule(c, task.steps_per_epoch, task.total_steps)
    assert float(schedule(2)) > float(schedule(0)) > 0.0  # warm-up: peak·(s + 1)/W
    assert float(opt.learning_rate) == pytest.approx(float(schedule(2)), rel=1e-6)


def test_replica_count_is_recorded_and_a_different_count_warns(tmp_path):
    c = tiny_config()
    run = str(tmp_path / "run")
    run_dir.check_or_write_config(c, run, num_replicas=2)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["distribute"]["num_replicas"] == 2
    # Readers get the config without the record (it is not a config field).
    assert "num_replicas" not in run_dir.load_run_config(run).distribute
    with mock.patch.object(run_dir.logging, "warning") as warning:
        run_dir.check_or_write_config(c, run, num_replicas=2)
        warning.assert_not_called()
        run_dir.check_or_write_config(c, run, num_replicas=1)  # resumes, with a warning
        assert warning.call_count == 1 and "trained on %d replicas" in warning.call_args[0][0]
        assert warning.call_args[0][2:4] == (2, 1)
    # The file keeps the count the run started with.
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["distribute"]["num_replicas"] == 2
    # Other fields are still checked as before.
    with pytest.raises(run_dir.CheckpointError, match="seed"):
        run_dir.check_or_write_config(tiny_config(seed=5), run, num_replicas=2)


def test_replica_dropout_with_one_replica_is_keras_dropout():
    """One replica (or none): the same masks as keras.layers.Dropout with the same seed, call
    after call, eagerly and in a tf.function; serialized as tfsd's class."""
    x = np.ones((4, 32), "float32")
    ours, theirs = common.ReplicaDropout(0.3, seed=11), keras.layers.Dropout(0.3, seed=11)
    for _ in range(2):
        np.testing.assert_array_equal(ours(x, training=True), theirs(x, training=True))
    run = tf.function(lambda layer: layer(x, training=True))
    np.testing.assert_array_equal(run(ours), run(theirs))
    np.testing.assert_array_equal(ours(x, training=False), x)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert type(again) is common.ReplicaDropout and again.get_config() == ours.get_config()


def test_pad_eval_batches_gives_full_batches_with_zero_weights():
    images = tf.reshape(tf.range(5 * 2, dtype=tf.float32) + 1.0, [5, 2])
    labels = tf.range(5, dtype=tf.int32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)  # 2, 2, 1
    got = list(step_lib.pad_eval_batches(ds, 2, 4))
    assert [tuple(x.shape) for x, _, _ in got] == [(2, 2)] * 4
    assert got[0][0].shape.is_fully_defined()  # static: XLA and TPU need it
    np.testing.assert_array_equal(np.concatenate([w for _, _, w in got]), [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(np.concatenate([y for _, y, _ in got])[:5], labels)
    np.testing.assert_array_equal(np.concatenate([x for x, _, _ in got])[:5], images)
    # eval_batch counts only weight-1 examples.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(5)])
    x, y, w = got[2]
    sums, _ = step_lib.eval_batch(model, x, y, 5, w)
    alone, _ = step_lib.eval_batch(model, x[:1], y[:1], 5)
    assert float(sums["examples"]) == 1.0
    for k in ("loss", "top1", "top5"):
        assert float(sums[k]) == pytest.approx(float(alone[k]), rel=1e-6)

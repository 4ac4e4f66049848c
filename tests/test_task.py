"""The run's task (`tfsd.training.task`): the model's seed, the head size, and the EMA."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_config
from tfsd import data as data_lib
from tfsd import layers as sd_layers
from tfsd.training import loop as loop_lib
from tfsd.training import step as step_lib
from tfsd.training import task as task_lib


def _gate_stream(seed, calls=12):
    c = tiny_config(seed=seed)
    model = task_lib.build_model(c, 10)
    x = tf.zeros((2, 16, 16, 3))
    layers = sd_layers.stochastic_depth_layers(model)
    stream = []
    for _ in range(calls):
        model(x, training=True)
        stream.append([float(lay.keep_rate.numpy()) for lay in layers])
    return stream


def test_config_seed_reaches_the_stochastic_depth_gates():
    """Caught: config.seed never reached the builders (always seed 0): every seed gave the
    same gate stream."""
    a, b = _gate_stream(1), _gate_stream(2)
    assert a == _gate_stream(1)  # a function of the seed
    assert a != b


def test_head_smaller_than_the_dataset_is_an_error(tmp_path):
    """Caught: model.num_classes below the dataset's classes made tf.one_hot zero the labels
    of the other classes, silently."""
    with pytest.raises(ValueError, match="smaller than the dataset's 10 classes"):
        loop_lib.train_and_evaluate(tiny_config(**{"model.num_classes": 5}), str(tmp_path))
    assert task_lib.check_num_classes(tiny_config(**{"model.num_classes": 12}), 10) == 12
    assert task_lib.check_num_classes(tiny_config(), 10) == 10


def test_ema_is_used_for_eval_and_weights_restored(tmp_path):
    """Shadows set to 1.0 (a value training never produces) must be what eval sees."""
    c = tiny_config(ema_decay=0.5, total_steps=2)
    task = task_lib.build_task(c, None)
    before = [v.numpy().copy() for v in task.model.trainable_variables]
    for s in task.ema.shadows:
        s.assign(s.value * 0.0 + 1.0)
    ds = task.strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.build_dataset(
            c.data, split="eval", global_batch_size=16, image_size=16, input_context=ctx
        )  # fmt: skip
    )
    seen = []
    eval_step = step_lib.make_eval_fn(task)

    def spy(batch):
        seen.append(task.model.trainable_variables[0].numpy().copy())
        return eval_step(batch)

    step_lib.evaluate(task, ds, spy, max_steps=1)
    np.testing.assert_array_equal(seen[0], np.ones_like(seen[0]))  # evaluated with the shadows
    for v, b in zip(task.model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)

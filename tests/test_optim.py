"""Optimizers and learning-rate schedules (`tfsd.training.optim`)."""

import keras
import numpy as np
import tensorflow as tf

from tests.helpers import tiny_config
from tfsd import data as data_lib
from tfsd.training import optim
from tfsd.training import step as step_lib
from tfsd.training import task as task_lib


def test_lr_schedules():
    """Reference: hand-computed values of each schedule at its boundaries."""
    step = optim.WarmupSchedule(0.1, 0, 100, "step", boundaries=(50, 75))
    np.testing.assert_allclose([float(step(s)) for s in (0, 49, 50, 75, 99)],
                               [0.1, 0.1, 0.01, 0.001, 0.001], rtol=1e-5)  # fmt: skip
    # Warm-up: step s (the optimizer's count of applied steps, 0 at the first) gets
    # peak·(s + 1)/W. Caught (issue 19, defect 11): peak·s/W spent the first step at lr = 0.
    warm = optim.WarmupSchedule(0.2, 10, 100, "exponential", decay_rate=0.5, decay_steps=20)
    np.testing.assert_allclose([float(warm(s)) for s in (0, 5, 9, 10, 19, 20, 40)],
                               [0.02, 0.12, 0.2, 0.2, 0.2, 0.1, 0.05], rtol=1e-5)  # fmt: skip
    for schedule in ("constant", "step", "exponential", "cosine"):
        assert float(optim.WarmupSchedule(0.1, 5, 50, schedule, boundaries=(25,))(0)) > 0
    cos = optim.WarmupSchedule(1.0, 0, 100, "cosine")
    np.testing.assert_allclose([float(cos(s)) for s in (0, 50, 100)], [1.0, 0.5, 0.0], atol=1e-6)


def _one_step(task, config):
    ds = data_lib.build_dataset(config.data, split="train", global_batch_size=config.batch_size,
                                image_size=config.model.image_size, seed=config.seed)  # fmt: skip
    iterator = iter(ds)
    images, labels = next(iter(ds))
    step_lib.make_train_loop(task)(iterator, tf.constant(1))
    return images, labels


def test_adamw_is_decoupled_and_adds_no_l2_term():
    """Caught: optimizer.name="adamw" was Adam with weight_decay=0 plus an L2 term in the loss.

    Reference: Keras AdamW (``w -= lr * wd * w``, then the Adam step on the loss gradient alone)
    on kernels only, from the same initial weights and batch.
    """
    c = tiny_config(**{"optimizer.name": "adamw", "optimizer.weight_decay": 0.5,
                       "model.survival_prob": 1.0, "lr.base": 1e-2, "lr.warmup_epochs": 0.0,
                       "lr.schedule": "constant"})  # fmt: skip
    task = task_lib.build_task(c, None)
    initial = task.model.get_weights()
    images, labels = _one_step(task, c)
    got = {v.path: v.numpy() for v in task.model.weights}

    task.model.set_weights(initial)
    variables = task.model.trainable_variables
    with tf.GradientTape() as tape:
        logits = task.model(images, training=True)
        loss = tf.reduce_mean(
            tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )
    grads = tape.gradient(loss, variables)
    ref = tf.keras.optimizers.AdamW(1e-2, weight_decay=0.5, epsilon=c.optimizer.epsilon)
    ref.exclude_from_weight_decay(var_list=[v for v in variables if not optim.is_decayed(v)])
    ref.apply(grads, variables)
    kernels = 0
    for v in task.model.weights:
        np.testing.assert_allclose(got[v.path], v.numpy(), atol=2e-6, err_msg=v.path)
        kernels += optim.is_decayed(v)
    # test_resnet (a CIFAR ResNet-8): the stem conv, two convs in each of its 3 blocks and the
    # dense head; its down-sampling shortcuts are parameter-free (option A). (ResNet-20: > 10.)
    assert kernels == 8


def test_rmsprop_matches_tf1_rmsprop_the_efficientnet_reference_optimizer():
    """Reference: ``tf.compat.v1.train.RMSPropOptimizer`` itself, the optimizer the EfficientNet
    reference trains with (mean-square slots start at 1, eps inside the square root). Caught
    (issue 19, defect 11): Keras RMSprop starts them at 0, so its first updates were
    ≈3.2·lr·sign(g) for any gradient above ~0.1, whatever its size. Four steps of gradients of
    very different scales, through `optim.make_optimizer` (the class the loop applies with)."""
    c = tiny_config(**{"optimizer.name": "rmsprop", "optimizer.momentum": 0.9,
                       "optimizer.rho": 0.9, "optimizer.epsilon": 1e-3})  # fmt: skip
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [rng.normal(scale=s, size=(3, 4)).astype(np.float32) for s in (1e-3, 0.5, 2.0, 1e-2)]
    ref_var = tf.Variable(w0)
    ref = tf.compat.v1.train.RMSPropOptimizer(0.1, decay=0.9, momentum=0.9, epsilon=1e-3)
    ours_var = keras.Variable(w0)
    ours = optim.make_optimizer(c, 0.1)
    ours.build([ours_var])
    for g in grads:
        ref.apply_gradients([(tf.constant(g), ref_var)])
        ours.apply([tf.constant(g)], [ours_var])
        np.testing.assert_allclose(ours_var.numpy(), ref_var.numpy(), atol=1e-6)
    assert np.abs(ours_var.numpy() - w0).max() > 0.1  # the steps moved the weights

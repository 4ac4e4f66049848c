"""Learning-rate schedules and optimizers of a run (``config.lr``, ``config.optimizer``).

Gradients reach the optimizer already all-reduced and clipped by the training step
(`tfsd.training.step`), so the optimizer classes here do not all-reduce again. See
``docs/training.md``.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfsd")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps`` W (step s gets peak·(s + 1)/W), then
    constant / step / exponential (staircase, as the EfficientNet reference) / cosine decay over
    ``total_steps``."""

    def __init__(
        self,
        peak: float,
        warmup_steps: int,
        total_steps: int,
        schedule: str,
        boundaries: tuple[int, ...] = (),
        step_factor: float = 0.1,
        decay_rate: float = 0.97,
        decay_steps: int = 1,
    ):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps
        self.schedule, self.boundaries, self.step_factor = schedule, tuple(boundaries), step_factor
        self.decay_rate, self.decay_steps = decay_rate, max(1, decay_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        if self.schedule == "constant":
            lr = tf.constant(self.peak, tf.float32)
        elif self.schedule == "step":
            passed = tf.add_n([tf.cast(step >= b, tf.float32) for b in self.boundaries] or [0.0])
            lr = self.peak * tf.pow(self.step_factor, passed)
        elif self.schedule == "exponential":
            lr = self.peak * tf.pow(self.decay_rate, tf.floor(step / self.decay_steps))
        else:  # cosine, after warm-up
            span = max(1, self.total_steps - self.warmup_steps)
            frac = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = 0.5 * self.peak * (1.0 + tf.cos(math.pi * frac))
        if self.warmup_steps > 0:
            # ``step`` is the optimizer's count of steps already applied (0 at the first one).
            # (step + 1) / W: the first step gets peak / W and step W − 1 the peak. The
            # EfficientNet reference's global_step / W (and Model Garden's LinearWarmup from 0)
            # spend the first step at lr = 0.
            lr = tf.minimum(lr, self.peak * (step + 1.0) / self.warmup_steps)
        return lr

    def get_config(self):
        return dict(
            peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
            schedule=self.schedule, boundaries=self.boundaries, step_factor=self.step_factor,
            decay_rate=self.decay_rate, decay_steps=self.decay_steps,
        )  # fmt: skip


def make_lr_schedule(config, steps_per_epoch: int, schedule_steps: int) -> WarmupSchedule:
    lr = config.lr
    peak = lr.base * (config.batch_size / 256 if lr.scale_by_batch else 1.0)
    return WarmupSchedule(
        peak=peak,
        warmup_steps=int(round(lr.warmup_epochs * steps_per_epoch)),
        total_steps=schedule_steps,
        schedule=lr.schedule,
        boundaries=tuple(int(round(b * schedule_steps)) for b in lr.step_boundaries),
        step_factor=lr.step_factor,
        decay_rate=lr.decay_rate,
        decay_steps=int(round(lr.decay_epochs * steps_per_epoch)),
    )


class AtStep:
    """``schedule(step)`` at the run's own step variable: the callable learning rate the run's
    optimizer gets (Keras 3 optimizers call a non-schedule callable with no argument,
    ``BaseOptimizer._get_current_learning_rate``).

    Keras evaluates a ``LearningRateSchedule`` at ``optimizer.iterations``, which under float16
    is the inner optimizer's counter: ``LossScaleOptimizer`` skips the inner ``apply`` of a step
    with non-finite gradients (``keras/src/optimizers/loss_scale_optimizer.py``,
    ``_common_apply``), so every skipped step shifted the whole schedule (warm-up, decay
    boundaries) later than the training step. The training step advances on every step, as the
    data stream and the stochastic-depth gates do; the optimizer applies the update of step k
    with ``schedule(k)``, k counted from 0, as before.
    """

    def __init__(self, schedule: WarmupSchedule, step: tf.Variable):
        self.schedule, self.step = schedule, step

    def __call__(self):
        return self.schedule(self.step)


def _loop_reduced(cls: type) -> type:
    """``cls`` with its gradient all-reduce removed: the training loop all-reduces gradients.

    Keras 3 clips (``global_clipnorm``) in ``BaseOptimizer._backend_apply_gradients`` *before*
    the TF backend's ``_all_reduce_sum_gradients`` (``keras/src/optimizers/base_optimizer.py``,
    ``keras/src/backend/tensorflow/optimizer.py``), so under any strategy it clipped each
    replica's partial gradient by its own norm. The loop instead all-reduces, then clips by the
    global norm, then applies with this class, which must not sum the gradients again.
    """

    class LoopReduced(cls):
        def _all_reduce_sum_gradients(self, grads_and_vars):
            return list(grads_and_vars)

    LoopReduced.__name__ = LoopReduced.__qualname__ = cls.__name__
    return LoopReduced


_SGD = _loop_reduced(keras.optimizers.SGD)


class _TF1RMSprop(keras.optimizers.RMSprop):
    """Keras RMSprop with its mean-square slots starting at 1, as TF1's ``RMSPropOptimizer``.

    The EfficientNet reference (tensorflow/tpu ``models/official/efficientnet/utils.py``,
    ``build_optimizer``) trains with ``tf.train.RMSPropOptimizer(lr, 0.9, 0.9, 1e-3)``, whose
    ``_create_slots`` initialises the "rms" slot with ones (read in the installed TF,
    ``tf.compat.v1.train.RMSPropOptimizer._create_slots``; timm's ``RMSpropTF`` does the same).
    Keras 3 starts it at 0 (``keras/src/optimizers/rmsprop.py``, ``build``): the first update
    is then lr·g/sqrt(0.1·g² + eps), ≈ 3.2·lr·sign(g) once |g| ≳ 0.1 whatever its size, where
    the reference's lr·g/sqrt(0.9 + 0.1·g² + eps) is ≈ lr·g for small gradients (g = 0.01: 0.31·lr
    against 0.011·lr, 30× larger).
    The update itself is the same in both (eps inside the square root, momentum on the scaled
    gradient): with these slots the two agree step for step (tests/test_optim.py).
    """

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for v in self._velocities:
            if v is not None:  # None: a variable overwritten with its gradient (Keras)
                v.assign(tf.ones(v.shape, v.dtype))


_RMSPROP = _loop_reduced(_TF1RMSprop)


_ADAMW = _loop_reduced(keras.optimizers.AdamW)


def is_decayed(v) -> bool:
    # Kernels only: BN scale/shift and biases are not decayed (as fb.resnet.torch's practice in
    # timm/Model Garden; the EfficientNet reference also decays biases, a negligible difference).
    return v.name in ("kernel", "depthwise_kernel")


def make_optimizer(config, schedule, variables=None, step=None) -> keras.optimizers.Optimizer:
    """The optimizer of ``config.optimizer``; gradients reach it already all-reduced and clipped.

    ``adamw`` is decoupled AdamW (Loshchilov & Hutter 2019; ``keras/src/optimizers/adamw.py``:
    ``w -= lr * weight_decay * w`` before the Adam step) on kernels only, with no L2 term in the
    loss; ``sgd`` and ``rmsprop`` get ``0.5 * weight_decay * Σ w²`` in the loss (the references').
    ``variables``: the trainable variables, to exclude non-kernels from AdamW's decay.
    ``step``: the run's step variable; the learning rate then follows it (`AtStep`), not
    ``optimizer.iterations``.
    """
    o = config.optimizer
    if step is not None:
        schedule = AtStep(schedule, step)
    if o.name == "sgd":
        opt = _SGD(schedule, momentum=o.momentum, nesterov=o.nesterov)
    elif o.name == "rmsprop":
        # TF1 RMSProp, the EfficientNet reference's (`_TF1RMSprop`).
        opt = _RMSPROP(schedule, rho=o.rho, momentum=o.momentum, epsilon=o.epsilon)
    else:
        opt = _ADAMW(schedule, weight_decay=o.weight_decay, epsilon=o.epsilon)
        if variables is not None:
            opt.exclude_from_weight_decay(var_list=[v for v in variables if not is_decayed(v)])
        else:
            opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if config.precision == "float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt

"""TF-native stochastic depth layers (the survival schedules are in `tfsd.schedules`).

`StochasticDepth` (a ``[shortcut, residual]`` pair, as TF Addons and keras-cv) and
`StochasticResidual` (holds the branch; skips a dropped branch's compute) implement stochastic
depth as in Huang, Sun, Liu, Sedra, Weinberger, "Deep Networks with Stochastic Depth", ECCV 2016,
arXiv:1603.09382, with per-batch (paper) or per-example (timm DropPath, EfficientNet
``drop_connect``) gates and the paper's or inverted scaling.

See docs/layers.md (usage, inference, schedules) and its section "Reference: tfsd/layers.py"
(formulas, conventions, the Philox gate-key specification).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

# Private, but the check tf.function itself uses to decide whether it is already inside an XLA
# cluster (tensorflow/python/eager/polymorphic_function/polymorphic_function.py, ``__call__`` and
# ``OptionalXlaContext``): a jit_compile=True function enters an XLAControlFlowContext on the
# graph it is traced from, and TPU replication (TPUReplicateContext) is one too.
from tensorflow.python.ops import control_flow_util

from tfsd.philox import full_int as _philox_full_int

# The survival rules live in tfsd.schedules; their names stay importable from here (public API).
from tfsd.schedules import (  # noqa: F401
    RULES,
    SCHEDULES,
    check_survival_prob,
    efficientnet_rule,
    efficientnet_survival_schedule,
    linear_rule,
    linspace_rule,
    survival_schedule,
    timm_resnet_rule,
    uniform_rule,
)

MODES = ("batch", "sample")
SCALE_AT = ("inference", "train")


# -------------------------------------------------------------------------------------------------
# Layers.
# -------------------------------------------------------------------------------------------------


@tf.custom_gradient
def _gather_rows(x: tf.Tensor, rows: tf.Tensor) -> tuple[tf.Tensor, Any]:
    """``tf.gather_nd(x, rows)`` for ``rows`` of shape [n, 1], with a dense gradient.

    GatherNd's registered gradient is an ``IndexedSlices`` for such indices
    (tensorflow/python/ops/array_grad.py, ``_GatherNdGrad``), and ``tf.switch_case``'s gradient
    cannot merge it with the dense gradient of the other branches (a TypeSpec mismatch).
    """

    # The shape is taken in the forward pass so that the backward pass does not hold ``x`` alive
    # (only its shape is needed), which lets the runtime reuse x's buffer.
    shape = tf.shape(x, out_type=rows.dtype)

    def grad(dy: tf.Tensor) -> tuple[tf.Tensor, None]:
        return tf.scatter_nd(rows, dy, shape), None

    return tf.gather_nd(x, rows), grad


def name_hash(name: str) -> int:
    """The layer-name term of the gate key: SHA-256 of the UTF-8 name, first 8 bytes, as int64.

    Stable across processes, platforms and Python versions (unlike the salted ``hash()``).
    """
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little", signed=True)


def in_xla_context() -> bool:
    """True while tracing inside ``tf.function(jit_compile=True)``, ``xla.compile`` or a TPU."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _resolve_training(training: Any) -> Any:
    """Maps Keras' ``training`` to a Python bool, leaving a tensor as is (for ``tf.cond``)."""
    if training is None:
        return False
    if isinstance(training, (bool, int)):
        return bool(training)
    return training


@keras.saving.register_keras_serializable(package="tfsd")
class StochasticDepth(keras.layers.Layer):
    """Returns ``shortcut + gate * residual`` for a ``[shortcut, residual]`` pair.

    Example:
      >>> x = keras.Input((8, 8, 16))
      >>> r = keras.layers.Conv2D(16, 3, padding="same")(x)
      >>> y = StochasticDepth(0.8, mode="sample", seed=1)([x, r])

    Args:
      survival_prob: p in (0, 1], the probability that the residual is kept. Default 0.5, the
        paper's p_L and the default of TF Addons' and keras-cv's ``StochasticDepth``, so their
        documented ``StochasticDepth()([x, r])`` runs unchanged.
      mode: "batch" (one gate per call, the paper) or "sample" (one gate per example).
      scale_at: "inference" (paper: ``shortcut + p * residual`` at inference) or "train"
        (inverted: kept residuals divided by p in training, plain sum at inference).
      sync_replicas: if True, every replica of a ``tf.distribute`` strategy draws the same gates.
      seed: integer seed of this layer's random stream; None draws one from Python's ``random``.
      **kwargs: standard Keras layer arguments (``name``, ``dtype``…).
    """

    def __init__(
        self,
        survival_prob: float = 0.5,
        mode: str = "batch",
        scale_at: str = "inference",
        sync_replicas: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        check_survival_prob(survival_prob)
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")
        if scale_at not in SCALE_AT:
            raise ValueError(f"Unknown scale_at {scale_at!r}; expected one of {SCALE_AT}.")
        if not isinstance(sync_replicas, bool):
            raise ValueError(f"sync_replicas must be a bool, got {sync_replicas!r}.")
        if seed is None:
            # Python's random, which keras.utils.set_random_seed controls; get_config stores the
            # drawn value, so a saved model keeps its random stream.
            seed = random.randint(0, 2**31 - 1)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}.")
        self.survival_prob = float(survival_prob)
        self._threshold = min(round(self.survival_prob * 2**32), 2**32)
        self.mode = mode
        self.scale_at = scale_at
        self.sync_replicas = sync_replicas
        self.seed = seed
        self.step = None
        self.keep_rate = None
        self._layer_key = None  # uniform_full_int(fold_in([0, seed], name_hash)), set on first draw

    # -- state ------------------------------------------------------------------------------------

    def _build_state(self) -> None:
        if self.step is not None:
            return
        # Sync-on-read: replicas advance their own counters with no cross-replica traffic; all of
        # them advance identically, so replica 0's value is the one checkpoints save and restore.
        with keras.name_scope(self.name, caller=self):
            self.step = keras.Variable(
                0,
                dtype="int64",
                trainable=False,
                name="sd_step",
                synchronization="on_read",
                aggregation="only_first_replica",
            )
            # Fraction of gates kept by the last training call (1/0 in batch mode); read as the
            # mean over replicas. The training loop sums it over blocks for the effective depth.
            self.keep_rate = keras.Variable(
                1.0,
                dtype="float32",
                trainable=False,
                autocast=False,
                name="sd_keep_rate",
                synchronization="on_read",
                aggregation="mean",
            )

    def build(self, input_shape: Any) -> None:
        self._check_pair_shapes(input_shape)
        self._build_state()

    @staticmethod
    def _as_shape(s: Any) -> tuple:
        return tuple(s.as_list()) if isinstance(s, tf.TensorShape) else tuple(s)

    def _check_pair_shapes(self, input_shape: Any) -> None:
        is_shape = lambda s: isinstance(s, (list, tuple, tf.TensorShape))  # noqa: E731
        if not (
            is_shape(input_shape) and len(input_shape) == 2 and all(map(is_shape, input_shape))
        ):
            raise ValueError(
                f"{type(self).__name__} expects a pair [shortcut, residual], got input shapes "
                f"{input_shape!r}."
            )
        a, b = (self._as_shape(s) for s in input_shape)
        compatible = len(a) == len(b) and all(
            x is None or y is None or x == y for x, y in zip(a, b)
        )
        if not compatible:
            raise ValueError(
                f"shortcut and residual shapes must be equal, got shortcut shape {a} and residual "
                f"shape {b}."
            )

    # -- gates ------------------------------------------------------------------------------------

    def _replica_id(self) -> tf.Tensor:
        ctx = tf.distribute.get_replica_context()
        if ctx is None or self.sync_replicas:
            return tf.constant(0, tf.int64)
        return tf.cast(ctx.replica_id_in_sync_group, tf.int64)

    def layer_key(self) -> int:
        """``k = uniform_full_int(fold_in([0, seed], name_hash(name)))``, this layer's constant.

        The key of the draw at ``step`` on ``replica`` is ``fold_in([k, step], replica)``; see
        docs/layers.md, "Reference: tfsd/layers.py". Computed eagerly once (a Philox call on two
        constants), so the training graph holds it as a constant.
        """
        if self._layer_key is None:
            with tf.init_scope():  # eager even when first called while tracing a tf.function
                # Philox named explicitly: "auto_select" resolves differently in XLA and TF.
                base = tf.random.experimental.stateless_fold_in(
                    tf.constant([0, self.seed], tf.int64),
                    tf.constant(name_hash(self.name), tf.int64),
                    alg="philox",
                )
                k = tf.random.stateless_uniform(
                    [], seed=base, minval=None, maxval=None, dtype=tf.int64, alg="philox"
                )
                self._layer_key = int(k.numpy())
        return self._layer_key

    def _draw_keep(self, batch_size: Any, rank: int) -> tf.Tensor:
        """Draws the Bernoulli(p) keep decisions (bool) and advances the step counter."""
        # One draw per layer and step, not one fused draw for the whole model: fusing would make
        # the model own the stream (keyed on block position), breaking the per-layer name-keyed
        # streams and the two-input API (benchmarks/stochastic_depth_speed.py times the saving).
        step = tf.identity(self.step.value)
        # [k, step] is exactly stateless_fold_in(fold_in([0, seed], name_hash), step): fold_in
        # returns [uniform_full_int(seed), data] (tensorflow/python/ops/stateless_random_ops.py).
        seed = tf.stack([tf.constant(self.layer_key(), tf.int64), step])
        # stateless_fold_in(seed, replica, alg="philox") (its definition), one kernel eagerly.
        seed = tf.stack([_philox_full_int([], seed, tf.int64), self._replica_id()])
        if self.mode == "batch":
            shape = []
        else:
            shape = tf.stack([tf.cast(batch_size, tf.int32)] + [1] * (rank - 1))
        # Full-range uint32 draws compared with round(p * 2^32) in integer arithmetic: exact for
        # any p whatever the compute dtype, and bit-identical on CPU, GPU and under XLA (float
        # stateless uniforms differ between the TF kernel and XLA's lowering).
        bits = _philox_full_int(shape, seed, tf.uint32)
        keep = tf.cast(bits, tf.int64) < self._threshold
        self.step.assign_add(1)
        self.keep_rate.assign(tf.reduce_mean(tf.cast(keep, tf.float32)))
        return keep

    def _gate(self, keep: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
        """The factor multiplying the residual in training (b or b / p), in ``dtype``."""
        gate = tf.cast(keep, dtype)
        if self.scale_at == "train":
            gate = gate * tf.cast(1.0 / self.survival_prob, dtype)
        return gate

    def _inference(self, shortcut: tf.Tensor, residual: tf.Tensor) -> tf.Tensor:
        if self.scale_at == "inference" and self.survival_prob < 1.0:
            return shortcut + tf.cast(self.survival_prob, residual.dtype) * residual
        return shortcut + residual

    # -- call -------------------------------------------------------------------------------------

    def _split_pair(self, inputs: Any) -> tuple[tf.Tensor, tf.Tensor]:
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(
                f"{type(self).__name__} expects inputs [shortcut, residual] (a list of two "
                f"tensors), got {type(inputs).__name__}."
            )
        shortcut, residual = (tf.convert_to_tensor(t) for t in inputs)
        self._check_pair_shapes([shortcut.shape, residual.shape])
        dtype = self.compute_dtype
        return tf.cast(shortcut, dtype), tf.cast(residual, dtype)

    def call(self, inputs: Sequence[tf.Tensor], training: Any = None) -> tf.Tensor:
        shortcut, residual = self._split_pair(inputs)
        training = _resolve_training(training)
        if self.survival_prob == 1.0 or training is False:
            return self._inference(shortcut, residual)

        def train_fn():
            keep = self._draw_keep(tf.shape(residual)[0], residual.shape.rank)
            return shortcut + self._gate(keep, residual.dtype) * residual

        if training is True:
            return train_fn()
        return tf.cond(training, train_fn, lambda: self._inference(shortcut, residual))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            survival_prob=self.survival_prob,
            mode=self.mode,
            scale_at=self.scale_at,
            sync_replicas=self.sync_replicas,
            seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="tfsd")
class StochasticResidual(StochasticDepth):
    """A residual block ``shortcut + gate * branch(inputs)`` that skips dropped branches.

    Called as ``layer(inputs)`` (identity shortcut) or ``layer(inputs, shortcut=s)`` with a
    shortcut of the branch's output shape (a projection or a zero-padded subsample). In
    ``mode="batch"`` during training the branch runs inside ``tf.cond``: a dropped block costs
    nothing forward or backward, its variables get zero gradients (``None`` when running eagerly,
    since the branch never touched the tape) and its BatchNorm moving statistics stay unchanged.

    In ``mode="sample"`` the default (``sample_skip=False``) computes exactly what
    `StochasticDepth` computes: the branch on the whole batch, times a per-example mask. With
    ``sample_skip=True`` a training call gathers the kept examples, runs the branch on them only
    and scatters the result back (``tf.tensor_scatter_nd_add`` onto the shortcut); dropped
    examples get exactly the shortcut, and neither their forward nor their backward pass touches
    the branch. All-kept and all-dropped batches take fast paths (the plain sum, the shortcut).
    The gates, the key and ``keep_rate`` are the same as the mask form's. One semantic difference:
    a batch-coupled op in the branch (BatchNorm in training) sees only the kept examples, so its
    batch statistics and moving-average updates come from them (as in the paper's batch mode,
    where a dropped block's statistics are not updated) and outputs are not bit-equal to the mask
    form; branches without such ops give bit-equal outputs, and inference is unchanged. The
    kept subset has a data-dependent size, so ``sample_skip=True`` is refused (ValueError) inside
    ``tf.function(jit_compile=True)`` and on TPU; use the mask form there. The layer also sets
    ``supports_jit = False``, so Keras' ``jit_compile="auto"`` does not pick XLA for its model.

    Example:
      >>> branch = keras.Sequential([keras.layers.Conv2D(16, 3, padding="same")])
      >>> y = StochasticResidual(branch, 0.5, seed=3)(x)

    Args:
      branch: a Keras layer (often a functional sub-model) computing the residual.
      survival_prob, mode, scale_at, sync_replicas, seed: as in `StochasticDepth`.
      sample_skip: in ``mode="sample"``, run the branch on the kept examples only (training).
        Must be False in ``mode="batch"``, which always skips.
      **kwargs: standard Keras layer arguments.
    """

    def __init__(
        self,
        branch: keras.layers.Layer,
        survival_prob: float,
        mode: str = "batch",
        scale_at: str = "inference",
        sync_replicas: bool = False,
        seed: int | None = None,
        sample_skip: bool = False,
        **kwargs: Any,
    ):
        super().__init__(
            survival_prob,
            mode=mode,
            scale_at=scale_at,
            sync_replicas=sync_replicas,
            seed=seed,
            **kwargs,
        )
        if not isinstance(branch, keras.layers.Layer):
            raise ValueError(f"branch must be a keras Layer, got {type(branch).__name__}.")
        if not isinstance(sample_skip, bool):
            raise ValueError(f"sample_skip must be a bool, got {sample_skip!r}.")
        if sample_skip and mode != "sample":
            raise ValueError(
                f"sample_skip=True applies to mode='sample' only (mode={mode!r} already skips "
                "dropped branches whole)."
            )
        self.branch = branch
        self.sample_skip = sample_skip
        if sample_skip:
            # Read by model_supports_jit (keras/src/trainers/trainer.py): jit_compile="auto" -> off.
            self.supports_jit = False

    def build(self, inputs_shape: Any, shortcut_shape: Any = None) -> None:
        if not self.branch.built:
            self.branch.build(inputs_shape)
        self._build_state()

    def call(self, inputs: tf.Tensor, shortcut: tf.Tensor | None = None, training: Any = None):
        inputs = tf.convert_to_tensor(inputs)
        shortcut = inputs if shortcut is None else tf.convert_to_tensor(shortcut)
        training = _resolve_training(training)
        skips = self.mode == "batch" or self.sample_skip
        if (
            training is False
            or self.survival_prob == 1.0
            or not skips
            or self._branch_needs_all_replicas()
        ):
            residual = self.branch(inputs, training=training)
            return super().call([shortcut, residual], training=training)
        if self.sample_skip and in_xla_context():
            raise ValueError(
                f"{self.name}: sample_skip=True runs the branch on a data-dependent subset of the "
                "batch, which XLA cannot compile (jit_compile=True or TPU). Build the model with "
                "sample_skip=False (the per-example mask form, same gates) to train under XLA."
            )

        dtype = self.compute_dtype
        shortcut = tf.cast(shortcut, dtype)

        def residual_of(x):
            residual = tf.cast(self.branch(x, training=True), dtype)
            # The batch axis of a kept subset is shorter than the shortcut's: compare the rest.
            self._check_pair_shapes([shortcut.shape[1:], residual.shape[1:]])
            if self.scale_at == "train":  # a kept branch is scaled by 1 / p
                residual = self._gate(tf.constant(True), dtype) * residual
            return residual  # scale_at="inference": the gate of a kept branch is 1, no multiply

        def all_kept():
            return shortcut + residual_of(inputs)

        def all_dropped():
            # No branch op is built on this side.
            return tf.identity(shortcut)

        def train_fn():
            if self.mode == "batch":
                keep = self._draw_keep(None, 0)
                return tf.cond(keep, all_kept, all_dropped)
            keep = self._draw_keep(tf.shape(inputs)[0], 1)  # [batch] bool

            def some_kept():
                # Row indices found inside the branch: a tensor captured from outside is not
                # available to the gradient of a switch_case branch in every graph context.
                kept = tf.where(keep)  # [n_kept, 1] int64
                # Gradients of tensor_scatter_nd_add w.r.t. the updates, and of the gather w.r.t.
                # its params, touch the kept rows only: dropped rows get the shortcut's gradient.
                residual = residual_of(_gather_rows(inputs, kept))
                return tf.tensor_scatter_nd_add(shortcut, kept, residual)

            n_kept = tf.reduce_sum(tf.cast(keep, tf.int32))
            case = tf.where(n_kept == 0, 0, tf.where(n_kept == tf.size(keep), 2, 1))
            return tf.switch_case(case, [all_dropped, some_kept, all_kept])

        if training is True:
            return train_fn()

        def infer_fn():
            return self._inference(shortcut, tf.cast(self.branch(inputs, training=False), dtype))

        return tf.cond(training, train_fn, infer_fn)

    def _branch_needs_all_replicas(self) -> bool:
        """True when the branch must run on every replica: it holds synchronized BatchNorm and
        the strategy is not TPUStrategy.

        Under MirroredStrategy on CPUs (``mirrored_strategy.py``, ``_use_merge_call``) a
        replica-context ``all_reduce`` is a ``merge_call``, which TF rejects inside ``tf.cond``
        ("merge_call called while defining a new graph"). Such a block then computes its branch
        and multiplies it by the gate (the batch-mode draw is unchanged), giving up the skip's
        saving. TPUStrategy's all-reduce is an XLA collective that is valid inside the
        conditional when every replica takes the same branch (``sync_replicas=True``).
        """
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return False
        if isinstance(ctx.strategy, tf.distribute.TPUStrategy):
            return False
        return any(
            isinstance(lay, keras.layers.BatchNormalization) and lay.synchronized
            for lay in self.branch._flatten_layers(include_self=True)
        )

    def compute_output_spec(self, inputs: Any, shortcut: Any = None, training: Any = None):
        spec = self.branch.compute_output_spec(inputs)
        self._check_pair_shapes([(inputs if shortcut is None else shortcut).shape, spec.shape])
        return keras.KerasTensor(spec.shape, dtype=self.compute_dtype)

    def get_config(self) -> dict:
        config = super().get_config()
        config["sample_skip"] = self.sample_skip
        config["branch"] = keras.saving.serialize_keras_object(self.branch)
        return config

    @classmethod
    def from_config(cls, config: dict) -> StochasticResidual:
        config = dict(config)
        config["branch"] = keras.saving.deserialize_keras_object(config["branch"])
        return cls(**config)


def stochastic_depth_layers(model: keras.Model) -> list[StochasticDepth]:
    """All stochastic-depth layers of ``model``, nested sub-models included, in build order."""
    return [
        lay for lay in model._flatten_layers(include_self=False) if isinstance(lay, StochasticDepth)
    ]

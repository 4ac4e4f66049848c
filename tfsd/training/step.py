"""The distributed training step (a host loop of steps) and the evaluation step.

Gradients are all-reduced by the step (not by the optimizer) so that clipping sees the global
norm; BatchNorm moving statistics, which Keras 3 keeps per replica (aggregation "none",
``keras/src/layers/normalization/batch_normalization.py``), are averaged across replicas after
every step. `eval_batch` is the one evaluation computation, shared by the loop's eval and
``tfsd.evaluate``. See ``docs/training.md`` and ``docs/distributed.md``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsd import distribute
from tfsd.training import finetune, optim
from tfsd.training.task import Task


def _per_example_loss(task: Task, labels, logits):
    logits = tf.cast(logits, tf.float32)
    if labels.shape.rank == 1:
        labels = tf.one_hot(labels, task.num_classes)
    return keras.losses.categorical_crossentropy(
        labels, logits, from_logits=True, label_smoothing=task.config.label_smoothing
    )


def _correct(labels, logits, k: int):
    if labels.shape.rank == 2:
        labels = tf.argmax(labels, axis=-1)
    hits = tf.math.in_top_k(tf.cast(labels, tf.int32), tf.cast(logits, tf.float32), k)
    return tf.reduce_sum(tf.cast(hits, tf.float32))


def bn_moving_stats(model: keras.Model) -> list:
    """Moving mean/variance of every unsynchronized BatchNorm layer (they differ per replica)."""
    return [
        v
        for lay in model._flatten_layers(include_self=False)  # noqa: SLF001
        if isinstance(lay, keras.layers.BatchNormalization) and not lay.synchronized
        for v in (lay.moving_mean, lay.moving_variance)
    ]


# The per-step numbers every replica contributes to the one fused all-reduce of a step, in order;
# the stochastic-depth keep rates (one per layer) follow them.
STEP_SUMS = ("loss", "top1", "examples", "stop")
EVAL_SUMS = ("loss", "top1", "top5", "examples")  # the eval step's vector


def make_train_loop(task: Task, stop: tf.Variable | None = None):
    """A ``tf.function`` running up to ``n`` training steps per host call, returning sums.

    ``stop``: a host boolean variable (set by the signal watcher). Every worker reads its own
    copy; the loop decides only on the all-reduced value (any worker's flag stops all of them,
    at the same step): once before the first step of the call, then with every step. The
    returned dict holds ``steps`` (done) and ``stopped``.

    Collectives per step: the gradients (one batched all-reduce), the BatchNorm moving statistics
    when unsynchronized over several replicas (one), and one vector holding the loss, top-1,
    example count, stop flag and every stochastic-depth keep rate. EMA shadows are updated
    inside the replica step with no communication (`task.EMA`).
    """
    config, strategy, model, opt = task.config, task.strategy, task.model, task.optimizer
    variables = model.trainable_variables
    decayed = [v for v in variables if optim.is_decayed(v)]
    # AdamW decays in the optimizer (decoupled); SGD and RMSProp through the loss.
    wd = 0.0 if config.optimizer.name == "adamw" else config.optimizer.weight_decay
    clip = config.optimizer.grad_clip_norm
    replicas = strategy.num_replicas_in_sync
    # (The stochastic-depth state is not checked: reading keep_rate here would be a reduction.)
    float_weights = [
        v for v in model.weights if v.dtype.startswith("float") and v.name != "sd_keep_rate"
    ]
    stats = bn_moving_stats(model) if replicas > 1 else []
    multi_worker = distribute.is_multi_worker(strategy)
    # Frozen-backbone warm-up (init.freeze_steps): backbone gradients are zeroed, so SGD and
    # RMSProp leave those weights unchanged (their slots stay zero); BatchNorm statistics still
    # follow the new data and AdamW's decoupled decay still applies.
    freeze = int(config.init.freeze_steps)
    head = finetune.trainable_while_frozen(config, model) if freeze else []

    def gradients(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = _per_example_loss(task, labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.batch_size)
            if wd > 0 and decayed:
                l2 = tf.add_n(
                    [tf.reduce_sum(tf.square(tf.cast(v.value, tf.float32))) for v in decayed]
                )
                loss += 0.5 * wd * l2 / replicas
            scaled = opt.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        # A block dropped by a batch-mode gate never ran: its variables get zero gradients.
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        metrics = {
            "loss": loss,
            "top1": _correct(labels, logits, 1),
            "examples": tf.cast(tf.shape(logits)[0], tf.float32),
        }
        return grads, metrics

    if config.jit_compile:
        # XLA compiles the forward and backward pass; the collectives and the optimizer update
        # stay outside (under MirroredStrategy they are merge_calls, which XLA cannot hold).
        gradients = tf.function(gradients, jit_compile=True)

    # Autograph (tf.function's Python-to-graph rewrite) is left to the two loops, the only code
    # with a tensor-dependent `for`/`if`: the functions they call are plain TF ops with Python
    # conditions on config values, so `do_not_convert` spares each process from rewriting them
    # (parse, transform and compile their source). Measured 2026-12-05 by timing
    # tensorflow/python/autograph/impl/api.py's _convert_actual per function: the tiny ResNet's
    # `tfsd.train` converted 40 functions in 1.45 s, now 3 (the two loops and a lambda) in 0.19.
    @tf.autograph.experimental.do_not_convert
    def replica_step(images, labels, stop_flag):
        grads, metrics = gradients(images, labels)
        ctx = tf.distribute.get_replica_context()
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if freeze:
            frozen = task.step < freeze  # the step about to run is task.step + 1
            grads = [g if h else tf.where(frozen, tf.zeros_like(g), g) for g, h in zip(grads, head)]
        if clip > 0:
            limit = clip
            if isinstance(opt, keras.optimizers.LossScaleOptimizer):
                # The gradients still carry the loss scale: scale the threshold alike.
                limit = clip * tf.cast(opt.dynamic_scale, tf.float32)
            grads, _ = tf.clip_by_global_norm(grads, limit)
        opt.apply(grads, variables)
        if stats:
            # Each replica updated its own moving statistics from its own examples; averaging
            # them makes the statistics those of the global batch (exactly, for the mean).
            local = [tf.identity(v.value) for v in stats]  # tensors: the local copies
            means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, local)
            for v, m in zip(stats, means):
                v.assign(m)
        if task.ema is not None:
            task.ema.update(task.step + 1)  # the step just taken (task.step advances after)
        # keep_rate is sync-on-read (tfsd/layers.py): read here, in the replica context, it is
        # this replica's own kept fraction; the sum over replicas / replicas is the global one
        # (replicas hold equal batch shares).
        rates = [tf.cast(lay.keep_rate.value, tf.float32) for lay in task.sd_layers]
        local = tf.stack([metrics["loss"], metrics["top1"], metrics["examples"], stop_flag, *rates])
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)  # one collective for all of it

    @tf.autograph.experimental.do_not_convert
    def local_flag():
        return tf.constant(0.0) if stop is None else tf.cast(stop.read_value(), tf.float32)

    @tf.autograph.experimental.do_not_convert
    def stop_requested():
        flag = local_flag()
        if multi_worker:
            # Every worker must stop at the same step or the others hang in a collective.
            # (ReduceOp has SUM and MEAN only: any worker's flag makes the sum positive.)
            flag = strategy.reduce(
                tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(flag)), axis=None
            )
        return flag > 0

    n_sums = len(STEP_SUMS)

    @tf.function
    def train_loop(iterator, n):
        totals = tf.zeros([n_sums + len(task.sd_layers)])
        steps = tf.constant(0.0)
        stopped = stop_requested()  # once per call: a signal that came between two calls
        for _ in tf.range(n):
            if stopped:
                break
            images, labels = next(iterator)
            out = strategy.run(replica_step, args=(images, labels, local_flag()))
            # All-reduced inside the step: every local replica holds the same vector.
            out = strategy.experimental_local_results(out)[0]
            task.step.assign_add(1)
            totals += out
            steps += 1.0
            stopped = out[STEP_SUMS.index("stop")] > 0
        sums = {k: totals[i] for i, k in enumerate(STEP_SUMS) if k != "stop"}
        sums["keep_rates"] = totals[n_sums:] / replicas  # per block, summed over steps
        sums["active_blocks"] = tf.reduce_sum(sums["keep_rates"])
        sums["steps"] = steps
        sums["stopped"] = tf.cast(stopped, tf.float32)
        # Weights too: BN statistics can overflow a step before the loss shows it.
        sums["finite"] = tf.cast(
            tf.reduce_all([tf.reduce_all(tf.math.is_finite(v.value)) for v in float_weights]),
            tf.float32,
        )
        return sums

    return train_loop


def eval_batch(model: keras.Model, images, labels, num_classes: int, weights=None):
    """One eval batch: ``(sums, predictions)``, the computation every evaluation runs.

    The training loop's eval (`make_eval_fn`) and ``tfsd.evaluate``
    (`tfsd.training.evaluation.evaluate_model`) both call this, so their numbers agree. ``sums``
    holds ``loss`` (summed plain cross-entropy: no label smoothing, the test loss), ``top1``
    (argmax equals the label, as the confusion matrix counts), ``top5`` and ``examples``;
    ``predictions`` are the argmax classes (int32). One-hot labels are reduced to their argmax.
    ``weights``: optional 0/1 per example (`pad_eval_batches`); padding (0) counts nowhere.
    """
    logits = tf.cast(model(images, training=False), tf.float32)
    if labels.shape.rank == 2:
        labels = tf.argmax(labels, axis=-1)
    labels = tf.cast(labels, tf.int32)
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    in_top_k = tf.math.in_top_k(labels, logits, min(5, num_classes))
    top1 = tf.cast(tf.equal(predictions, labels), tf.float32)
    top5 = tf.cast(in_top_k, tf.float32)
    if weights is None:
        weights = tf.ones_like(loss)
    real = weights > 0
    sums = {
        # tf.where, not a product: a padded example's loss never reaches the sum, whatever it is.
        "loss": tf.reduce_sum(tf.where(real, loss, 0.0)),
        "top1": tf.reduce_sum(tf.where(real, top1, 0.0)),
        "top5": tf.reduce_sum(tf.where(real, top5, 0.0)),
        "examples": tf.reduce_sum(tf.cast(real, tf.float32)),
    }
    return sums, predictions


def make_eval_fn(task: Task):
    """``eval_step(batch)``: one distributed eval step (a ``tf.function``) returning sums.

    ``batch`` is ``(images, labels)`` or ``(images, labels, weights)`` (`pad_eval_batches`).
    ``eval_step.loop(iterator, n)`` runs ``n`` steps in one ``tf.function`` (TPU needs the
    loop on device; multi-worker runs need every worker to run the same number of steps).
    """
    strategy, model = task.strategy, task.model

    @tf.autograph.experimental.do_not_convert  # see make_train_loop
    def replica_eval(images, labels, weights=None):
        sums = eval_batch(model, images, labels, task.num_classes, weights)[0]
        return tf.stack([sums[k] for k in EVAL_SUMS])  # one vector: one reduction per step

    @tf.autograph.experimental.do_not_convert
    def _unpack(vector):
        return {k: vector[i] for i, k in enumerate(EVAL_SUMS)}

    @tf.function
    def eval_step(batch):
        out = strategy.run(replica_eval, args=batch)
        return _unpack(strategy.reduce("SUM", out, axis=None))

    @tf.function
    def eval_loop(iterator, n):
        totals = tf.zeros([len(EVAL_SUMS)])
        for _ in tf.range(n):
            out = strategy.run(replica_eval, args=next(iterator))
            totals += strategy.reduce("SUM", out, axis=None)
        return _unpack(totals)

    eval_step.loop = eval_loop
    return eval_step


def eval_batches_per_pipeline(task: Task, num_eval_examples: int) -> tuple[int, int]:
    """``(steps, batches)``: global eval steps covering the split, and per-replica batches per
    input pipeline, the same on every worker.

    ``steps = ceil(ceil(N / P) / (B / P))`` for N examples, P input pipelines (one per worker;
    ``tfds.even_splits`` gives each at most ``ceil(N / P)``) and global batch B; capped by
    ``config.eval_steps``. Every pipeline yields ``steps * B / P / b`` batches of the per-replica
    batch b, real examples first, then zero-weight padding (`pad_eval_batches`).
    """
    strategy, batch = task.strategy, task.config.batch_size
    pipelines = max(1, getattr(strategy.extended, "_num_workers", 1))
    per_pipeline = -(-num_eval_examples // pipelines)
    steps = max(1, -(-per_pipeline // (batch // pipelines)))
    if task.config.eval_steps:
        steps = min(steps, task.config.eval_steps)
    replicas_per_pipeline = strategy.num_replicas_in_sync // pipelines
    return steps, steps * replicas_per_pipeline


def pad_eval_batches(ds: tf.data.Dataset, batch_size: int, num_batches: int) -> tf.data.Dataset:
    """``(images, labels)`` batches → exactly ``num_batches`` full ``(images, labels, weights)``.

    The last partial batch is padded with zero examples of weight 0, then whole zero-weight
    batches follow, so that no replica ever sees an empty or short batch (TF 2.21's CPU conv
    returns a wrong shape for a batch of 0: ``Incompatible shapes: [4] vs. [0,16,16,3]``) and
    every shape is static (XLA, TPU). `eval_batch` counts weight-0 examples nowhere.
    """

    @tf.autograph.experimental.do_not_convert  # plain TF ops (see make_train_loop)
    def weigh(images, labels):
        n = tf.shape(images)[0]
        pad = batch_size - n

        def padded(x):
            x = tf.pad(x, [[0, pad]] + [[0, 0]] * (x.shape.rank - 1))
            return tf.ensure_shape(x, [batch_size, *x.shape[1:]])

        weights = tf.concat([tf.ones([n]), tf.zeros([pad])], axis=0)
        return padded(images), padded(labels), tf.ensure_shape(weights, [batch_size])

    ds = ds.map(weigh)
    filler = tf.data.Dataset.from_tensors(
        tuple(tf.zeros(s.shape, s.dtype) for s in ds.element_spec)
    ).repeat()
    return ds.concatenate(filler).take(num_batches)


def evaluate(task: Task, eval_ds, eval_step, max_steps: int = 0, fixed_steps: int = 0):
    """Top-1 / top-5 / loss over the eval split, with the EMA weights when there are any.

    ``fixed_steps`` > 0 runs exactly that many steps in one ``tf.function`` (the training loop:
    see `eval_batches_per_pipeline`); otherwise iterates the split (up to ``max_steps`` batches).
    """
    if task.ema is not None:
        task.ema.swap()
    try:
        sums: dict[str, float] = {}
        if fixed_steps:
            out = eval_step.loop(iter(eval_ds), tf.constant(fixed_steps))
            sums = {k: float(v) for k, v in out.items()}
        else:
            for i, batch in enumerate(eval_ds):
                if max_steps and i >= max_steps:
                    break
                for k, v in eval_step(batch).items():
                    sums[k] = sums.get(k, 0.0) + float(v)
    finally:
        if task.ema is not None:
            task.ema.swap()
    n = max(sums.get("examples", 0.0), 1.0)
    return {"top1": sums["top1"] / n, "top5": sums["top5"] / n, "loss": sums["loss"] / n,
            "examples": sums["examples"]}  # fmt: skip

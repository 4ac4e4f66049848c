"""MirroredStrategy checks over 2 logical CPUs, run by tests/test_distribute.py in a fresh process.

A fresh process because logical devices must be set before TF starts, and because collectives
of earlier MirroredStrategy tests in one process can share instance keys with later ones. Prints
one ``RESULT {json}`` line with every measurement; the test asserts on them.
"""

import contextlib
import dataclasses
import json
import tempfile
import time

import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tests.helpers import tiny_config  # noqa: E402
from tfsd import config_names  # noqa: E402
from tfsd import data as data_lib  # noqa: E402
from tfsd.models import common  # noqa: E402
from tfsd.training import evaluation, loop, run_dir  # noqa: E402
from tfsd.training import step as step_lib  # noqa: E402
from tfsd.training import task as task_lib  # noqa: E402

MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
DEFAULT = tf.distribute.get_strategy()


def task_and_iterator(config, strategy):
    keras.utils.set_random_seed(config.seed)
    task = task_lib.build_task(config, None, strategy)
    return task, iter(loop.train_dataset(task))


def one_step_vs_one_device():
    """One step on a global batch: 2 replicas with sync BN and clipping == one device."""
    c = tiny_config(**{"model.survival_prob": 1.0, "model.sync_bn": "on"})
    c.optimizer.grad_clip_norm = 0.05  # well below the gradient's norm: clipping is active
    c.lr.warmup_epochs = 0.0  # the first step must move the weights (warm-up starts at lr 0)
    c.lr.schedule = "constant"
    ref, ref_it = task_and_iterator(c, DEFAULT)
    before = [v.numpy().copy() for v in ref.model.trainable_variables]
    rep, rep_it = task_and_iterator(c, MIRRORED)
    rep.model.set_weights(ref.model.get_weights())
    step_lib.make_train_loop(ref)(ref_it, tf.constant(1))
    step_lib.make_train_loop(rep)(rep_it, tf.constant(1))
    diffs = {}
    for a, b in zip(ref.model.weights, rep.model.weights):
        diffs[a.path] = float(np.max(np.abs(a.numpy() - b.numpy())))
    moved = [v.numpy() - b for v, b in zip(ref.model.trainable_variables, before)]
    return {
        "max_diff": max(diffs.values()),
        "worst": max(diffs, key=diffs.get),
        "update_norm": float(np.sqrt(sum(np.sum(m.astype(np.float64) ** 2) for m in moved))),
        "max_update": float(max(np.max(np.abs(m)) for m in moved)),
    }


def sync_bn_statistics():
    """Synchronized BN over 2 replicas normalises with the statistics of the full batch."""
    x = np.random.default_rng(0).normal(3.0, 2.0, (8, 4, 4, 3)).astype("float32")
    x[4:] += 5.0  # the replicas' halves differ: per-replica statistics would be far off
    with MIRRORED.scope():
        sync = keras.layers.BatchNormalization(synchronized=True, momentum=0.0)
        sync.build(x.shape)
    plain = keras.layers.BatchNormalization(momentum=0.0)
    plain.build(x.shape)
    ds = MIRRORED.experimental_distribute_dataset(tf.data.Dataset.from_tensors(x))

    @tf.function
    def run(batch):
        return MIRRORED.run(lambda b: sync(b, training=True), args=(batch,))

    out = run(next(iter(ds)))
    got = np.concatenate([v.numpy() for v in MIRRORED.experimental_local_results(out)])
    want = plain(x, training=True).numpy()
    stats = [v.numpy() for v in (sync.moving_mean, sync.moving_variance)]
    ref_stats = [v.numpy() for v in (plain.moving_mean, plain.moving_variance)]
    return {
        "output_diff": float(np.max(np.abs(got - want))),
        "stats_diff": float(max(np.max(np.abs(a - b)) for a, b in zip(stats, ref_stats))),
    }


def per_replica_gates_and_bn_average(steps=4):
    """Batch-mode gates without sync BN: replicas draw their own; BN stats agree after a step.

    The run keeps an EMA, and the first call's trace is where `count_collectives` counts.
    """
    c = tiny_config(ema_decay=0.9, **{"model.survival_prob": 0.5})
    task, it = task_and_iterator(c, MIRRORED)
    loop = step_lib.make_train_loop(task, tf.Variable(False))
    keeps = []  # [step][layer][replica]
    for i in range(steps):
        if i == 0:
            with count_collectives() as counts:
                loop(it, tf.constant(1))
        else:
            loop(it, tf.constant(1))
        keeps.append(
            [[float(v.numpy()) for v in lay.keep_rate.value.values] for lay in task.sd_layers]
        )
    spread = 0.0
    for v in step_lib.bn_moving_stats(task.model):
        a, b = (x.numpy() for x in v.value.values)
        spread = max(spread, float(np.max(np.abs(a - b))))
    differ = sum(k[0] != k[1] for step in keeps for k in step)
    sync = [lay.sync_replicas for lay in task.sd_layers]
    shadows = [[x.numpy() for x in s.value.values] for s in task.ema.shadows]
    counts.update(
        trainable=len(task.model.trainable_variables),
        sd_layers=len(task.sd_layers),
        ema_shadows=len(task.ema.shadows),
        ema_replicas_agree=all(np.array_equal(a, b) for a, b in shadows),
        ema_moved=any(
            not np.array_equal(s.numpy(), v.numpy())
            for s, v in zip(task.ema.shadows, task.ema.sources)
        ),
    )
    return {"gate_pairs_that_differ": differ, "bn_replica_spread": spread, "sync": sync,
            "collectives": counts}  # fmt: skip


def sync_bn_batch_mode_trains(steps=2):
    """sync_bn with batch-mode gates: replicas in lockstep, branches masked, training runs."""
    c = tiny_config(**{"model.survival_prob": 0.5, "model.sync_bn": "on"})
    task, it = task_and_iterator(c, MIRRORED)
    loop = step_lib.make_train_loop(task)
    losses, same = [], True
    for _ in range(steps):
        out = loop(it, tf.constant(1))
        losses.append(float(out["loss"]))
        for lay in task.sd_layers:
            a, b = (float(v.numpy()) for v in lay.keep_rate.value.values)
            same = same and a == b
    return {"losses": losses, "lockstep": same, "sync": [x.sync_replicas for x in task.sd_layers]}


def jit_compiled(name):
    """The XLA-compiled step of a tiny registered model under MirroredStrategy."""
    if name == "efficientnet":
        # test_efficientnet: B0's block types (depthwise, squeeze-excite, swish, top dropout).
        c = config_names.load_config("efficientnet_b0:runlocal")
        c.model.name = "test_efficientnet"
        del c.model.overrides["width"], c.model.overrides["depth"]  # keep the variant's own
        c.model.image_size = 32
        c.model.sync_bn = "off"  # sync BN under XLA on CPU replicas is refused (merge_call)
        c.data.synthetic_train_size = 64
        c.data.synthetic_eval_size = 16
        c.batch_size = 8
    else:
        c = tiny_config()
    c.jit_compile = True
    task, it = task_and_iterator(c, MIRRORED)
    out = step_lib.make_train_loop(task)(it, tf.constant(1))
    return {"loss": float(out["loss"]), "steps": float(out["steps"])}


def eval_split_sizes():
    """Eval with 2 replicas and global batch 16 on 40 / 44 / 48 examples == one-device eval.

    40: the last step gives replica 1 no example (the old loop died there: "Incompatible
    shapes: [4] vs. [0,16,16,3]"); 44: replica 1 gets 4 of 8; 48: exact. The 40 case runs the
    whole loop (train one step, save, final eval); all three then evaluate that checkpoint with
    the loop's eval (`loop.eval_dataset`) and with tfsd.evaluate's one-device pass
    (`evaluation.evaluate_model`, plain batches, no padding), which must agree. The loop gets
    this process's MirroredStrategy (a second one would reuse its collective instance keys).
    """
    out = {}
    c = tiny_config(total_steps=1, steps_per_loop=1, checkpoint_every_steps=1)
    c.distribute.strategy = "mirrored"
    c.data.synthetic_eval_size = 40
    get_strategy = loop.distribute.get_strategy
    loop.distribute.get_strategy = lambda _: MIRRORED
    try:
        with tempfile.TemporaryDirectory() as model_dir:
            final = loop.train_and_evaluate(c, model_dir)
            model = run_dir.restore_run(model_dir)[0]
    finally:
        loop.distribute.get_strategy = get_strategy
    out["loop_40"] = {k: final[k] for k in ("top1", "top5", "loss", "examples")}
    task = task_lib.build_task(c, None, MIRRORED)
    task.model.set_weights(model.get_weights())
    eval_step = step_lib.make_eval_fn(task)
    for n in (40, 44, 48):
        cn = c.copy_and_resolve_references()
        cn.data.synthetic_eval_size = n
        plain = data_lib.build_dataset(cn.data, split="eval", global_batch_size=16, image_size=16)
        one = evaluation.evaluate_model(model, plain, 10)
        sized = dataclasses.replace(task, config=cn)
        eval_ds, steps = loop.eval_dataset(sized)
        two = step_lib.evaluate(sized, eval_ds, eval_step, fixed_steps=steps)
        out[str(n)] = {
            "one": {k: float(one[k]) for k in ("top1", "top5", "loss", "examples")},
            "two": two,
            "steps": steps,
        }
    return out


def replica_dropout():
    """tfsd's ReplicaDropout draws other masks on each replica; Keras' Dropout draws the same."""
    x = np.ones((2, 64), "float32")  # one row per replica
    ds = MIRRORED.experimental_distribute_dataset(tf.data.Dataset.from_tensors(x))
    batch = next(iter(ds))
    masks = {}
    for name, cls in (("tfsd", common.ReplicaDropout), ("keras", keras.layers.Dropout)):
        with MIRRORED.scope():
            layer = cls(0.5, seed=7)

        @tf.function
        def run(b, layer=layer):
            return MIRRORED.run(lambda v: layer(v, training=True), args=(b,))

        got = [v.numpy() != 0 for v in MIRRORED.experimental_local_results(run(batch))]
        masks[name] = {"same": bool(np.array_equal(got[0], got[1])),
                       "kept": [float(m.mean()) for m in got]}  # fmt: skip
    return masks


@contextlib.contextmanager
def count_collectives():
    """Counts the cross-replica reductions and updates made while tracing (a dict, filled).

    Counted where MirroredStrategy routes them (``MirroredExtended._reduce_to`` for
    ``strategy.reduce`` and sync-on-read reads, ``_batch_reduce_to`` for every replica-context
    ``all_reduce``, ``_update`` for every cross-replica variable update;
    ``tensorflow/python/distribute/mirrored_strategy.py``). A train loop's body is traced once:
    these are per-step counts, plus the per-call stop check (local in one process).
    """
    ext, counts = MIRRORED.extended, {"reduce": 0, "update": 0}
    hooks = (("_reduce_to", "reduce"), ("_batch_reduce_to", "reduce"), ("_update", "update"))
    originals = {name: getattr(ext, name) for name, _ in hooks}

    def counting(original, key):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)

        return wrapper

    for name, key in hooks:
        setattr(ext, name, counting(originals[name], key))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(ext, name, original)


if __name__ == "__main__":
    checks = {
        "one_step": one_step_vs_one_device,
        "sync_bn": sync_bn_statistics,
        "gates": per_replica_gates_and_bn_average,
        "sync_bn_batch": sync_bn_batch_mode_trains,
        # One XLA check (the costliest part of the child): EfficientNet has the most block types.
        "jit_efficientnet": lambda: jit_compiled("efficientnet"),
        "eval_sizes": eval_split_sizes,
        "dropout": replica_dropout,
    }
    result, seconds = {}, {}
    for key, check in checks.items():
        t0 = time.perf_counter()
        result[key] = check()
        seconds[key] = round(time.perf_counter() - t0, 2)
    result["seconds"] = seconds  # where the child's time goes (shown when the test fails)
    print("RESULT " + json.dumps(result), flush=True)

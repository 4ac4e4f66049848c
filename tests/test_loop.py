"""The training loop (`tfsd.training.loop.train_and_evaluate`): checkpoints, summaries and
resume, training variants, the XLA step, keep-rate summaries, NaN stop, dropout seed state, and
in fresh processes (e2e) SIGTERM, SIGKILL + exact resume and a 2-replica mirrored resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfsd
from tests.helpers import TRAIN_RUNS_CHILD, apply_changes, latest_step, tiny_config, wait_for
from tfsd import config_names
from tfsd import data as data_lib
from tfsd.training import evaluation as evaluation_lib
from tfsd.training import loop as loop_lib
from tfsd.training import run_dir
from tfsd.training import summaries as summaries_lib
from tfsd.training import task as task_lib

REPO = Path(__file__).resolve().parents[1]


def tiny_efficientnet_config(**changes):
    """efficientnet_b0:runlocal's recipe on the registered ``test_efficientnet`` (B0's blocks,
    width 0.25, one block per stage, top dropout 0.2) at 32 px, with EMA and RandAugment."""
    c = config_names.load_config("efficientnet_b0:runlocal")
    c.model.name = "test_efficientnet"
    del c.model.overrides["width"], c.model.overrides["depth"]  # runlocal's; keep the variant's
    c.model.image_size = 32
    c.data.synthetic_train_size = 128
    c.data.synthetic_eval_size = 16
    c.data.randaugment_magnitude = 5.0
    c.ema_decay = 0.9
    c.batch_size = 8
    c.steps_per_loop = 2
    c.total_steps = 2
    return apply_changes(c, changes)


def _tensor_summaries(log_dir) -> tuple[dict, dict]:
    """``({tag: [(step, array)]}, {tag: plugin name})`` of a TensorBoard log dir, read by
    TensorBoard's own reader (TF2 writes scalars, histograms and images as tensors)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    values = {t: [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(t)] for t in tags}
    return values, {t: acc.SummaryMetadata(t).plugin_data.plugin_name for t in tags}


# -------------------------------------------------------------------------------------------------
# The loop in process.
# -------------------------------------------------------------------------------------------------


def test_train_writes_checkpoints_summaries_and_resumes(tiny_run, tmp_path, monkeypatch):
    """conftest's `tiny_run` is a finished train_and_evaluate run (12 steps, checkpoints at 6
    and 12, a 3-class image folder with about a quarter of its images for eval); a copy resumes."""
    config = run_dir.load_run_config(str(tiny_run.model_dir))
    eval_examples = data_lib.get_dataset_info(config.data).num_eval_examples  # the whole split
    result = tiny_run.final
    assert result["step"] == 12 and 0.0 <= result["top1"] <= 1.0
    assert result["examples"] == eval_examples > 0
    ckpts = tf.train.get_checkpoint_state(str(tiny_run.model_dir / "checkpoints"))
    assert ckpts.model_checkpoint_path.endswith("ckpt-12")
    assert list((tiny_run.model_dir / "train").glob("events.out.tfevents.*"))
    assert list((tiny_run.model_dir / "eval").glob("events.out.tfevents.*"))
    # Running again with a longer total resumes from step 12 rather than starting over.
    model_dir = tmp_path / "run"
    shutil.copytree(tiny_run.model_dir, model_dir)  # tiny_run is read-only
    config.total_steps = 14
    # Autograph rewrites the two loops only (tfsd.training.step.make_train_loop says why): what
    # they and the input pipeline call is plain TF. Recorded where autograph decides to convert a
    # function, cached or not (_convert_actual, tensorflow/python/autograph/impl/api.py).
    from tensorflow.python.autograph.impl import api as autograph_api

    converted = []
    convert = autograph_api._convert_actual

    def record(entity, program_ctx):
        converted.append(getattr(entity, "__qualname__", repr(entity)))
        return convert(entity, program_ctx)

    monkeypatch.setattr(autograph_api, "_convert_actual", record)
    result = loop_lib.train_and_evaluate(config, str(model_dir))
    assert "make_train_loop.<locals>.train_loop" in converted  # the record is live
    loops = {"make_train_loop.<locals>.train_loop", "make_eval_fn.<locals>.eval_loop"}
    # ... and the input pipeline's one-line lambdas (cheap to convert).
    assert all(q.endswith(".<lambda>") for q in set(converted) - loops), converted
    assert result["step"] == 14
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 14


@pytest.mark.parametrize(
    "changes",
    [
        {"precision": "float16"},
        {"precision": "bfloat16", "ema_decay": 0.9},
        {"jit_compile": True},
        {"model.sd_mode": "sample", "model.sd_scale_at": "train", "label_smoothing": 0.3},
        {"optimizer.name": "rmsprop", "lr.warmup_epochs": 0.5, "lr.schedule": "exponential"},
        {"optimizer.name": "adamw", "lr.base": 1e-3},
    ],
    ids=["float16", "bfloat16_ema", "xla", "sample_smoothing", "rmsprop", "adamw"],
)
def test_train_variants_run_and_stay_finite(tmp_path, changes):
    result = loop_lib.train_and_evaluate(tiny_config(total_steps=2, **changes), str(tmp_path))
    assert result["step"] == 2 and np.isfinite(result["loss"])
    if changes.get("label_smoothing"):
        _assert_eval_loss_is_plain_cross_entropy(result, tmp_path, changes["label_smoothing"])


def _assert_eval_loss_is_plain_cross_entropy(result, model_dir, smoothing):
    """The loop's eval loss is the test loss: cross-entropy without the training's label
    smoothing, equal to ``tfsd.evaluate``'s (issue 19, defect 11: the README says they agree).
    Reference: the restored model's logits over the eval split, cross-entropy in NumPy."""
    config = run_dir.load_run_config(str(model_dir))
    model = tfsd.restore(str(model_dir), weights="raw")  # this run keeps no EMA
    ds = data_lib.build_dataset(config.data, split="eval", global_batch_size=16,
                                image_size=config.model.image_size)  # fmt: skip
    plain, smoothed = [], []
    for images, labels in ds:
        logits = model(images, training=False).numpy().astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        ce = -logp[np.arange(len(logp)), labels.numpy()]
        plain += list(ce)
        smoothed += list((1 - smoothing) * ce - smoothing * logp.mean(-1))
    assert result["examples"] == len(plain)
    assert result["loss"] == pytest.approx(np.mean(plain), rel=1e-5)
    # The smoothed loss is told apart at that tolerance (after 2 steps the logits are nearly
    # uniform, where the two nearly agree: 2e-4 relative measured with smoothing 0.1).
    assert abs(np.mean(smoothed) - np.mean(plain)) > 1e-4 * np.mean(plain)
    report = evaluation_lib.evaluate_run(str(model_dir), batch_size=7)
    assert report["loss"] == pytest.approx(result["loss"], rel=1e-5)


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"batch_size": 512}, ValueError, "batch_size 512 exceeds the 256 training examples"),
        ({"model.overrides.rule": "steep"}, ValueError, "steep"),
        # The eval split is checked too: this failed with KeyError 'top1' after training.
        ({"data.eval_drop_remainder": True}, ValueError, "drops every eval example"),
        ({"init.source": "/nonexistent/w.h5"}, FileNotFoundError, "does not exist"),
    ],
    ids=["batch_over_data", "bad_rule", "eval_emptied", "missing_init"],
)
def test_a_failed_start_writes_nothing_to_model_dir(tmp_path, changes, error, match):
    """Caught (issue 19, defect 9): config.json was written before the data, the model and the
    eval split were checked, so after ``batch_size=512`` failed, rerunning with 16 failed with
    ``CheckpointError ... batch_size: saved 512 → now 16`` though there was no checkpoint."""
    model_dir = tmp_path / "run"
    config = tiny_config(**{"data.synthetic_eval_size": 8, **changes})  # 8 < one batch of 16
    with pytest.raises(error, match=match):
        loop_lib.train_and_evaluate(config, str(model_dir))
    assert not model_dir.exists()
    # The corrected command is not held to the failed settings.
    run_dir.check_or_write_config(tiny_config(), str(model_dir), write=False)


@pytest.fixture(scope="module")
def efficientnet_xla_run(tmp_path_factory):
    """A 2-step XLA run of tiny_efficientnet_config: ``(result, model_dir)``, shared by the two
    tests below (the XLA compile of the step takes most of a minute on 2 cores)."""
    model_dir = tmp_path_factory.mktemp("efficientnet_xla")
    result = loop_lib.train_and_evaluate(tiny_efficientnet_config(jit_compile=True), str(model_dir))
    return result, model_dir


def test_efficientnet_xla_step_runs_on_the_default_strategy(efficientnet_xla_run):
    """The XLA-compiled step over EfficientNet's block types (depthwise conv, squeeze-excite,
    swish, top dropout), with EMA and RandAugment: the tiny registered variant."""
    result, _ = efficientnet_xla_run
    assert result["step"] == 2 and np.isfinite(result["loss"])


def test_per_block_keep_rate_summaries_match_the_survival_schedule(tmp_path):
    """TensorBoard gets each block's realised keep rate per summary interval (scalars, a
    histogram over blocks, an image against p_l); over the run each block's rate lies within
    4 binomial sigma of its survival probability for the number of gate draws."""
    steps, loop = 16, 4
    c = tiny_config(total_steps=steps, steps_per_loop=loop, checkpoint_every_steps=steps,
                    **{"model.sd_mode": "sample", "model.survival_prob": 0.5})  # fmt: skip
    loop_lib.train_and_evaluate(c, str(tmp_path))
    values, plugins = _tensor_summaries(tmp_path / "train")
    task = task_lib.build_task(c, None)
    names = [lay.name for lay in task.sd_layers]
    survival = np.array([lay.survival_prob for lay in task.sd_layers])
    # test_resnet: one residual block per stage, each a stochastic-depth block (ResNet-8, n = 1).
    blocks = 3
    assert len(names) == blocks and survival[-1] == pytest.approx(0.5)
    assert plugins["keep_rates"] == "histograms" and plugins["keep_rate_vs_survival"] == "images"
    # One value per block per interval; the blocks' rates sum to the effective depth.
    rates = np.array([[float(v) for _, v in values[f"keep_rate/{n}"]] for n in names])
    assert rates.shape == (blocks, steps // loop)
    active = [float(v) for _, v in values["active_blocks"]]
    np.testing.assert_allclose(rates.sum(axis=0), active, rtol=1e-5)
    # Sample mode, batch 16: each interval's rate is a count of kept examples over 16 * 4.
    np.testing.assert_allclose(rates * 16 * loop, np.round(rates * 16 * loop), atol=1e-3)
    # Over the run: steps * 16 draws per block (summaries.keep_rate_draws), rate ~ Binomial / n.
    draws = summaries_lib.keep_rate_draws(task, steps)
    np.testing.assert_array_equal(draws, [steps * 16] * blocks)
    sigma = np.sqrt(survival * (1 - survival) / draws)
    deviation = np.abs(rates.mean(axis=1) - survival)
    assert np.all(deviation <= 4 * sigma), (rates.mean(axis=1), survival, sigma)
    # The histogram counts the blocks; its buckets ([left, right, count]) hold their rates.
    histogram = values["keep_rates"][-1][1]
    assert histogram.sum(axis=0)[2] == pytest.approx(blocks)
    assert histogram[0, 0] == pytest.approx(rates[:, -1].min())
    # The image: a PNG of the plot (width, height, encoded bytes), not a blank canvas.
    width, height, png = values["keep_rate_vs_survival"][-1][1]
    image = tf.io.decode_png(png)
    assert image.shape[:2] == (int(height), int(width)) and image.shape[0] > 100
    assert int(tf.reduce_max(image)) > int(tf.reduce_min(image))


def test_dropout_seed_state_is_checkpointed(efficientnet_xla_run):
    """Caught: Dropout's SeedGenerator state was not in the checkpoint, so a resumed run
    replayed the first steps' dropout masks. (test_efficientnet has top dropout 0.2.)"""
    _, model_dir = efficientnet_xla_run
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    keys = [k for k in reader.get_variable_to_shape_map() if k.startswith("rng/")]
    assert keys
    assert any(np.any(reader.get_tensor(k) != reader.get_tensor(k) * 0) for k in keys)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    """Step 1 runs at lr 0 (the warm-up's first step), so at least ckpt-1 is good; from step 2
    lr ~1e12 blows the weights up. (The old version began at lr 1e12 and checked the
    checkpoints only ``if`` one had been written.)"""
    c = tiny_config(total_steps=40, steps_per_loop=1, checkpoint_every_steps=1)
    c.lr.base = 1e12
    c.lr.schedule = "constant"
    c.lr.warmup_epochs = 2 / 16  # 2 steps (256 examples / batch 16): lr 0, then 5e11
    with pytest.raises(FloatingPointError, match="last good checkpoint") as raised:
        loop_lib.train_and_evaluate(c, str(tmp_path))
    state = tf.train.get_checkpoint_state(str(tmp_path / "checkpoints"))
    assert state is not None and state.model_checkpoint_path in str(raised.value)
    # Every checkpoint that was written holds finite weights.
    for path in state.all_model_checkpoint_paths:
        reader = tf.train.load_checkpoint(path)
        dtypes = reader.get_variable_to_dtype_map()
        keys = [k for k in dtypes if k.startswith("model/") and dtypes[k].is_floating]
        assert keys
        for key in keys:
            assert np.all(np.isfinite(reader.get_tensor(key))), key


# -------------------------------------------------------------------------------------------------
# Fresh processes: SIGTERM, SIGKILL and exact resume, a mirrored resume.
# -------------------------------------------------------------------------------------------------


def _cli(args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tfsd.train", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )  # fmt: skip


def _tiny_flags(model_dir, *extra):
    """tests.helpers.tiny_config's model and data as flags (test_resnet at 16 px, a 32-example
    eval split), with deterministic ops."""
    return [
        "--config=cifar10_resnet110:runlocal",
        f"--model_dir={model_dir}",
        "--config.model.name=test_resnet",
        "--config.model.image_size=16",
        "--config.data.synthetic_train_size=256",
        "--config.data.synthetic_eval_size=32",
        "--config.batch_size=16",
        "--config.deterministic=True",
        *extra,
    ]


# tiny_efficientnet_config as flags (runlocal's depth override set back to the variant's 0.1).
_EFFICIENTNET_FLAGS = [
    "--config=efficientnet_b0:runlocal",
    "--config.model.name=test_efficientnet",
    "--config.model.overrides.depth=0.1",
    "--config.model.image_size=32",
    "--config.data.synthetic_train_size=128",
    "--config.data.synthetic_eval_size=16",
    "--config.data.randaugment_magnitude=5.0",
    "--config.ema_decay=0.9",
    "--config.batch_size=8",
]


@pytest.mark.e2e
def test_sigterm_inside_a_long_host_loop_saves_and_exits_within_steps(tmp_path):
    """Caught: SIGTERM was checked only between host loops; with steps_per_loop=100000 the run
    would have trained 100000 steps (far past a preemption grace period) before stopping."""
    proc = _cli(_tiny_flags(tmp_path, "--config.total_steps=100000",
                            "--config.checkpoint_every_steps=100000",
                            "--config.steps_per_loop=100000"))  # fmt: skip
    try:
        assert wait_for(lambda: list((tmp_path / "train").glob("events.*")), proc, 300)
        time.sleep(5.0)  # usually some steps in (tracing takes a few seconds)
        proc.send_signal(signal.SIGTERM)
        t0 = time.time()
        out, _ = proc.communicate(timeout=120)
        seconds = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
    step = latest_step(str(tmp_path))
    assert step is not None and 0 <= step < 100000
    assert "checkpoint saved" in out and seconds < 120


@pytest.mark.e2e
def test_exact_resume_after_sigkill_is_bit_identical(tmp_path):
    """Caught: top dropout's SeedGenerator state was not checkpointed (and the data iterator, not
    (seed, step), carried the stream), so the resumed run differed.

    The killed run is a ``python -m tfsd.train`` process; a second fresh process runs the
    uninterrupted reference (first, from the same fresh-process state as the killed run) and then
    resumes the killed run, both to the same step.

    The tiny registered test_efficientnet (per-example stochastic depth, top dropout,
    squeeze-excite blocks); the config adds EMA and RandAugment (the random state this is about).
    The same SIGKILL-and-resume of the tiny test_resnet (batch-wise stochastic depth), asserted
    the same way, is tests/test_gcs_cli.py::test_every_command_on_gcs's, on gs:// (it ran here
    too, on a local disk, until 2026-12-05: 25 s of CI for no check of its own).
    """
    n = 4
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    flags = ["--config.steps_per_loop=1", f"--config.checkpoint_every_steps={n}"]

    def model_flags(model_dir, *extra):
        return [*_EFFICIENTNET_FLAGS, f"--model_dir={model_dir}", "--config.deterministic=True",
                *extra]  # fmt: skip

    proc = _cli(model_flags(killed, "--config.total_steps=100000", *flags))
    assert wait_for(lambda: latest_step(str(killed)) is not None, proc, 300)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    k = latest_step(str(killed))
    assert k is not None and k % n == 0
    target = k + n
    runs = [model_flags(d, f"--config.total_steps={target}", *flags) for d in (straight, killed)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_RUNS_CHILD, json.dumps(runs)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Resumed from {killed}" in proc.stderr  # the second run continued the killed one
    a = tf.train.load_checkpoint(str(killed / "checkpoints" / f"ckpt-{target}"))
    b = tf.train.load_checkpoint(str(straight / "checkpoints" / f"ckpt-{target}"))
    keys = [k for k in a.get_variable_to_shape_map() if k.split("/")[0] in
            ("model", "optimizer", "ema", "rng")]  # fmt: skip
    assert len(keys) > 20
    for key in keys:
        np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key), err_msg=key)


# Runs `train_and_evaluate` once per (model_dir, total_steps) of the JSON list argv[1], in one
# fresh process with 2 logical CPUs; prints one ``RESULT [json, ...]`` line.
_MIRRORED_CHILD = """
import json, sys
import tensorflow as tf
from absl import logging
logging.set_verbosity("info")
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from tests.helpers import tiny_config
from tfsd.training import loop, task as task_lib
results = []
for model_dir, total_steps in json.loads(sys.argv[1]):
    c = tiny_config(total_steps=total_steps, checkpoint_every_steps=2, deterministic=True,
                    **{"distribute.strategy": "mirrored", "optimizer.name": "adamw",
                       "lr.base": 1e-3, "data.randaugment_magnitude": 5.0})
    result = loop.train_and_evaluate(c, model_dir)
    task = task_lib.build_task(c, None)
    sync = [layer.sync_replicas for layer in task.sd_layers]
    replicas = task.strategy.num_replicas_in_sync
    results.append(dict(result, replicas=replicas, sync=sync))
print("RESULT " + json.dumps(results))
"""


@pytest.mark.e2e
def test_mirrored_two_replicas_resume_exactly_including_the_data_stream(tmp_path):
    """Caught: MirroredStrategy's iterator could not be checkpointed, so a resumed mirrored run
    restarted its data stream (and differed from an uninterrupted one)."""

    # Fresh processes: MirroredStrategy collectives of earlier tests in this process would share
    # instance keys with this run's (a CollectiveReduceV2 shape mismatch, seen in the full suite).
    def run(*runs):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
        proc = subprocess.run(
            [sys.executable, "-c", _MIRRORED_CHILD, json.dumps([[str(d), n] for d, n in runs])],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
        return json.loads(line[len("RESULT ") :]), proc.stderr

    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    # The first 2 steps in a fresh process; a second one runs the uninterrupted reference (first,
    # from the same fresh-process state) and then resumes the first run, both to step 4, as
    # TRAIN_RUNS_CHILD does for the SIGKILL test. Those two runs each build their own
    # MirroredStrategy in one process, over the same model and shapes: checked to run clean (no
    # collective error, the digests below equal), unlike after other tests' collectives.
    [result], _ = run((resumed, 2))
    assert result["replicas"] == 2 and result["step"] == 2 and np.isfinite(result["loss"])
    # Plain BatchNorm: gates are drawn per replica (no cross-replica op in the branches).
    assert result["sync"] and not any(result["sync"])
    assert result["examples"] == 64  # 4 eval batches of 16 split over the two replicas
    (reference, again), log = run((straight, 4), (resumed, 4))
    assert again["step"] == 4 and f"Resumed from {resumed}" in log
    assert again["weights_digest"] == reference["weights_digest"]
    # Per-block keep rates under the strategy: batch mode, each replica draws its own gate per
    # step, so an interval's rate (mean over replicas, 2 steps) is a count over 2 * 2 draws.
    values, _ = _tensor_summaries(straight / "train")
    blocks = sorted(t for t in values if t.startswith("keep_rate/"))
    # test_resnet (tiny_config): 3 stochastic-depth blocks, one per stage.
    assert len(blocks) == 3 and "keep_rates" in values and "keep_rate_vs_survival" in values
    rates = np.array([[float(v) for _, v in values[t]] for t in blocks])
    assert rates.shape == (3, 2) and rates.min() >= 0.0 and rates.max() <= 1.0
    np.testing.assert_allclose(rates * 4, np.round(rates * 4), atol=1e-6)
    active = [float(v) for _, v in values["active_blocks"]]
    np.testing.assert_allclose(rates.sum(axis=0), active, rtol=1e-6)
    a = tf.train.load_checkpoint(str(resumed / "checkpoints" / "ckpt-4"))
    b = tf.train.load_checkpoint(str(straight / "checkpoints" / "ckpt-4"))
    keys = [k for k in a.get_variable_to_shape_map() if k.split("/")[0] in ("model", "optimizer")]
    assert len(keys) > 20
    for key in keys:
        np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key), err_msg=key)

"""Tests of the training CLI and loop: configs, overrides, resume, NaN, signals, precisions."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from tests.helpers import apply_changes, run_cli, tiny_config
from tfsd import config_lib, config_names, models
from tfsd import data as data_lib
from tfsd import layers as sd_layers
from tfsd import train as train_cmd
from tfsd.training import loop as loop_lib
from tfsd.training import optim, run_dir
from tfsd.training import step as step_lib
from tfsd.training import summaries as summaries_lib
from tfsd.training import task as task_lib

REPO = Path(__file__).resolve().parents[1]


def _cli(args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tfsd.train", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )  # fmt: skip


def _tiny_flags(model_dir, *extra):
    return [
        "--config=cifar10_resnet110:runlocal",
        f"--model_dir={model_dir}",
        "--config.model.name=cifar_resnet20",
        "--config.model.overrides.width=0.25",
        "--config.model.image_size=16",
        "--config.data.synthetic_train_size=256",
        "--config.data.synthetic_eval_size=32",
        "--config.batch_size=16",
        "--config.deterministic=True",
        *extra,
    ]


# -------------------------------------------------------------------------------------------------
# Config resolution and overrides.
# -------------------------------------------------------------------------------------------------


def test_every_config_resolves_and_validates():
    names = config_names.available_configs()
    expected = {f"efficientnet_b{i}" for i in range(8)} | {
        "efficientnet_lite0", "resnet50", "resnet101", "resnet152",
        "cifar10_resnet110", "cifar100_resnet110", "svhn_resnet152",
    }  # fmt: skip
    assert expected <= set(names)
    for name in names:
        for spec in (name, f"{name}:runlocal"):
            c = config_names.load_config(spec)
            config_lib.validate(c)
            assert c.model.name
        assert config_names.load_config(f"{name}:runlocal").data.name == "synthetic"
    path = config_names.resolve_config_path("efficientnet_b0:runlocal")
    assert path.endswith("configs/efficientnet.py:b0,runlocal")  # the family file (see below)


def test_unknown_config_names_close_matches():
    with pytest.raises(ValueError, match="cifar10_resnet110"):
        config_names.resolve_config_path("cifar10_resnet11")
    with pytest.raises(ValueError, match="runlocal"):
        config_names.load_config("efficientnet_b0:fast")


# Native resolution of every EfficientNet variant: B0-B7 from Tan & Le 2019 (Table 1 scaling),
# Lite0-4 from the TF EfficientNet-Lite reference (efficientnet_lite_builder.py). Written out here,
# independently of the model registry the configs read them from.
EFFICIENTNET_RESOLUTIONS = {
    "b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600,
    "lite0": 224, "lite1": 240, "lite2": 260, "lite3": 280, "lite4": 300,
}  # fmt: skip


def test_available_configs_are_the_files_and_the_efficientnet_family_variants():
    """Exactly these names: a family file lists its variants, other files their own name.

    Caught while writing it: absl's config loader reuses one module object for every file, so
    ``VARIANTS`` of configs/efficientnet.py leaked into the files loaded after it and
    ``resnet50_b0`` … appeared as configs.
    """
    files = {"cifar10_resnet110", "cifar100_resnet110", "svhn_resnet152", "resnet50",
             "resnet101", "resnet152", "finetune_efficientnet_b0"}  # fmt: skip
    family = {f"efficientnet_{v}" for v in EFFICIENTNET_RESOLUTIONS}
    assert set(config_names.available_configs()) == files | family


@pytest.mark.parametrize(
    "model_name", [n for n in models.list_models() if n.startswith("efficientnet_")]
)
def test_every_efficientnet_variant_resolves_by_name(model_name):
    """Every registry variant is a config by its name, through the one family file."""
    variant = model_name.removeprefix("efficientnet_")
    c = config_names.load_config(model_name)
    assert c.model.name == model_name
    assert c.model.image_size == EFFICIENTNET_RESOLUTIONS[variant]
    assert c.model.image_size == models.get_model_info(model_name).input_size[0]
    assert (c.model.survival_prob, c.model.sd_mode, c.model.sd_scale_at) == (0.8, "sample", "train")
    assert c.data.name == "imagenet2012" and c.optimizer.name == "rmsprop"
    # The family file's own spelling gives the same config.
    assert config_names.load_config(f"efficientnet:{variant}").to_dict() == c.to_dict()
    local = config_names.load_config(f"{model_name}:runlocal")
    assert local.to_dict() == config_names.load_config(f"efficientnet:{variant},runlocal").to_dict()
    assert (local.model.name, local.model.image_size, local.data.name) == (
        model_name, 32, "synthetic"
    )  # fmt: skip
    assert config_names.resolve_config_path(f"{model_name}:runlocal").endswith(
        f"configs/efficientnet.py:{variant},runlocal"
    )


def test_bad_efficientnet_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"no variant 'b9'.*efficientnet_b0.*efficientnet_lite4"):
        config_names.resolve_config_path("efficientnet_b9:runlocal")
    with pytest.raises(ValueError, match=r"variant 'b9'.*Did you mean.*b0, b1.*lite4"):
        config_names.load_config("efficientnet:b9")
    with pytest.raises(ValueError, match=r"variant ''.*b0.*lite4"):
        config_names.load_config("efficientnet")  # the family needs its variant
    with pytest.raises(ValueError, match=r"'fast'.*runlocal"):
        config_names.load_config("efficientnet:lite2,fast")


def test_published_recipes():
    b0 = config_names.load_config("efficientnet_b0")
    assert (b0.optimizer.name, b0.optimizer.rho, b0.optimizer.momentum) == ("rmsprop", 0.9, 0.9)
    assert b0.optimizer.epsilon == 1e-3 and b0.optimizer.weight_decay == 1e-5
    assert b0.lr.base == 0.016 and b0.lr.scale_by_batch and b0.lr.warmup_epochs == 5
    assert (b0.lr.decay_rate, b0.lr.decay_epochs) == (0.97, 2.4)
    assert b0.label_smoothing == 0.1 and b0.ema_decay == 0.9999 and b0.num_epochs == 350
    assert (b0.model.survival_prob, b0.model.sd_mode) == (0.8, "sample")
    c10 = config_names.load_config("cifar10_resnet110")
    assert c10.optimizer.nesterov and c10.lr.base == 0.1 and c10.batch_size == 128
    assert tuple(c10.lr.step_boundaries) == (0.5, 0.75) and c10.num_epochs == 500
    assert (c10.model.survival_prob, c10.model.sd_mode) == (0.5, "batch")
    assert c10.optimizer.weight_decay == 1e-4


def test_lr_schedules():
    step = optim.WarmupSchedule(0.1, 0, 100, "step", boundaries=(50, 75))
    np.testing.assert_allclose([float(step(s)) for s in (0, 49, 50, 75, 99)],
                               [0.1, 0.1, 0.01, 0.001, 0.001], rtol=1e-5)  # fmt: skip
    warm = optim.WarmupSchedule(0.2, 10, 100, "exponential", decay_rate=0.5, decay_steps=20)
    np.testing.assert_allclose([float(warm(s)) for s in (0, 5, 10, 19, 20, 40)],
                               [0.0, 0.1, 0.2, 0.2, 0.1, 0.05], rtol=1e-5)  # fmt: skip
    cos = optim.WarmupSchedule(1.0, 0, 100, "cosine")
    np.testing.assert_allclose([float(cos(s)) for s in (0, 50, 100)], [1.0, 0.5, 0.0], atol=1e-6)


def test_cli_override_typo_fails_with_close_match(tmp_path):
    # In-process: flags are defined when the command runs (tfsd.cli), under flagsaver.
    code, out, err = run_cli(
        train_cmd, "--config=cifar10_resnet110:runlocal", f"--model_dir={tmp_path}",
        "--config.lr.bse=0.5",
    )  # fmt: skip
    assert code != 0
    assert 'Did you mean "base"' in out + err
    code, out, err = run_cli(train_cmd, "--config=cifar10_resnet11", f"--model_dir={tmp_path}")
    assert code != 0 and "cifar10_resnet110" in out + err
    assert list(tmp_path.iterdir()) == []  # nothing written for a bad command line


def test_commands_define_their_flags_only_when_they_run_and_again_in_one_process(tmp_path):
    assert "model_dir" not in flags.FLAGS or flags.FLAGS["model_dir"].value is None
    for _ in range(2):  # a second run in one process redefines the flags (no duplicate error)
        code, _, err = run_cli(train_cmd, f"--model_dir={tmp_path}")
        assert code == 1 and "--config and --model_dir are required" in err
    code, _, err = run_cli(train_cmd, "--config=cifar10_resnet110", "stray")
    assert code == 1 and "Unexpected arguments: ['stray']" in err


def test_resume_with_different_config_fails_with_diff(tmp_path):
    c = tiny_config()
    run_dir.check_or_write_config(c, str(tmp_path))
    c.total_steps = 99  # run-length fields may change
    c.eval_every_steps = 7
    run_dir.check_or_write_config(c, str(tmp_path))
    c.lr.base = 0.5
    c.model.survival_prob = 0.9
    with pytest.raises(run_dir.CheckpointError, match=r"lr\.base.*\n.*model\.survival_prob"):
        run_dir.check_or_write_config(c, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["lr"]["base"] != 0.5  # the saved config was not overwritten


@pytest.mark.parametrize("name", sorted(config_names.available_configs()))
def test_every_config_builds_model_and_pipeline_under_runlocal(name):
    c = config_names.load_config(f"{name}:runlocal")
    c.data.synthetic_train_size = 64
    c.data.synthetic_eval_size = 16
    c.batch_size = 8
    task = task_lib.build_task(c, None)
    ds = data_lib.build_dataset(c.data, split="train", global_batch_size=8,
                                image_size=c.model.image_size, seed=0)  # fmt: skip
    images, labels = next(iter(ds))
    assert images.shape == (8, c.model.image_size, c.model.image_size, 3)
    logits = task.model(images, training=False)
    assert logits.shape == (8, 10) and logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))
    assert task.model.name == c.model.name


# -------------------------------------------------------------------------------------------------
# The loop in process.
# -------------------------------------------------------------------------------------------------


def test_train_writes_checkpoints_summaries_and_resumes(tmp_path):
    result = loop_lib.train_and_evaluate(tiny_config(), str(tmp_path))
    assert result["step"] == 4 and 0.0 <= result["top1"] <= 1.0 and result["examples"] == 64
    ckpts = tf.train.get_checkpoint_state(str(tmp_path / "checkpoints"))
    assert ckpts.model_checkpoint_path.endswith("ckpt-4")
    assert list((tmp_path / "train").glob("events.out.tfevents.*"))
    assert list((tmp_path / "eval").glob("events.out.tfevents.*"))
    # Running again with a longer total resumes from step 4 rather than starting over.
    result = loop_lib.train_and_evaluate(tiny_config(total_steps=6), str(tmp_path))
    assert result["step"] == 6
    reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 6


@pytest.mark.parametrize(
    "changes",
    [
        {"precision": "float16"},
        {"precision": "bfloat16", "ema_decay": 0.9},
        {"jit_compile": True},
        {"model.sd_mode": "sample", "model.sd_scale_at": "train", "label_smoothing": 0.1},
        {"optimizer.name": "rmsprop", "lr.warmup_epochs": 0.5, "lr.schedule": "exponential"},
        {"optimizer.name": "adamw", "lr.base": 1e-3},
    ],
    ids=["float16", "bfloat16_ema", "xla", "sample_smoothing", "rmsprop", "adamw"],
)
def test_train_variants_run_and_stay_finite(tmp_path, changes):
    result = loop_lib.train_and_evaluate(tiny_config(total_steps=2, **changes), str(tmp_path))
    assert result["step"] == 2 and np.isfinite(result["loss"])


def tiny_efficientnet_config(**changes):
    """efficientnet_b0:runlocal at width/depth 0.1, 32 px, with top dropout, EMA, RandAugment."""
    c = config_names.load_config("efficientnet_b0:runlocal")
    c.model.overrides.width = 0.1
    c.model.overrides.depth = 0.1
    c.model.image_size = 32
    c.data.synthetic_train_size = 128
    c.data.synthetic_eval_size = 16
    c.data.randaugment_magnitude = 5.0
    c.ema_decay = 0.9
    c.batch_size = 8
    c.steps_per_loop = 2
    c.total_steps = 2
    return apply_changes(c, changes)


def test_efficientnet_xla_step_runs_on_the_default_strategy(tmp_path):
    c = tiny_efficientnet_config(jit_compile=True)
    result = loop_lib.train_and_evaluate(c, str(tmp_path))
    assert result["step"] == 2 and np.isfinite(result["loss"])


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
    assert kernels > 10


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


def _tensor_summaries(log_dir) -> tuple[dict, dict]:
    """``({tag: [(step, array)]}, {tag: plugin name})`` of a TensorBoard log dir, read by
    TensorBoard's own reader (TF2 writes scalars, histograms and images as tensors)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    values = {t: [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(t)] for t in tags}
    return values, {t: acc.SummaryMetadata(t).plugin_data.plugin_name for t in tags}


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
    assert len(names) == 9 and survival[-1] == pytest.approx(0.5)
    assert plugins["keep_rates"] == "histograms" and plugins["keep_rate_vs_survival"] == "images"
    # One value per block per interval; the blocks' rates sum to the effective depth.
    rates = np.array([[float(v) for _, v in values[f"keep_rate/{n}"]] for n in names])
    assert rates.shape == (9, steps // loop)
    active = [float(v) for _, v in values["active_blocks"]]
    np.testing.assert_allclose(rates.sum(axis=0), active, rtol=1e-5)
    # Sample mode, batch 16: each interval's rate is a count of kept examples over 16 * 4.
    np.testing.assert_allclose(rates * 16 * loop, np.round(rates * 16 * loop), atol=1e-3)
    # Over the run: steps * 16 draws per block (summaries.keep_rate_draws), rate ~ Binomial / n.
    draws = summaries_lib.keep_rate_draws(task, steps)
    np.testing.assert_array_equal(draws, [steps * 16] * 9)
    sigma = np.sqrt(survival * (1 - survival) / draws)
    deviation = np.abs(rates.mean(axis=1) - survival)
    assert np.all(deviation <= 4 * sigma), (rates.mean(axis=1), survival, sigma)
    # The histogram counts the 9 blocks; its buckets ([left, right, count]) hold their rates.
    histogram = values["keep_rates"][-1][1]
    assert histogram.sum(axis=0)[2] == pytest.approx(9)
    assert histogram[0, 0] == pytest.approx(rates[:, -1].min())
    # The image: a PNG of the plot (width, height, encoded bytes), not a blank canvas.
    width, height, png = values["keep_rate_vs_survival"][-1][1]
    image = tf.io.decode_png(png)
    assert image.shape[:2] == (int(height), int(width)) and image.shape[0] > 100
    assert int(tf.reduce_max(image)) > int(tf.reduce_min(image))


def test_head_smaller_than_the_dataset_is_an_error(tmp_path):
    """Caught: model.num_classes below the dataset's classes made tf.one_hot zero the labels
    of the other classes, silently."""
    with pytest.raises(ValueError, match="smaller than the dataset's 10 classes"):
        loop_lib.train_and_evaluate(tiny_config(**{"model.num_classes": 5}), str(tmp_path))
    assert task_lib.check_num_classes(tiny_config(**{"model.num_classes": 12}), 10) == 12
    assert task_lib.check_num_classes(tiny_config(), 10) == 10


def test_dropout_seed_state_is_checkpointed(tmp_path):
    """Caught: Dropout's SeedGenerator state was not in the checkpoint, so a resumed run
    replayed the first steps' dropout masks."""
    c = tiny_efficientnet_config()
    loop_lib.train_and_evaluate(c, str(tmp_path))
    reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints"))
    keys = [k for k in reader.get_variable_to_shape_map() if k.startswith("rng/")]
    assert keys
    assert any(np.any(reader.get_tensor(k) != reader.get_tensor(k) * 0) for k in keys)


def test_ema_is_used_for_eval_and_weights_restored(tmp_path):
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


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    c = tiny_config(total_steps=40, steps_per_loop=1, checkpoint_every_steps=1)
    c.lr.base = 1e12
    c.lr.schedule = "constant"
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        loop_lib.train_and_evaluate(c, str(tmp_path))
    state = tf.train.get_checkpoint_state(str(tmp_path / "checkpoints"))
    if state is not None:  # every checkpoint that was written holds finite weights
        reader = tf.train.load_checkpoint(state.model_checkpoint_path)
        dtypes = reader.get_variable_to_dtype_map()
        keys = [k for k in dtypes if k.startswith("model/") and dtypes[k].is_floating]
        assert keys
        for key in keys:
            assert np.all(np.isfinite(reader.get_tensor(key))), key


def test_corrupt_checkpoint_gives_clear_error_and_deletes_nothing(tmp_path):
    loop_lib.train_and_evaluate(tiny_config(), str(tmp_path))
    ckpt_dir = tmp_path / "checkpoints"
    data_file = next(ckpt_dir.glob("ckpt-4.data-*"))
    data_file.write_bytes(b"garbage" * 10)
    files = sorted(p.name for p in ckpt_dir.iterdir())
    with pytest.raises(run_dir.CheckpointError, match="Nothing was deleted"):
        loop_lib.train_and_evaluate(tiny_config(total_steps=8), str(tmp_path))
    assert sorted(p.name for p in ckpt_dir.iterdir()) == files


def test_incompatible_checkpoint_gives_clear_error(tmp_path):
    loop_lib.train_and_evaluate(tiny_config(), str(tmp_path))
    (tmp_path / "config.json").unlink()  # pretend the directory came from elsewhere
    with pytest.raises(run_dir.CheckpointError, match="different model"):
        loop_lib.train_and_evaluate(tiny_config(**{"model.overrides.width": 0.5}), str(tmp_path))


# -------------------------------------------------------------------------------------------------
# Processes: SIGTERM, SIGKILL and exact resume.
# -------------------------------------------------------------------------------------------------


def _wait_for(predicate, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.05)
    return False


def _latest_step(model_dir):
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
    return None if state is None else int(state.model_checkpoint_path.rsplit("-", 1)[1])


@pytest.mark.slow
def test_sigterm_inside_a_long_host_loop_saves_and_exits_within_steps(tmp_path):
    """Caught: SIGTERM was checked only between host loops; with steps_per_loop=100000 the run
    would have trained 100000 steps (far past a preemption grace period) before stopping."""
    proc = _cli(_tiny_flags(tmp_path, "--config.total_steps=100000",
                            "--config.checkpoint_every_steps=100000",
                            "--config.steps_per_loop=100000"))  # fmt: skip
    try:
        assert _wait_for(lambda: list((tmp_path / "train").glob("events.*")), proc, 300)
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
    step = _latest_step(str(tmp_path))
    assert step is not None and 0 <= step < 100000
    assert "checkpoint saved" in out and seconds < 120


_EFFICIENTNET_FLAGS = [
    "--config=efficientnet_b0:runlocal",
    "--config.model.overrides.width=0.1",
    "--config.model.overrides.depth=0.1",
    "--config.model.image_size=32",
    "--config.data.synthetic_train_size=128",
    "--config.data.synthetic_eval_size=16",
    "--config.data.randaugment_magnitude=5.0",
    "--config.ema_decay=0.9",
    "--config.batch_size=8",
]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet20", "efficientnet"])
def test_exact_resume_after_sigkill_is_bit_identical(tmp_path, model):
    """EfficientNet case caught: top dropout's SeedGenerator state was not checkpointed (and
    the data iterator, not (seed, step), carried the stream), so the resumed run differed."""
    n = 4
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    flags = ["--config.steps_per_loop=1", f"--config.checkpoint_every_steps={n}"]

    def model_flags(model_dir, *extra):
        if model == "resnet20":
            return _tiny_flags(model_dir, *extra)
        return [*_EFFICIENTNET_FLAGS, f"--model_dir={model_dir}", "--config.deterministic=True",
                *extra]  # fmt: skip

    proc = _cli(model_flags(killed, "--config.total_steps=100000", *flags))
    assert _wait_for(lambda: _latest_step(str(killed)) is not None, proc, 300)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    k = _latest_step(str(killed))
    assert k is not None and k % n == 0
    target = k + n
    for model_dir in (killed, straight):
        proc = _cli(model_flags(model_dir, f"--config.total_steps={target}", *flags))
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    a = tf.train.load_checkpoint(str(killed / "checkpoints" / f"ckpt-{target}"))
    b = tf.train.load_checkpoint(str(straight / "checkpoints" / f"ckpt-{target}"))
    keys = [k for k in a.get_variable_to_shape_map() if k.split("/")[0] in
            ("model", "optimizer", "ema", "rng")]  # fmt: skip
    assert len(keys) > 20
    for key in keys:
        np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key), err_msg=key)


_MIRRORED_CHILD = """
import json, sys
import tensorflow as tf
from absl import logging
logging.set_verbosity("info")
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from tests.test_train import tiny_config
from tfsd.training import loop, task as task_lib
c = tiny_config(total_steps=int(sys.argv[2]), checkpoint_every_steps=2, deterministic=True,
                **{"distribute.strategy": "mirrored", "optimizer.name": "adamw", "lr.base": 1e-3,
                   "data.randaugment_magnitude": 5.0})
result = loop.train_and_evaluate(c, sys.argv[1])
task = task_lib.build_task(c, None)
sync = [layer.sync_replicas for layer in task.sd_layers]
replicas = task.strategy.num_replicas_in_sync
print("RESULT " + json.dumps(dict(result, replicas=replicas, sync=sync)))
"""


@pytest.mark.slow
def test_mirrored_two_replicas_resume_exactly_including_the_data_stream(tmp_path):
    """Caught: MirroredStrategy's iterator could not be checkpointed, so a resumed mirrored run
    restarted its data stream (and differed from an uninterrupted one)."""

    # A fresh process: MirroredStrategy collectives of earlier tests in this process would share
    # instance keys with this run's (a CollectiveReduceV2 shape mismatch, seen in the full suite).
    def run(model_dir, total_steps):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
        proc = subprocess.run(
            [sys.executable, "-c", _MIRRORED_CHILD, str(model_dir), str(total_steps)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
        return json.loads(line[len("RESULT ") :]), proc.stderr

    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    result, _ = run(resumed, 2)
    assert result["replicas"] == 2 and result["step"] == 2 and np.isfinite(result["loss"])
    # Plain BatchNorm: gates are drawn per replica (no cross-replica op in the branches).
    assert result["sync"] and not any(result["sync"])
    assert result["examples"] == 64  # 4 eval batches of 16 split over the two replicas
    again, log = run(resumed, 4)
    assert again["step"] == 4 and "Resumed from" in log
    reference, _ = run(straight, 4)
    assert again["weights_digest"] == reference["weights_digest"]
    # Per-block keep rates under the strategy: batch mode, each replica draws its own gate per
    # step, so an interval's rate (mean over replicas, 2 steps) is a count over 2 * 2 draws.
    values, _ = _tensor_summaries(straight / "train")
    blocks = sorted(t for t in values if t.startswith("keep_rate/"))
    assert len(blocks) == 9 and "keep_rates" in values and "keep_rate_vs_survival" in values
    rates = np.array([[float(v) for _, v in values[t]] for t in blocks])
    assert rates.shape == (9, 2) and rates.min() >= 0.0 and rates.max() <= 1.0
    np.testing.assert_allclose(rates * 4, np.round(rates * 4), atol=1e-6)
    active = [float(v) for _, v in values["active_blocks"]]
    np.testing.assert_allclose(rates.sum(axis=0), active, rtol=1e-6)
    a = tf.train.load_checkpoint(str(resumed / "checkpoints" / "ckpt-4"))
    b = tf.train.load_checkpoint(str(straight / "checkpoints" / "ckpt-4"))
    keys = [k for k in a.get_variable_to_shape_map() if k.split("/")[0] in ("model", "optimizer")]
    assert len(keys) > 20
    for key in keys:
        np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key), err_msg=key)

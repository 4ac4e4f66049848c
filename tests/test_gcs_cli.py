"""Every command on gs:// through TF's own GCS client, against a GCS emulator (`gcs` fixture).

One test, one run: a real prepared TFDS ``cifar10`` (tiny TFRecords written locally, then copied
up) read from ``--data_dir=gs://…``, a ``tfsd.train`` process with ``--model_dir=gs://…`` killed
with SIGKILL after its first checkpoint, then, in one fresh process, an uninterrupted run and
the killed run's resume to the same step. Export, TFLite, evaluate and predict then run
in-process (`run_cli`) on that gs:// run, writing to gs://. On Cloud this is the whole path of
docs/cloud_tpu.md but the TPU.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.helpers import TRAIN_RUNS_CHILD, latest_step, run_cli, wait_for
from tfsd import evaluate as evaluate_cmd
from tfsd import export as export_cmd
from tfsd import predict as predict_cmd
from tfsd import tflite as tflite_cmd
from tfsd.serving import publish as publish_lib

pytestmark = [pytest.mark.gcs, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[1]
EVERY = 2  # checkpoint every EVERY steps


def _write_cifar10(data_dir: Path, shard_lengths: dict[str, list[int]]) -> None:
    """A real (not mocked) prepared TFDS cifar10: its dataset_info.json with these splits and
    TFRecord shards of its own feature encoding; example k is a flat image of level 5k."""
    builder = tfds.builder("cifar10", data_dir=str(data_dir))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    templates = {
        split: tfds.core.ShardedFileTemplate(
            data_dir=builder.data_path,
            dataset_name=builder.name,
            split=split,
            filetype_suffix="tfrecord",
        )  # fmt: skip
        for split in shard_lengths
    }
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=0,
                            filename_template=templates[split])
        for split, lengths in shard_lengths.items()
    ]))  # fmt: skip
    builder.info.write_to_directory(builder.data_path)
    k = 0
    for split, lengths in shard_lengths.items():
        for shard, length in enumerate(lengths):
            path = templates[split].sharded_filepath(shard_index=shard, num_shards=len(lengths))
            with tf.io.TFRecordWriter(str(path)) as writer:
                for _ in range(length):
                    example = {"id": str(k), "image": np.full((32, 32, 3), 5 * k % 256, np.uint8),
                               "label": k % 10}  # fmt: skip
                    writer.write(builder.info.features.serialize_example(example))
                    k += 1


def _copy_up(local: Path, url: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            tf.io.gfile.makedirs(os.path.dirname(f"{url}/{path.relative_to(local)}"))
            tf.io.gfile.copy(str(path), f"{url}/{path.relative_to(local)}")


def _train_flags(model_dir: str, data_dir: str, *extra: str) -> list[str]:
    """The tiny test_resnet on the gs:// TFDS cifar10, deterministic ops, one step per loop."""
    return [
        "--config=cifar10_resnet110:runlocal", f"--model_dir={model_dir}",
        f"--data_dir={data_dir}", "--config.data.name=cifar10",
        "--config.model.name=test_resnet", "--config.model.overrides.width=0.25",
        "--config.model.image_size=32", "--config.batch_size=8",
        "--config.deterministic=True", "--config.steps_per_loop=1",
        f"--config.checkpoint_every_steps={EVERY}", *extra,
    ]  # fmt: skip


class GcsRun(NamedTuple):
    killed: str  # gs:// run killed with SIGKILL, then resumed to `step`
    straight: str  # gs:// run trained to `step` without interruption
    data_dir: str  # gs:// TFDS data directory
    step: int
    resume_log: str


def _train_kill_and_resume(gcs, tmp_path: Path) -> GcsRun:
    local = tmp_path / "tfds"
    _write_cifar10(local, {"train": [24, 24], "test": [12]})
    data_dir = gcs.url("tfds")
    _copy_up(local, data_dir)
    killed, straight = gcs.url("runs", "killed"), gcs.url("runs", "straight")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfsd.train",
         *_train_flags(killed, data_dir, "--config.total_steps=100000")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert wait_for(
            lambda: latest_step(killed) is not None, proc, 400, poll=0.5
        )  # GCS requests, proc.poll()
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    k = latest_step(killed)
    assert k is not None and k % EVERY == 0
    target = k + EVERY
    runs = [_train_flags(d, data_dir, f"--config.total_steps={target}") for d in (straight, killed)]
    child = subprocess.run(
        [sys.executable, "-c", TRAIN_RUNS_CHILD, json.dumps(runs)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    return GcsRun(killed, straight, data_dir, target, child.stderr)


def test_every_command_on_gcs(gcs, tmp_path):
    """One test, not several sharing a fixture: under xdist the tests of one module may run in
    two workers, each with its own emulator, and would train twice."""
    run = _train_kill_and_resume(gcs, tmp_path)
    _check_resume(run)
    _check_commands(gcs, run)


def _check_resume(run: GcsRun) -> None:
    assert f"Resumed from {run.killed}" in run.resume_log  # the second run continued the first
    a = tf.train.load_checkpoint(f"{run.killed}/checkpoints/ckpt-{run.step}")
    b = tf.train.load_checkpoint(f"{run.straight}/checkpoints/ckpt-{run.step}")
    keys = [k for k in a.get_variable_to_shape_map() if k.split("/")[0] in
            ("model", "optimizer", "ema", "rng")]  # fmt: skip
    assert len(keys) > 20
    for key in keys:
        np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key), err_msg=key)
    # The rest of the run directory on gs://: the resolved config and TensorBoard events.
    config = json.loads(tf.io.gfile.GFile(f"{run.killed}/config.json").read())
    assert config["data"]["name"] == "cifar10"
    assert tf.io.gfile.glob(f"{run.killed}/train/events.out.tfevents.*")


def _check_commands(gcs, run: GcsRun) -> None:
    base = gcs.url("exports", "cifar")
    data = f"--data_dir={run.data_dir}"
    code, out, err = run_cli(export_cmd, f"--model_dir={run.killed}", f"--export_dir={base}", data)
    assert code == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == {
        "exported": f"{base}/1",
        "export_base": base,
    }
    assert publish_lib.existing_versions(base) == [1]
    assert tf.io.gfile.exists(f"{base}/{publish_lib.MODELS_CONFIG}")
    assert not [n for n in tf.io.gfile.listdir(base) if n.startswith(publish_lib.TMP_PREFIX)]

    output = gcs.url("tflite", "cifar.tflite")
    code, out, err = run_cli(tflite_cmd, f"--saved_model={base}/1", f"--output={output}")
    assert code == 0, err[-3000:]
    report = json.loads(tf.io.gfile.GFile(output + ".json").read())
    assert tf.io.gfile.stat(output).length > 1000 and report["model"] == output

    ev = gcs.url("evaluation")
    code, out, err = run_cli(evaluate_cmd, f"--model_dir={run.killed}", data, f"--output_dir={ev}")
    assert code == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["evaluation"]["examples"] == 12
    assert tf.io.gfile.exists(f"{ev}/confusion_matrix.png")

    image = gcs.url("images", "one.png")
    with tf.io.gfile.GFile(image, "wb") as f:
        f.write(tf.io.encode_png(np.full((32, 32, 3), 7, np.uint8)).numpy())
    answers = []
    for source in (f"--model_dir={run.killed}", f"--export_dir={base}"):
        code, out, err = run_cli(predict_cmd, source, data, image)
        assert code == 0, err[-3000:]
        answers.append(json.loads(out.strip().splitlines()[-1])["predictions"][image])
    # The checkpoint and its (folded) export rank the classes alike, with the same scores.
    assert [n for n, _ in answers[0]] == [n for n, _ in answers[1]]
    np.testing.assert_allclose([s for _, s in answers[0]], [s for _, s in answers[1]], atol=1e-4)

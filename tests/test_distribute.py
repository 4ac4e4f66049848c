"""Strategies: construction and errors, MirroredStrategy over 2 logical CPUs, and a real
2-process MultiWorkerMirroredStrategy run of the ``tfsd.train`` CLI on loopback."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfsd import distribute

REPO = Path(__file__).resolve().parents[1]


def _distribute_config(**kw):
    c = ml_collections.ConfigDict({"strategy": "default", "tpu": ""})
    c.update(kw)
    return c


# -------------------------------------------------------------------------------------------------
# Construction and clear errors.
# -------------------------------------------------------------------------------------------------


def test_single_process_strategies():
    assert distribute.get_strategy(_distribute_config()).num_replicas_in_sync == 1
    one = distribute.get_strategy(_distribute_config(strategy="one_device"))
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    # auto on a host without GPUs or TPU name: one device.
    auto = distribute.get_strategy(_distribute_config(strategy="auto"))
    assert isinstance(auto, tf.distribute.OneDeviceStrategy)
    assert distribute.is_chief(one) and not distribute.is_multi_worker(one)


@pytest.mark.parametrize(
    "tf_config, match",
    [
        (None, "needs the TF_CONFIG"),
        ("{cluster: 1}", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "non-empty 'cluster'"),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
         "not host:port"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
         "out of range"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
         "not a job"),
        ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
         "not supported"),
    ],
)  # fmt: skip
def test_malformed_tf_config_fails_at_once(monkeypatch, tf_config, match):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(distribute.DistributeError, match=match):
        distribute.get_strategy(_distribute_config(strategy="multi_worker_mirrored"))


def test_tpu_and_unknown_strategy_errors():
    with pytest.raises(distribute.DistributeError, match="needs distribute.tpu"):
        distribute.get_strategy(_distribute_config(strategy="tpu"))
    with pytest.raises(distribute.DistributeError, match="Unknown distribute.strategy"):
        distribute.get_strategy(_distribute_config(strategy="horovod"))


def test_unreachable_tpu_fails_with_clear_message():
    """This machine has no TPU: asking for the local one fails at once, saying what to do."""
    with pytest.raises(distribute.DistributeError, match="No reachable TPU 'local'"):
        distribute.get_strategy(_distribute_config(strategy="tpu", tpu="local"))


# -------------------------------------------------------------------------------------------------
# MirroredStrategy over 2 logical CPUs (tests/mirrored_child.py, in a fresh process).
# -------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_mirrored_two_replicas_match_one_device_and_keep_replicas_consistent():
    """Caught: per-replica gradient clipping (the old loop clipped each replica's partial
    gradient by its own norm, so the 2-replica step differed from the one-device step by about
    one update), BN moving statistics drifting apart per replica, and sync_bn in batch mode
    failing with "merge_call called while defining a new graph"."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.mirrored_child"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    _check_mirrored(json.loads(line[len("RESULT ") :]))


def _check_mirrored(r):
    """The assertions on tests/mirrored_child.py's RESULT (a function: checkable on a saved one)."""
    one = r["one_step"]
    # The step moved weights by ~2e-3 (clipped to norm 0.05 at lr 0.1); replicas agree to 1e-4.
    assert one["max_update"] > 1e-3 and one["max_diff"] < 1e-4, one
    np.testing.assert_allclose(one["update_norm"], 0.1 * 1.9 * 0.05, rtol=1e-3)  # Nesterov 0.9
    assert r["sync_bn"]["output_diff"] < 1e-4 and r["sync_bn"]["stats_diff"] < 1e-4
    gates = r["gates"]
    assert not any(gates["sync"]) and gates["gate_pairs_that_differ"] > 0
    assert gates["bn_replica_spread"] == 0.0  # averaged after every step
    sbn = r["sync_bn_batch"]
    assert all(sbn["sync"]) and sbn["lockstep"] and all(np.isfinite(sbn["losses"]))
    jit = r["jit_efficientnet"]
    assert jit["steps"] == 1 and np.isfinite(jit["loss"]), jit
    # Eval on real split sizes (2 replicas, global batch 16): one replica empty on the last
    # step (40), one partial (44), exact (48) == the one-device eval of the same checkpoint.
    ev = r["eval_sizes"]
    assert ev["loop_40"] == pytest.approx(ev["40"]["two"], rel=1e-6), ev
    for n, steps in (("40", 3), ("44", 3), ("48", 3)):
        one, two = ev[n]["one"], ev[n]["two"]
        assert ev[n]["steps"] == steps and one["examples"] == two["examples"] == int(n), ev
        assert (one["top1"], one["top5"]) == (two["top1"], two["top5"]), ev
        np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    # Dropout: replicas draw their own masks (Keras' Dropout drew one mask for all of them).
    drop = r["dropout"]
    assert not drop["tfsd"]["same"] and drop["keras"]["same"], drop
    assert all(0.25 <= k <= 0.75 for k in drop["tfsd"]["kept"]), drop  # 64 draws, p=.5: 4 sigma
    # Collectives of one traced step (2 replicas, 3 stochastic-depth layers, EMA on): gradients,
    # BN statistics, and one vector (metrics, stop flag, keep rates); cross-replica updates are
    # the optimizer's (one per trainable variable), its iteration count and the step counter,
    # none for the 39 EMA shadows. The old loop (measured): 11 reductions (gradients, BN, 3
    # metrics, 3 keep-rate reads, 3 more in the post-loop finite check) and 64 updates (+39).
    col = r["gates"]["collectives"]
    assert col["sd_layers"] == 3 and col["ema_shadows"] == 39, col
    assert col["reduce"] == 3 and col["update"] == col["trainable"] + 2, col
    assert col["ema_replicas_agree"] and col["ema_moved"], col


# -------------------------------------------------------------------------------------------------
# MultiWorkerMirroredStrategy: two `python -m tfsd.train` workers on 127.0.0.1.
# -------------------------------------------------------------------------------------------------


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class _Worker:
    """A CLI worker process whose output is collected by a thread (never blocks the test)."""

    def __init__(self, index, ports, model_dir, *flags, env=None):
        tf_config = {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
                   TF_CONFIG=json.dumps(tf_config), PYTHONPATH=str(REPO),
                   **(env or {}))  # fmt: skip
        args = [
            "--config=cifar10_resnet110:runlocal",
            f"--model_dir={model_dir}",
            "--config.model.name=test_resnet",  # the tiny registered model (tiny_config's)
            "--config.model.image_size=16",
            "--config.data.synthetic_train_size=256",
            # 40 = 2.5 global batches: each worker's pipeline holds 20 (2.5 of its batches of 8).
            "--config.data.synthetic_eval_size=40",
            "--config.batch_size=16",
            "--config.deterministic=True",
            "--config.distribute.strategy=multi_worker_mirrored",
            *flags,
        ]
        self.proc = subprocess.Popen(
            # tests.preempt_worker is tfsd.train (plus a SIGTERM after a host loop when asked).
            [sys.executable, "-m", "tests.preempt_worker", *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self):
        return "".join(self.lines)

    def wait(self, timeout):
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _final(worker):
    line = [x for x in worker.lines if x.startswith('{"final_eval"')][-1]
    return json.loads(line)["final_eval"]


def _run_pair(model_dir, *flags, timeout=400, envs=(None, None)):
    ports = _free_ports(2)
    workers = [_Worker(i, ports, model_dir, *flags, env=envs[i]) for i in range(2)]
    try:
        codes = [w.wait(timeout) for w in workers]
    finally:
        for w in workers:
            w.kill()
    return workers, codes


@pytest.mark.e2e
def test_multi_worker_two_processes_train_save_stop_and_resume(tmp_path):
    model_dir = tmp_path / "run"
    workers, codes = _run_pair(model_dir, "--config.total_steps=4", "--config.steps_per_loop=2")
    assert codes == [0, 0], workers[0].output[-3000:] + workers[1].output[-3000:]
    a, b = (_final(w) for w in workers)
    assert a["step"] == b["step"] == 4
    assert a["weights_digest"] == b["weights_digest"]  # both workers hold the same weights
    # Eval counts every example on both workers (the last global batch padded with weight-0
    # examples); the old loop evaluated floor(20 / 8) = 2 full batches per worker: 32 of 40.
    assert a["examples"] == b["examples"] == 40 and a["top1"] == b["top1"], (a, b)
    # Only the chief wrote: one config, one event file per summary directory, one checkpoint set.
    assert sorted(p.name for p in model_dir.iterdir()) == ["checkpoints", "config.json", "eval",
                                                           "train"]  # fmt: skip
    assert len(list((model_dir / "train").iterdir())) == 1
    assert len(list((model_dir / "eval").iterdir())) == 1
    ckpt = tf.train.get_checkpoint_state(str(model_dir / "checkpoints"))
    assert ckpt.model_checkpoint_path.endswith("ckpt-4")

    # Preemption of worker 1 only, landing right after its first host loop (after the loop's
    # last stop check: the case the review reproduced). Both workers must run the next loop's
    # first check, see the all-reduced flag, stop at the same step, save once and exit 143.
    # The old loop stopped worker 1 on its local flag while worker 0 started the next loop:
    # both died in mismatched collectives (InternalError ... data_type) and saved nothing.
    stop_dir = tmp_path / "stopped"
    flags = ["--config.total_steps=4", "--config.steps_per_loop=1",
             "--config.checkpoint_every_steps=100"]  # fmt: skip
    sigterm = [None, {"TFSD_TEST_SIGTERM_AFTER_LOOP": "1"}]
    workers, codes = _run_pair(stop_dir, *flags, timeout=240, envs=sigterm)
    out = workers[0].output[-3000:] + workers[1].output[-3000:]
    assert codes == [128 + signal.SIGTERM] * 2, out
    assert "on another worker" in workers[0].output, out
    state = tf.train.get_checkpoint_state(str(stop_dir / "checkpoints"))
    assert [Path(p).name for p in state.all_model_checkpoint_paths] == ["ckpt-1"], out
    # The same command with the original loop length resumes at step 1 and ends with exactly
    # the weights of the run that never stopped (deterministic=True; data = f(seed, step)).
    workers, codes = _run_pair(stop_dir, "--config.total_steps=4", "--config.steps_per_loop=2")
    assert codes == [0, 0], workers[0].output[-3000:]
    assert "Resumed from" in workers[0].output and "Resumed from" in workers[1].output
    assert [_final(w)["step"] for w in workers] == [4, 4]
    assert {_final(w)["weights_digest"] for w in workers} == {a["weights_digest"]}

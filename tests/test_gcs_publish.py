"""Publishing on gs:// against a real GCS API (fake-gcs-server through TF's own client) and N
concurrent exporters on gs:// and on a local disk (tfsd.serving.publish's protocol).

The emulator is the `gcs` fixture (tests/gcs_emulator.py). What is checked is what a server
reading the base sees: every exporter's version complete and loadable with its own weights, no
version deleted or mixed, no temporary objects left.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests import export_race_child
from tfsd import models
from tfsd.serving import publish as publish_lib
from tfsd.serving import saved_model as saved_model_lib
from tfsd.serving import warmup as warmup_lib

pytestmark = [pytest.mark.gcs, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[1]
EXPORTERS = 4


def _objects(gcs, prefix: str) -> dict[str, int]:
    """Every object under ``gs://bucket/prefix/``: name → generation (google-cloud-storage)."""
    from google.cloud import storage  # the emulator's own listing, not TF's

    bucket = storage.Client().bucket(gcs.bucket)
    return {b.name: b.generation for b in bucket.list_blobs(prefix=prefix.rstrip("/") + "/")}


def test_create_if_absent_is_atomic_on_the_emulator(gcs):
    """The claim primitive: of 8 threads creating one name at once, exactly one wins, 20 times."""
    for round_ in range(20):
        path = gcs.url("atomic", str(round_))
        start, wins = threading.Barrier(8), []

        def create(i):
            start.wait(timeout=30)
            if publish_lib._gcs_create(path, str(i).encode()):  # noqa: B023
                wins.append(i)  # noqa: B023

        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(wins) == 1, (round_, wins)
        with tf.io.gfile.GFile(path, "rb") as f:
            assert f.read() == str(wins[0]).encode()  # the winner's bytes, never replaced


@pytest.mark.parametrize("where", ["gcs", "local"])
def test_concurrent_exporters_publish_distinct_complete_versions(gcs, tmp_path, where):
    """Caught on gs://: exporters racing for one number deleted each other's version (the loser's
    cleanup removed the whole directory) or all reported one version; locally the 4th exporter
    failed after 3 lost renames."""
    base = gcs.url("race", "model") if where == "gcs" else str(tmp_path / "model")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.export_race_child",
                base,
                str(seed),
                str(barrier),
                str(EXPORTERS),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for seed in range(EXPORTERS)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    results = [json.loads(out.split("RESULT ", 1)[1]) for out in outputs]
    dirs = sorted(r["dir"] for r in results)
    assert dirs == sorted(os.path.join(base, str(v)) for v in range(1, EXPORTERS + 1))
    assert publish_lib.existing_versions(base) == list(range(1, EXPORTERS + 1))
    images = tf.constant(export_race_child.images())
    for r in results:  # each version is complete and serves its own exporter's model
        loaded = tf.saved_model.load(r["dir"])
        logits = loaded.signatures["serving_default"](images=images)["logits"]
        np.testing.assert_allclose(logits, r["logits"], rtol=1e-4, atol=1e-4)
    names = tf.io.gfile.listdir(base)
    assert not [n for n in names if n.startswith(publish_lib.TMP_PREFIX)]  # no temporary left
    assert not [n for n in names if n.endswith(".tmp")]
    config = tf.io.gfile.GFile(os.path.join(base, publish_lib.MODELS_CONFIG)).read()
    assert 'name: "model"' in config


def test_gcs_copy_is_graph_last_and_a_failed_copy_removes_only_its_own_objects(gcs, monkeypatch):
    model = models.create_model("test_resnet", num_classes=10)
    base = gcs.url("copy", "model")
    sample = np.concatenate([export_race_child.images()] * 2)
    kw = dict(preprocess="none", sample_images=sample)
    copied = []
    real_copy = tf.io.gfile.copy

    def recording_copy(src, dst, overwrite=False):
        copied.append(dst[len(base) + 1 :])
        return real_copy(src, dst, overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", recording_copy)
    assert saved_model_lib.export_saved_model(model, base, **kw) == base + "/1"
    assert copied[-1] == "1/saved_model.pb" and any(c.startswith("1/variables/") for c in copied)
    assert f"1/{warmup_lib.WARMUP_FILE}" in copied
    assert saved_model_lib.verify_export(base + "/1")  # a complete, loadable SavedModel
    before = _objects(gcs, "copy/model")
    assert "copy/model/.tfsd-claims/1" in before

    def failing_copy(src, dst, overwrite=False):
        if "variables" in dst:
            raise tf.errors.UnavailableError(None, None, "injected network failure")
        return real_copy(src, dst, overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", failing_copy)
    with pytest.raises(tf.errors.UnavailableError):
        saved_model_lib.export_saved_model(model, base, **kw)
    after = _objects(gcs, "copy/model")
    # Version 1 untouched (same objects, same generations); of the failed export only its claim
    # on 2 stays, so the next export takes 3 and never writes into a half-written 2.
    assert after == {**before, "copy/model/.tfsd-claims/2": after["copy/model/.tfsd-claims/2"]}
    monkeypatch.setattr(tf.io.gfile, "copy", real_copy)
    assert saved_model_lib.export_saved_model(model, base, **kw) == base + "/3"
    with pytest.raises(publish_lib.ExportError, match="Version 2 already exists"):
        saved_model_lib.export_saved_model(model, base, version=2, **kw)


def test_gcs_models_config_is_created_once_and_never_replaced(gcs):
    base = gcs.url("config", "model")
    path = publish_lib.write_models_config(base, "cifar")
    first = tf.io.gfile.GFile(path).read()
    generation = _objects(gcs, "config/model")["config/model/models.config"]
    time.sleep(0.01)
    publish_lib.write_models_config(base, "other_name")  # differs: kept, with a warning
    assert tf.io.gfile.GFile(path).read() == first
    assert _objects(gcs, "config/model") == {"config/model/models.config": generation}

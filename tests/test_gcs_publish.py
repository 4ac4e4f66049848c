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
import uuid
from pathlib import Path

import pytest
import tensorflow as tf

from tfsd.serving import publish as publish_lib

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


class _Versioned(tf.Module):
    """A SavedModel that names its exporter: ``serving_default`` returns ``{"seed": seed}``."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = tf.Variable(seed, dtype=tf.int32)

    @tf.function(input_signature=[])
    def serve(self):
        return {"seed": self.seed.read_value()}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> list[str]:
    """EXPORTERS small SavedModels (variables/ and saved_model.pb, like a real export), one each."""
    root = tmp_path_factory.mktemp("saved_models")
    paths = []
    for seed in range(EXPORTERS):
        module = _Versioned(seed)
        paths.append(str(root / str(seed)))
        tf.saved_model.save(module, paths[-1], signatures={"serving_default": module.serve})
    return paths


def _seed(version_dir: str) -> int:
    return int(tf.saved_model.load(version_dir).signatures["serving_default"]()["seed"])


def test_concurrent_exporters_publish_distinct_complete_versions(gcs, tmp_path, saved_models):
    """Caught on gs://: 4 exporters racing for one number all reported version 1 (each copy
    landed on the others'; the loser's cleanup could delete the whole directory); locally the
    models.config rename raised AlreadyExistsError after the version was live (and the old
    3-try loop could run out with 4 racers). Each process publishes to the gs:// base, then to the
    local one, each time together with the others."""
    bases = [gcs.url("race", "model"), str(tmp_path / "model")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.export_race_child",
                path,
                str(tmp_path / "barrier"),
                str(EXPORTERS),
                *bases,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for path in saved_models
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    results = [json.loads(out.split("RESULT ", 1)[1])["dirs"] for out in outputs]
    for i, base in enumerate(bases):
        published = [r[i] for r in results]  # exporter k's version of this base
        assert sorted(published) == [os.path.join(base, str(v)) for v in range(1, EXPORTERS + 1)]
        assert publish_lib.existing_versions(base) == list(range(1, EXPORTERS + 1))
        # Each version is complete and holds its own exporter's model (nothing deleted or mixed).
        assert [_seed(d) for d in published] == list(range(EXPORTERS))
        names = tf.io.gfile.listdir(base)
        assert not [n for n in names if n.startswith(publish_lib.TMP_PREFIX)]  # no temporary
        assert not [n for n in names if n.endswith(".tmp")]
        config = tf.io.gfile.GFile(os.path.join(base, publish_lib.MODELS_CONFIG)).read()
        assert 'name: "model"' in config


def _stage(saved_model: str, base: str) -> str:
    """An export's temporary directory in ``base`` holding a copy of ``saved_model``."""
    tmp_dir = os.path.join(base, f"{publish_lib.TMP_PREFIX}{uuid.uuid4().hex}")
    for dirpath, _, filenames in tf.io.gfile.walk(saved_model):
        for name in filenames:
            src = os.path.join(dirpath, name)
            tf.io.gfile.makedirs(os.path.join(tmp_dir, os.path.relpath(dirpath, saved_model)))
            tf.io.gfile.copy(src, os.path.join(tmp_dir, os.path.relpath(src, saved_model)))
    return tmp_dir


def test_gcs_copy_is_graph_last_and_a_failed_copy_removes_only_its_own_objects(
    gcs, saved_models, monkeypatch
):
    base = gcs.url("copy", "model")
    copied = []
    real_copy = tf.io.gfile.copy

    def recording_copy(src, dst, overwrite=False):
        copied.append(dst[len(base) + 1 :])
        return real_copy(src, dst, overwrite)

    tmp_dir = _stage(saved_models[0], base)
    monkeypatch.setattr(tf.io.gfile, "copy", recording_copy)
    assert publish_lib.publish_version(tmp_dir, base, None) == base + "/1"
    assert copied[-1] == "1/saved_model.pb" and any(c.startswith("1/variables/") for c in copied)
    assert not tf.io.gfile.exists(tmp_dir) and _seed(base + "/1") == 0
    before = _objects(gcs, "copy/model")
    assert "copy/model/.tfsd-claims/1" in before

    def failing_copy(src, dst, overwrite=False):
        if "variables" in dst:
            raise tf.errors.UnavailableError(None, None, "injected network failure")
        return real_copy(src, dst, overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", real_copy)
    tmp_dir = _stage(saved_models[1], base)
    staged = _objects(gcs, "copy/model")
    monkeypatch.setattr(tf.io.gfile, "copy", failing_copy)
    with pytest.raises(tf.errors.UnavailableError):
        publish_lib.publish_version(tmp_dir, base, None)
    after = _objects(gcs, "copy/model")
    # Version 1 untouched (same objects, same generations); of the failed publication only its
    # claim on 2 stays (the temporary is the caller's to remove), so the next one takes 3 and
    # never writes into a half-written 2.
    claim = "copy/model/.tfsd-claims/2"
    assert after == {**staged, claim: after[claim]}
    monkeypatch.setattr(tf.io.gfile, "copy", real_copy)
    assert publish_lib.publish_version(tmp_dir, base, None) == base + "/3"
    with pytest.raises(publish_lib.ExportError, match="Version 2 already exists"):
        publish_lib.choose_version(base, 2)


def test_gcs_models_config_is_created_once_and_never_replaced(gcs):
    base = gcs.url("config", "model")
    path = publish_lib.write_models_config(base, "cifar")
    first = tf.io.gfile.GFile(path).read()
    before = _objects(gcs, "config/model")
    publish_lib.write_models_config(base, "other_name")  # differs: kept, with a warning
    assert tf.io.gfile.GFile(path).read() == first
    assert _objects(gcs, "config/model") == before  # not rewritten (same generation)

"""tfsd.serving.publish: version numbers, atomic publication, models.config (local disk).

Each test exports the registered tiny ``test_resnet`` through `export_saved_model` (the caller of
publish) and compares the export base's files, byte for byte, before and after a failure. A base
that must already hold a published version 1 starts as a copy of the shared `tiny_export`'s base
(another model's export: which model version 1 holds does not matter to publication).
"""

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from tests.helpers import randomize_batchnorm
from tfsd import models
from tfsd.serving import publish as publish_lib
from tfsd.serving import saved_model as saved_model_lib
from tfsd.serving import signatures

SIZE = 16  # test_resnet's registered input size


def _model():
    model = models.create_model("test_resnet", num_classes=10, survival_prob=0.5)
    randomize_batchnorm(model, seed=6)
    return model


def _kwargs():
    """export_saved_model arguments: preprocessing and the fold check's / warm-up's images."""
    images = tf.random.stateless_uniform([8, SIZE, SIZE, 3], seed=[0, 1], maxval=255.0)
    return dict(preprocess="none", sample_images=np.asarray(images).round())


def _snapshot(base):
    """Every path under ``base`` with the sha256 of each file's bytes."""
    out = {}
    for path in sorted(Path(base).rglob("*")):
        rel = str(path.relative_to(base))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def test_versions_are_distinct_and_never_overwritten(tmp_path, monkeypatch):
    model = _model()
    base = str(tmp_path / "base")
    kw = _kwargs()
    traces = []
    outputs = signatures.Servable.outputs

    def counted(self, *args):
        traces.append(args[0].dtype)
        return outputs(self, *args)

    monkeypatch.setattr(signatures.Servable, "outputs", counted)
    assert saved_model_lib.export_saved_model(model, base, **kw) == os.path.join(base, "1")
    # Each signature's graph is traced once (keras.export.ExportArchive traced each twice:
    # tfsd.serving.signatures.write_saved_model says why).
    assert len(traces) == len(signatures.SIGNATURES), traces
    assert saved_model_lib.export_saved_model(model, base, **kw) == os.path.join(base, "2")
    assert saved_model_lib.export_saved_model(model, base, version=7, **kw) == os.path.join(
        base, "7"
    )
    assert publish_lib.existing_versions(base) == [1, 2, 7]
    before = _snapshot(base)
    with pytest.raises(publish_lib.ExportError, match="Version 2 already exists"):
        saved_model_lib.export_saved_model(model, base, version=2, **kw)
    assert _snapshot(base) == before
    # models.config is a ModelServerConfig naming the model and its container path.
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(
        Path(base, "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (entry,) = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == (
        "base", "/models/base", "tensorflow",
    )  # fmt: skip


@pytest.mark.parametrize("where", ["publish", "verify"])
def test_failure_before_rename_leaves_base_exactly_as_it_was(
    tiny_export, tmp_path, monkeypatch, where
):
    model = _model()
    base = str(tmp_path / "base")
    kw = _kwargs()
    shutil.copytree(tiny_export.parent, base)  # version 1 and models.config
    assert publish_lib.existing_versions(base) == [1]
    before = _snapshot(base)
    written = []

    def fail(path, *args, **kwargs):
        written.append(sorted(os.listdir(path)))  # the temporary export was really written
        raise RuntimeError("injected failure")

    if where == "publish":
        monkeypatch.setattr(publish_lib, "publish_dir", fail)
    else:
        monkeypatch.setattr(saved_model_lib, "verify_export", fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        saved_model_lib.export_saved_model(model, base, **kw)
    assert "saved_model.pb" in written[0]
    assert _snapshot(base) == before  # no new entry, no temporary left, version 1 byte-identical


def test_unsupported_scheme_is_refused_before_any_work():
    """gs:// publication: tests/test_gcs_publish.py (against a GCS emulator)."""
    with pytest.raises(publish_lib.ExportError, match="atomic create-if-absent"):
        publish_lib.choose_version("s3://bucket/model", None)


def test_a_version_published_meanwhile_is_never_overwritten(tiny_export, tmp_path, monkeypatch):
    """Two exports racing for one number: the later one takes the next free version."""
    model = _model()
    base = tmp_path / "base"
    kw = _kwargs()
    shutil.copytree(tiny_export.parent, base)  # version 1
    real_publish = publish_lib.publish_dir
    raced = []

    def racing_publish(tmp_dir, final_dir):
        if not raced:  # another exporter publishes this very number first
            raced.append(final_dir)
            os.makedirs(os.path.join(final_dir, "variables"))
            Path(final_dir, "saved_model.pb").write_bytes(b"someone else's")
        return real_publish(tmp_dir, final_dir)

    monkeypatch.setattr(publish_lib, "publish_dir", racing_publish)
    path = saved_model_lib.export_saved_model(model, str(base), **kw)
    assert raced == [str(base / "2")] and path == str(base / "3")
    assert Path(base, "2", "saved_model.pb").read_bytes() == b"someone else's"
    assert saved_model_lib.verify_export(path)
    # A given version that appears meanwhile fails instead.
    raced.clear()
    with pytest.raises(publish_lib.VersionTakenError):
        saved_model_lib.export_saved_model(model, str(base), version=9, **kw)
    assert Path(base, "9", "saved_model.pb").read_bytes() == b"someone else's"


def test_models_config_is_written_once_and_never_replaced(tmp_path):
    base = tmp_path / "base"
    path = Path(publish_lib.write_models_config(str(base), "cifar"))
    first = path.read_text()
    assert 'name: "cifar"' in first
    assert Path(publish_lib.write_models_config(str(base), "cifar")).read_text() == first
    # An operator's edit (a version policy) survives later exports.
    edited = first.replace('model_platform: "tensorflow"',
                           'model_platform: "tensorflow"\n    model_version_policy { latest { '
                           "num_versions: 2 } }")  # fmt: skip
    path.write_text(edited)
    publish_lib.write_models_config(str(base), "other_name")
    assert path.read_text() == edited
    assert sorted(os.listdir(base)) == ["models.config"]  # no temporary file left

"""export/ deployment files and export/client.py, against an emulated TF Serving on loopback.

The emulator (tests/serving_emulator.py) serves the exported SavedModel with TF Serving's REST and
gRPC predict formats; the real server binary is not installable here.
"""

import importlib.util
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tests.serving_emulator import ServingEmulator
from tfsd.serving import publish as publish_lib
from tfsd.serving import warmup as warmup_lib

REPO = Path(__file__).resolve().parents[1]


def _load_client():
    spec = importlib.util.spec_from_file_location("tfsd_client", REPO / "export" / "client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client = _load_client()


@pytest.fixture(scope="module")
def served(tiny_export):
    """The emulator serving the shared `tiny_export` (tiny_run's folded export, 3 classes)."""
    with ServingEmulator(str(tiny_export), "tiny") as server:
        yield server, str(tiny_export)


def _photos(tmp_path):
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    out = []
    for name in ("chelsea.png", "rocket.jpg"):
        target = tmp_path / name
        target.write_bytes((folder / name).read_bytes())
        out.append(str(target))
    return out


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_client_prints_class_names_and_scores(served, tmp_path, capsys, protocol):
    server, path = served
    files = _photos(tmp_path)
    port = server.rest_port if protocol == "rest" else server.grpc_port
    rc = client.main(["--model=tiny", f"--protocol={protocol}", f"--port={port}", *files])
    assert rc == 0
    printed = capsys.readouterr().out
    # The expected answer: the signature called directly on the same bytes.
    blobs = [Path(f).read_bytes() for f in files]
    direct = tf.saved_model.load(path).signatures["serving_bytes"](image_bytes=tf.constant(blobs))
    blocks = printed.strip().split("\n" + files[1] + "\n")
    assert len(blocks) == 2 and blocks[0].startswith(files[0])
    for block, names, scores in zip(
        blocks, direct["class_names"].numpy(), direct["scores"].numpy()
    ):
        rows = re.findall(r"^  (\S+)\s+([0-9.]+)$", block, flags=re.M)
        assert [r[0] for r in rows] == [n.decode() for n in names]
        np.testing.assert_allclose([float(r[1]) for r in rows], scores, atol=1e-4)


def test_rest_and_grpc_give_the_same_predictions(served, tmp_path):
    server, _ = served
    blobs = [Path(f).read_bytes() for f in _photos(tmp_path)]
    rest = client.rest_predict("127.0.0.1", server.rest_port, "tiny", blobs)
    grpc = client.grpc_predict("127.0.0.1", server.grpc_port, "tiny", blobs)
    for a, b in zip(rest, grpc):
        assert a["classes"] == b["classes"]
        assert a["class_names"] == [n.decode() for n in b["class_names"]]
        np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-6)


def test_client_reports_server_errors(served, tmp_path, capsys):
    server, _ = served
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"this is not an image")
    assert client.main(["--model=tiny", f"--port={server.rest_port}", str(bad)]) == 1
    assert "HTTP 400" in capsys.readouterr().err
    assert client.main(["--model=tiny", "--protocol=grpc", f"--port={server.grpc_port}",
                        str(bad)]) == 1  # fmt: skip
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    with socket.socket() as s:  # a port with no server behind it
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert client.main(["--model=tiny", f"--port={free}", str(bad)]) == 1
    assert "cannot reach the server" in capsys.readouterr().err
    assert client.main(["--model=tiny", str(tmp_path / "missing.png")]) == 2


def test_deployment_files_agree_with_the_export(tmp_path):
    compose = yaml.safe_load((REPO / "export" / "docker-compose.yml").read_text())
    service = compose["services"]["serving"]
    flags = dict(arg.lstrip("-").split("=", 1) for arg in service["command"])
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert flags["model_config_file"] == "/models/${MODEL_NAME}/models.config"
    assert flags["enable_batching"] == "true"
    mounts = {v["target"]: v["source"] for v in service["volumes"]}
    assert all(v["type"] == "bind" and v["read_only"] for v in service["volumes"])
    for flag in ("batching_parameters_file", "monitoring_config_file"):
        local = mounts[flags[flag]]
        assert (REPO / "export" / local).is_file(), local  # relative to the compose file
    # The model mount is where models.config (as tfsd.export writes it) says the base is.
    assert mounts["/models/${MODEL_NAME:?set MODEL_NAME}"].startswith("${EXPORT_BASE:?")
    config = publish_lib.write_models_config(str(tmp_path), "cifar")
    assert 'base_path: "/models/cifar"' in Path(config).read_text()
    # Text protos: the fields the server's parsers know (BatchingParameters, MonitoringConfig).
    batching = (REPO / "export" / "batching_parameters.txt").read_text()
    fields = re.findall(r"^(\w+) \{ value: (\d+) \}$", batching, flags=re.M)
    assert {f for f, _ in fields} == {
        "max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
    }  # fmt: skip
    # Warm-up batches fit the batching limit.
    assert max(warmup_lib.WARMUP_BATCH_SIZES) <= int(dict(fields)["max_batch_size"])
    monitoring = (REPO / "export" / "monitoring.config").read_text()
    assert "prometheus_config {" in monitoring and "enable: true" in monitoring

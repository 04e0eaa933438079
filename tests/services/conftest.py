"""Fixtures of the scale-out tests.

- `services` (session): PostgreSQL + S3 (moto) + MLflow tracking server. With REVELIO_SERVICES_ENV
  pointing at the env file of running services (scripts/services.sh start DIR writes DIR/env.sh) they
  are used as they are; otherwise scripts/services.sh starts them in a temporary directory and purges
  them at the end of the session.
- `moto_s3` (function): a private S3 endpoint on its own port that a test can take down and bring
  back (`stop()`, `start()`, `hang()`), for the fault tests.
"""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "services.sh"
START_TIMEOUT_S = 600

# Variables through which boto3 could find credentials or an endpoint outside the test's control.
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_env_file(path: Path) -> dict[str, str]:
    """`export NAME='value'` lines, as scripts/services.sh writes them (shell quoting undone by shlex)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        if words and words[0] == "export":
            words = words[1:]
        for w in words:
            name, sep, value = w.partition("=")
            if not sep:
                raise ValueError(f"{path}: cannot parse line {line!r}")
            env[name] = value
    return env


def isolate_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials or endpoint from the developer's environment or ~/.aws, and never the EC2
    metadata service (a credential lookup would otherwise try 169.254.169.254)."""
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@dataclass(frozen=True)
class Services:
    env: dict[str, str]
    started_in_s: float = 0.0

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def s3_endpoint(self) -> str:
        return self.env["MLFLOW_S3_ENDPOINT_URL"]

    @property
    def bucket(self) -> str:
        return self.env["REVELIO_S3_BUCKET"]

    def s3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def use_s3(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Point S3 clients of this test (S3Backend included) at the services' S3 server."""
        isolate_aws(monkeypatch, tmp_path)
        for name in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            monkeypatch.setenv(name, self.env[name])


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory):
    given = os.environ.get("REVELIO_SERVICES_ENV", "")
    if given:
        path = Path(given)
        if not path.is_file():
            pytest.fail(f"REVELIO_SERVICES_ENV={given} does not exist; start the services with "
                        f"`bash scripts/services.sh start DIR` and point it at DIR/env.sh, or unset it "
                        "to let the tests start their own")
        yield Services(read_env_file(path))
        return
    state = tmp_path_factory.mktemp("services")
    # the services run on the interpreter that runs the tests, so they see the same packages
    env = {**os.environ, "REVELIO_PYTHON": sys.executable}
    t0 = time.monotonic()
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "start", str(state)], env=env, capture_output=True,
                              text=True, timeout=START_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            pytest.fail(f"scripts/services.sh start failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        yield Services(read_env_file(state / "env.sh"), started_in_s=time.monotonic() - t0)
    finally:
        subprocess.run(["bash", str(SCRIPT), "purge", str(state)], env=env, capture_output=True, text=True,
                       timeout=180, check=False)


# --------------------------------------------------------------------------- private S3 endpoint
def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode} before answering at {url}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answered at {url} within {timeout_s} s") from None
            time.sleep(0.2)


@dataclass
class S3Endpoint:
    """A moto server seen through a TCP proxy on its own port.

    Why a proxy: moto keeps objects in memory, so restarting moto would also lose the store, which a
    real S3 outage does not. `stop()` closes the proxy's listening socket and resets every open
    connection (clients get connection refused/reset, as from a stopped server); `start()` listens on
    the same port again with the objects intact; `hang()` accepts connections and never answers.
    """

    backend_port: int
    port: int
    bucket: str
    mode: str = "down"
    _listener: socket.socket | None = None
    _thread: threading.Thread | None = None
    _conns: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}"

    def env(self) -> dict[str, str]:
        return {"MLFLOW_S3_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def use(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        isolate_aws(monkeypatch, tmp_path)
        for k, v in self.env().items():
            monkeypatch.setenv(k, v)

    def client(self):
        """A boto3 client straight to moto, unaffected by the endpoint's outages."""
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.backend_port}", region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def start(self) -> None:
        self._close_listener()
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", self.port))
        lsock.listen(64)
        lsock.settimeout(0.05)  # the accept loop polls, so stop() never waits on a blocked accept
        self._listener = lsock
        self.mode = "up"
        self._thread = threading.Thread(target=self._accept_loop, args=(lsock,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.mode = "down"
        self._close_listener()
        self._reset_all()

    def hang(self) -> None:
        """Accept connections but never answer (a wedged server or a black-holed route)."""
        if self._listener is None:
            self.start()
        self._reset_all()
        self.mode = "hang"

    def _close_listener(self) -> None:
        lsock, self._listener = self._listener, None
        if lsock is not None:
            lsock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _reset_all(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            try:
                # linger 0: close with RST, like a server that died, not a polite FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()
            except OSError:
                pass

    def _accept_loop(self, lsock: socket.socket) -> None:
        while self._listener is lsock:
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self._conns.add(conn)
            if self.mode == "hang":
                continue  # held open, never read, never answered
            try:
                upstream = socket.create_connection(("127.0.0.1", self.backend_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._conns.add(upstream)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


@pytest.fixture()
def moto_s3(tmp_path: Path):
    """A private moto S3 server (own process, own port) behind an endpoint that can be stopped and restarted."""
    backend_port = free_port()
    with open(tmp_path / "moto.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(backend_port)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    endpoint = S3Endpoint(backend_port=backend_port, port=free_port(), bucket=f"test-{uuid.uuid4().hex[:12]}")
    try:
        wait_http(f"http://127.0.0.1:{backend_port}/", 60, proc)
        endpoint.client().create_bucket(Bucket=endpoint.bucket)
        endpoint.start()
        yield endpoint
    finally:
        endpoint.stop()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

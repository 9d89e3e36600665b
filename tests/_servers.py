"""Real servers on loopback for the remote-source tests: Orthanc with DICOMweb, moto's S3 server, a counting proxy.

Each server is a real process started here on 127.0.0.1 with a free port and its own temporary directory,
so xdist workers never share one. tests/conftest.py registers the fixtures, so a test only names them; the
classes and helpers are imported from here::

    from _servers import CountingProxy, unused_port

    def test_series_over_dicomweb(empty_orthanc, lidc_dir):
        empty_orthanc.upload(sorted(lidc_dir.glob("*.dcm"))[:5])
        with CountingProxy("127.0.0.1", empty_orthanc.port) as proxy:
            client = empty_orthanc.client(proxy.url + "/dicom-web")
            ...
        assert not any("/frames/" in r.target for r in proxy.requests)

Fixtures: ``orthanc`` (session), ``empty_orthanc`` (the same, emptied), ``s3_server`` (session, checks no
credentials), ``s3_server_auth`` (session, a second server that checks them), ``s3_env`` (``s3_server`` with its
endpoint and credentials in this test's environment), ``counting_proxy`` (a factory of proxies closed afterwards).

When the Orthanc binary, its DICOMweb plugin or moto is missing, the fixtures skip with the reason; under
``CI=true`` they fail instead (``.ci/run`` installs Orthanc; the test extra installs moto).
"""

from __future__ import annotations

import contextlib
import http
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"
#: Where Debian's packages `orthanc` and `orthanc-dicomweb` put the server and the plugin.
ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
)
#: Seconds a server may take to answer its first request (a loaded CI machine starts Orthanc slowly).
STARTUP_TIMEOUT_S = 60.0
#: Fake AWS credentials for moto (it accepts any); never real ones.
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def missing(message: str) -> None:
    """Skip the test with `message`, or fail it under ``CI=true`` (CI must have every server)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI must provide it (see .ci/run)")
    pytest.skip(message)


def free_port() -> int:
    """A loopback TCP port that nobody listened on a moment ago (the OS picks it; a race is retried by callers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def unused_port() -> int:
    """A loopback port with no listener: connecting to it is refused (for "server unreachable" tests)."""
    return free_port()


def _parent_death_signal():
    """A ``preexec_fn`` (Linux) that has the kernel SIGTERM the server when the test process dies, or None.

    Session fixtures stop their servers at teardown; this covers a killed or crashed pytest (xdist) worker, so no
    server outlives it. The C function is looked up here, in the parent, so the child only makes one call.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return preexec


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 15.0) -> None:
    """Terminate `proc` (SIGTERM), then kill it if it has not exited after `timeout_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


def _wait_http(
    proc: subprocess.Popen[bytes], url: str, log: Path, what: str, auth: tuple[str, str] | None = None
) -> None:
    """Poll `url` until it answers 200; raise with the log's tail if the process dies or time runs out."""
    import requests

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with status {proc.returncode} while starting; log tail:\n{_log_tail(log)}"
            )
        try:
            response = requests.get(url, auth=auth, timeout=2)
        except requests.RequestException as exc:
            last = type(exc).__name__
        else:
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        time.sleep(0.1)
    raise RuntimeError(
        f"{what} did not answer {url} within {STARTUP_TIMEOUT_S:.0f} s ({last}); log tail:\n{_log_tail(log)}"
    )


# --------------------------------------------------------------------------------------------- Orthanc


def find_orthanc() -> tuple[str, str] | None:
    """The Orthanc binary and its DICOMweb plugin (env ``CTFRAME_ORTHANC``/``CTFRAME_ORTHANC_DICOMWEB``), or None."""
    binary = os.environ.get("CTFRAME_ORTHANC") or shutil.which("Orthanc")
    if binary is None:
        binary = next((p for p in ORTHANC_CANDIDATES if os.access(p, os.X_OK)), None)
    plugin = os.environ.get("CTFRAME_ORTHANC_DICOMWEB") or next(
        (p for p in DICOMWEB_PLUGIN_CANDIDATES if Path(p).is_file()), None
    )
    if binary is None or plugin is None or not os.access(binary, os.X_OK) or not Path(plugin).is_file():
        return None
    return binary, plugin


@dataclass
class OrthancServer:
    """One Orthanc process on loopback with the DICOMweb plugin, HTTP basic auth, and its own storage.

    Attributes
    ----------
    base_url : str
        ``http://127.0.0.1:PORT`` (Orthanc's REST API).
    dicomweb_root : str
        ``http://127.0.0.1:PORT/dicom-web`` (the DICOMweb service root, no trailing slash).
    dicomweb_url : str
        The same root written as a ctframe source: ``dicomweb+http://127.0.0.1:PORT/dicom-web``.
    username, password : str
        Random credentials generated for this server (the only user); the password is left out of repr.
    port : int
    workdir : Path
        Holds ``orthanc.json``, ``storage/``, ``index/`` and ``orthanc.log``.
    """

    binary: str
    plugin: str
    workdir: Path
    port: int = 0
    username: str = field(default_factory=lambda: "ctframe-" + secrets.token_hex(4))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def dicomweb_root(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def dicomweb_url(self) -> str:
        return "dicomweb+" + self.dicomweb_root

    @property
    def auth(self) -> tuple[str, str]:
        """``(username, password)`` for requests."""
        return (self.username, self.password)

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _config(self) -> dict[str, Any]:
        return {
            "Name": "ctframe-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            # Orthanc 1.10 binds every interface; this makes it serve loopback clients only.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomServerEnabled": False,
            "DicomPort": free_port(),  # unused while the DICOM server is off, but never a shared default
            "SaveJobs": False,
            "HttpDescribeErrors": True,
            # no gzip/deflate of answers, so bytes counted on the wire are the payload's bytes
            "HttpCompressionEnabled": False,
            "Plugins": [self.plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }

    def start(self) -> None:
        """Start Orthanc (on the same port and storage as before, if it ran already) and wait until it answers."""
        if self.running:
            return
        fixed_port = self.port != 0  # a restart keeps its port (clients and URLs made earlier still point there)
        attempts = 3
        for attempt in range(attempts):
            if not fixed_port:
                self.port = free_port()
            elif attempt:
                time.sleep(1.0)  # the old process's socket may take a moment to go
            (self.workdir / "storage").mkdir(parents=True, exist_ok=True)
            (self.workdir / "index").mkdir(parents=True, exist_ok=True)
            config = self.workdir / "orthanc.json"
            config.write_text(json.dumps(self._config(), indent=2))
            config.chmod(0o600)
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [self.binary, "--verbose", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    preexec_fn=_parent_death_signal(),
                )
            try:
                _wait_http(self._proc, f"{self.base_url}/system", self.log_path, "Orthanc", auth=self.auth)
                return
            except RuntimeError:
                _stop_process(self._proc)
                self._proc = None
                if attempt == attempts - 1:
                    raise
                # most likely the port was taken between free_port() and Orthanc's bind (or not yet released)

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL); the port is then unreachable until `start`."""
        _stop_process(self._proc)
        self._proc = None

    def _session(self):
        import requests

        session = requests.Session()
        session.auth = self.auth
        return session

    def upload(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """POST each DICOM file to ``/instances``; return Orthanc's instance ids in the same order."""
        ids = []
        with self._session() as session:
            for path in paths:
                response = session.post(f"{self.base_url}/instances", data=Path(path).read_bytes(), timeout=60)
                response.raise_for_status()
                ids.append(response.json()["ID"])
        return ids

    def find_series(self, series_instance_uid: str) -> list[str]:
        """Orthanc's ids of the series with this SeriesInstanceUID (via ``/tools/find``)."""
        with self._session() as session:
            response = session.post(
                f"{self.base_url}/tools/find",
                json={"Level": "Series", "Query": {"SeriesInstanceUID": series_instance_uid}},
                timeout=60,
            )
            response.raise_for_status()
            return list(response.json())

    def delete_series(self, series_instance_uid: str) -> int:
        """Delete the series with this SeriesInstanceUID; return how many Orthanc series were deleted."""
        ids = self.find_series(series_instance_uid)
        with self._session() as session:
            for series_id in ids:
                session.delete(f"{self.base_url}/series/{series_id}", timeout=60).raise_for_status()
        return len(ids)

    def delete_all(self) -> None:
        """Delete every patient (and so every study, series and instance) stored in this Orthanc."""
        with self._session() as session:
            response = session.get(f"{self.base_url}/patients", timeout=60)
            response.raise_for_status()
            for patient_id in response.json():
                session.delete(f"{self.base_url}/patients/{patient_id}", timeout=60).raise_for_status()

    def count_instances(self) -> int:
        """How many instances Orthanc stores now."""
        with self._session() as session:
            response = session.get(f"{self.base_url}/statistics", timeout=60)
            response.raise_for_status()
            return int(response.json()["CountInstances"])

    def client(self, url: str | None = None, *, auth: bool = True):
        """A `dicomweb_client.DICOMwebClient` for `url` (default: this server's DICOMweb root), with credentials."""
        from dicomweb_client import DICOMwebClient
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(self.username, self.password) if auth else None
        return DICOMwebClient(url=url or self.dicomweb_root, session=session)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc with DICOMweb on a free loopback port, empty at start, for this test session (xdist worker)."""
    found = find_orthanc()
    if found is None:
        missing(
            "Orthanc with its DICOMweb plugin not found (Debian packages orthanc and orthanc-dicomweb; "
            "or set CTFRAME_ORTHANC and CTFRAME_ORTHANC_DICOMWEB)"
        )
    try:
        import dicomweb_client  # noqa: F401
        import requests  # noqa: F401
    except ImportError as exc:
        missing(f"{exc.name} is not installed (pip install -e '.[test]')")
    binary, plugin = found
    server = OrthancServer(binary=binary, plugin=plugin, workdir=tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def empty_orthanc(orthanc: OrthancServer) -> OrthancServer:
    """The session's `orthanc`, running (restarted if a test stopped it) and emptied, for a test that loads its own.

    The session's Orthanc is shared by every test a worker runs (several modules under ``--dist loadfile``), so a
    test that counts what Orthanc holds should ask for this one.
    """
    orthanc.start()
    orthanc.delete_all()
    return orthanc


# --------------------------------------------------------------------------------------------- S3 (moto)


@dataclass
class S3Server:
    """moto's standalone S3 server on loopback (fake credentials; any bucket may be created).

    Attributes
    ----------
    endpoint_url : str
        ``http://127.0.0.1:PORT``.
    key, secret : str
        The credentials the helpers use: moto's fake ``testing``/``testing`` (accepted while moto checks nothing),
        or after `enforce_auth` an access key pair moto generated for an IAM user (the secret is left out of repr).
    env : dict
        Environment variables that point boto3/s3fs at this server with `key` and `secret`
        (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``, and empty
        config/credential files so a user's own AWS setup is never read). Use with ``monkeypatch.setenv`` or
        a subprocess's ``env=``; the fixture itself changes no environment variable.
    storage_options : dict
        The same as fsspec/s3fs keyword arguments: ``key``, ``secret``, ``client_kwargs={"endpoint_url": ...}``.
    """

    workdir: Path
    port: int = 0
    key: str = FAKE_AWS["AWS_ACCESS_KEY_ID"]
    secret: str = field(default=FAKE_AWS["AWS_SECRET_ACCESS_KEY"], repr=False)
    region: str = FAKE_AWS["AWS_DEFAULT_REGION"]
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "moto.log"

    @property
    def env(self) -> dict[str, str]:
        empty = self.workdir / "aws-empty"
        empty.touch()
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_CONFIG_FILE": str(empty),
            "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        }

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def start(self) -> None:
        """Start ``python -m moto.server`` on a free loopback port and wait until it answers."""
        if self._proc is not None and self._proc.poll() is None:
            return
        for attempt in range(3):
            self.port = free_port()
            env = {**os.environ, **FAKE_AWS}
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=env,
                    preexec_fn=_parent_death_signal(),
                )
            try:
                _wait_http(self._proc, f"{self.endpoint_url}/moto-api/", self.log_path, "moto server")
                return
            except RuntimeError:
                _stop_process(self._proc)
                self._proc = None
                if attempt == 2:
                    raise

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        _stop_process(self._proc)
        self._proc = None

    def client(self, service: str = "s3"):
        """A boto3 client for this server with `key` and `secret` (nothing read from the environment)."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )

    def enforce_auth(self) -> None:
        """From now on moto checks every request: only `key`/`secret` (a new IAM user's, allowed ``s3:*``) pass.

        Wrong or unknown credentials, or none (``anon=True``), then get HTTP 403. This cannot be undone for the
        process, so use it on its own server (the `s3_server_auth` fixture), never on the shared `s3_server`.
        """
        import requests

        iam = self.client("iam")
        user = "ctframe-" + secrets.token_hex(4)
        iam.create_user(UserName=user)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName=user, PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        access_key = iam.create_access_key(UserName=user)["AccessKey"]
        self.key, self.secret = access_key["AccessKeyId"], access_key["SecretAccessKey"]
        # moto's switch: authenticate every request after 0 more unauthenticated ones
        requests.post(f"{self.endpoint_url}/moto-api/reset-auth", data=b"0", timeout=30).raise_for_status()

    def filesystem(self, **kwargs: Any):
        """A fresh (uncached) `s3fs.S3FileSystem` on this server; `kwargs` are added to `storage_options`."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **{**self.storage_options, **kwargs})

    def make_bucket(self, name: str | None = None, *, versioned: bool = False) -> str:
        """Create a bucket (a unique name by default; with object versions if `versioned`) and return its name."""
        name = name or "ctframe-" + secrets.token_hex(6)
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def upload_tree(self, local_dir: str | os.PathLike[str], bucket: str, prefix: str = "") -> list[str]:
        """Upload every file under `local_dir` to ``s3://bucket/prefix/<relative path>``; return the keys, sorted."""
        root = Path(local_dir)
        client = self.client()
        keys = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = "/".join(part for part in (prefix.strip("/"), path.relative_to(root).as_posix()) if part)
            client.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    def upload_files(self, paths: Iterable[str | os.PathLike[str]], bucket: str, prefix: str = "") -> list[str]:
        """Upload the given files to ``s3://bucket/prefix/<file name>``; return the keys in order."""
        client = self.client()
        keys = []
        for path in paths:
            key = "/".join(part for part in (prefix.strip("/"), Path(path).name) if part)
            client.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete one object."""
        self.client().delete_object(Bucket=bucket, Key=key)

    def url(self, bucket: str, prefix: str = "") -> str:
        """``s3://bucket/prefix`` (no trailing slash)."""
        return f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")


def _require_s3_packages() -> None:
    for module in ("moto.server", "boto3", "s3fs", "requests"):
        try:
            __import__(module)
        except ImportError as exc:
            missing(f"{exc.name} is not installed (needs moto[server], boto3, s3fs: pip install -e '.[test]')")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port for this test session (xdist worker); buckets persist within it."""
    _require_s3_packages()
    server = S3Server(workdir=tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A second moto S3 server that checks credentials (`S3Server.enforce_auth`): wrong or no credentials get 403."""
    _require_s3_packages()
    server = S3Server(workdir=tmp_path_factory.mktemp("moto-auth"))
    server.start()
    try:
        server.enforce_auth()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """`s3_server` with its fake credentials and endpoint in this test's environment (undone afterwards)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return s3_server


# --------------------------------------------------------------------------------------------- counting proxy


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP/1.x request seen by `CountingProxy`: method, target (path and query) and headers (lower-case names)."""

    method: str
    target: str
    headers: dict[str, str] = field(hash=False)

    @property
    def range(self) -> tuple[int, int | None] | None:
        """The first ``Range: bytes=START-END`` as ``(start, end inclusive or None)``; None without one."""
        value = self.headers.get("range", "")
        if not value.startswith("bytes="):
            return None
        start, _, end = value[len("bytes=") :].split(",")[0].strip().partition("-")
        if not start:
            return None  # a suffix range ("bytes=-N")
        return int(start), (int(end) if end else None)


class _RequestParser:
    """Splits a client's HTTP/1.x stream into requests (Content-Length or chunked bodies); gives up on non-HTTP."""

    def __init__(self) -> None:
        self._buffer = b""
        self._body_left = 0  # bytes of the current body still to skip
        self._chunked = False
        self.broken = False

    def feed(self, data: bytes) -> list[HttpRequest]:
        if self.broken:
            return []
        self._buffer += data
        found = []
        try:
            while True:
                if self._body_left:
                    skip = min(self._body_left, len(self._buffer))
                    self._buffer = self._buffer[skip:]
                    self._body_left -= skip
                    if self._body_left:
                        return found
                if self._chunked:
                    if not self._skip_chunk():
                        return found
                    continue
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > 1 << 20:
                        raise ValueError("no end of headers")
                    return found
                head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4 :]
                request_line, *header_lines = head.split("\r\n")
                method, target, version = request_line.split(" ")
                if not version.startswith("HTTP/"):
                    raise ValueError(version)
                headers = {}
                for line in header_lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                found.append(HttpRequest(method, target, headers))
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    self._chunked = True
                else:
                    self._body_left = int(headers.get("content-length", "0") or 0)
        except (ValueError, UnicodeDecodeError):
            self.broken = True
            return found

    def _skip_chunk(self) -> bool:
        """Skip one chunk of a chunked body; False when more bytes are needed."""
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0:
            return False
        size = int(self._buffer[:line_end].split(b";")[0], 16)
        if size == 0:  # last chunk, then optional trailers and an empty line
            end = self._buffer.find(b"\r\n\r\n", line_end)
            if end < 0:
                return False
            self._buffer = self._buffer[end + 4 :]
            self._chunked = False
            return True
        if len(self._buffer) < line_end + 2 + size + 2:
            return False
        self._buffer = self._buffer[line_end + 2 + size + 2 :]
        return True


class CountingProxy:
    """A TCP proxy on loopback that forwards to ``target_host:target_port`` and counts what passes.

    Real TCP forwarding in background threads (one listener, two pumps per connection), so any client (requests,
    s3fs/aiobotocore, dicomweb-client) works through it unchanged; point the client at `url` or `port`.

    Attributes
    ----------
    port : int
        The proxy's loopback port.
    url : str
        ``http://127.0.0.1:PORT``.
    bytes_to_client, bytes_to_server : int
        Bytes forwarded server -> client and client -> server since the last `reset`.
    connections : int
        Connections accepted since the last `reset`.
    requests : list of HttpRequest
        The HTTP/1.x requests clients sent since the last `reset` (method, target, headers; parsed from the
        client's bytes, which are forwarded unchanged). A connection whose bytes are not HTTP adds none.

    Examples
    --------
    >>> with CountingProxy("127.0.0.1", orthanc.port) as proxy:  # doctest: +SKIP
    ...     requests.get(proxy.url + "/system", auth=orthanc.auth)
    ...     assert proxy.bytes_to_client > 0
    ...     assert [r.target for r in proxy.requests] == ["/system"]
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)  # so the accept loop notices `close`
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.bytes_to_client = 0
        self.bytes_to_server = 0
        self.connections = 0
        self.requests: list[HttpRequest] = []
        self._faults: list[int | str] = []  # answers for the next new connections (see `inject`)
        self._accept_thread = threading.Thread(target=self._accept_loop, name="counting-proxy", daemon=True)
        self._accept_thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def total_bytes(self) -> int:
        return self.bytes_to_client + self.bytes_to_server

    def reset(self) -> None:
        """Set all counters back to zero (connections already open keep being counted)."""
        with self._lock:
            self.bytes_to_client = self.bytes_to_server = self.connections = 0
            self.requests = []

    def counts(self) -> dict[str, int]:
        """A snapshot: ``{"bytes_to_client": ..., "bytes_to_server": ..., "connections": ...}``."""
        with self._lock:
            return {
                "bytes_to_client": self.bytes_to_client,
                "bytes_to_server": self.bytes_to_server,
                "connections": self.connections,
            }

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:  # counted before anything reaches the client, like the bytes
                self.connections += 1
                fault = self._faults.pop(0) if self._faults else None
            if fault is not None:
                thread = threading.Thread(target=self._serve_fault, args=(client, fault), daemon=True)
                thread.start()
                self._threads.append(thread)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the target refuses: so does the proxy (the client sees the connection close)
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            pair = [0]  # pumps of this connection that finished
            for src, dst, name in ((client, upstream, "bytes_to_server"), (upstream, client, "bytes_to_client")):
                parser = _RequestParser() if name == "bytes_to_server" else None
                thread = threading.Thread(target=self._pump, args=(src, dst, name, pair, parser), daemon=True)
                thread.start()
                self._threads.append(thread)

    def inject(self, status: int | None = 503, *, count: int = 1, stall: bool = False) -> None:
        """Answer the next `count` new connections here instead of forwarding them: with `status`, or never.

        Each such connection gets its first request read (and recorded in `requests`), then either a canned
        ``HTTP/1.1 <status>`` answer with ``Connection: close``, or, with ``stall=True``, no answer at all until
        the client gives up (a timeout) or the proxy closes. Faults apply to new connections only: a client that
        keeps an earlier connection open reuses it, so start a fresh client (or proxy) for a fault test.
        """
        if not stall and status is None:
            raise ValueError("inject needs a status or stall=True")
        with self._lock:
            self._faults.extend(["stall" if stall else int(status)] * count)  # type: ignore[arg-type]

    def _serve_fault(self, client: socket.socket, fault: int | str) -> None:
        parser = _RequestParser()
        client.settimeout(0.2)
        try:
            seen: list[HttpRequest] = []
            while not seen and not self._closed.is_set():
                try:
                    data = client.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                seen = parser.feed(data)
                with self._lock:
                    self.bytes_to_server += len(data)
                    self.requests.extend(seen)
            if fault == "stall":
                while not self._closed.is_set():
                    try:
                        if not client.recv(65536):
                            return
                    except TimeoutError:
                        continue
                return
            answer = (
                f"HTTP/1.1 {int(fault)} {http.HTTPStatus(int(fault)).phrase}\r\n"
                "Content-Type: text/plain\r\nContent-Length: 0\r\nRetry-After: 0\r\nConnection: close\r\n\r\n"
            ).encode()
            with self._lock:
                self.bytes_to_client += len(answer)
            client.sendall(answer)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _pump(
        self, src: socket.socket, dst: socket.socket, counter: str, finished: list[int], parser: _RequestParser | None
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                # count before forwarding: once a client has its bytes, the counters already include them
                seen = parser.feed(data) if parser is not None else []
                with self._lock:
                    setattr(self, counter, getattr(self, counter) + len(data))
                    self.requests.extend(seen)
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            finished[0] += 1
            last = finished[0] == 2
            if last:
                self._sockets.difference_update((src, dst))
        if last:  # both directions finished: close the pair
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        """Stop listening and close every forwarded connection."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self._accept_thread.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture
def counting_proxy() -> Iterator[type[CountingProxy]]:
    """A factory: ``counting_proxy(host, port)`` returns a `CountingProxy` that is closed after the test."""
    proxies: list[CountingProxy] = []

    def make(target_host: str, target_port: int) -> CountingProxy:
        proxy = CountingProxy(target_host, target_port)
        proxies.append(proxy)
        return proxy

    yield make  # type: ignore[misc]
    for proxy in proxies:
        proxy.close()

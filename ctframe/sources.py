"""Where DICOM files live: local folders, object storage (fsspec) and DICOMweb services.

A *location* is what a user writes where a folder is accepted: a local path, an
fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``https://...``,
``file://...``) or a DICOMweb service root (``dicomweb+http://host:port/path``,
optionally narrowed by QIDO-RS query parameters). This module owns the bytes of
files: listing them with what identifies each file's version, opening one for a
header read (ranged reads that grow only as far as the header does) and reading
a byte range of pixel data. DICOMweb discovery and reads live in
:mod:`ctframe.dicomweb`; what a source yields is the same catalog either way.

Credentials and endpoints come the usual way for each filesystem (environment,
config files) or from ``storage_options``, held in an :class:`Access` that read
tasks carry: its ``repr`` and its dask token never show them, and
:func:`redact` strips user info and query values from a location before it is
printed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any, NamedTuple, TypeVar

from ctframe.errors import DicomReadError, NoSeriesError, SourceError

__all__ = ["Access", "FileInfo", "is_dicomweb", "is_remote", "list_files", "location_kind", "redact"]

T = TypeVar("T")

#: First ranged read of a remote header; CT headers are 2-3 KB, so most headers need one request.
HEADER_BLOCK_BYTES = 8192
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class FileInfo(NamedTuple):
    """One file of a source: where it is, its size and what identifies its version."""

    path: str
    size: int
    #: ``mtime_ns`` locally; ETag or version id in object storage.
    version: str


class Access:
    """How read tasks reach a source's bytes: fsspec storage options and DICOMweb settings.

    Carried by every read task of a remote stack (a local one needs none). Its
    ``repr`` names only the option keys, and its dask token is a hash of the
    values, so credentials never appear in task keys, logs or
    ``provenance.json``; workers of a distributed cluster get it pickled inside
    the tasks, so they need no shared disk and no credentials of their own.

    Parameters
    ----------
    storage_options : mapping, optional
        Passed to ``fsspec.url_to_fs`` (e.g. ``{"anon": True}`` or
        ``{"client_kwargs": {"endpoint_url": ...}}`` for s3fs).
    dicomweb : mapping, optional
        Settings of a DICOMweb source (see :mod:`ctframe.dicomweb`).
    """

    def __init__(self, storage_options: Mapping[str, Any] | None = None, dicomweb: Mapping[str, Any] | None = None):
        self.storage_options = dict(storage_options or {})
        self.dicomweb = dict(dicomweb or {})

    def __repr__(self) -> str:
        keys = sorted(self.storage_options) + sorted(f"dicomweb.{k}" for k in self.dicomweb)
        return f"Access(<{len(keys)} setting(s) hidden: {', '.join(keys) or 'none'}>)"

    def __dask_tokenize__(self) -> str:
        return self.fingerprint

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the settings (what tokens and caches key on); reveals nothing of them."""
        text = json.dumps([self.storage_options, self.dicomweb], sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Access) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __getstate__(self) -> dict[str, Any]:
        return {"storage_options": self.storage_options, "dicomweb": self.dicomweb}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


# --------------------------------------------------------------------------- locations


def location_kind(location: str | os.PathLike[str]) -> str:
    """``"local"``, ``"fsspec"`` or ``"dicomweb"`` for a location as a user writes it.

    ``file://`` URLs count as local paths.
    """
    text = os.fspath(location)
    match = _SCHEME.match(text) if isinstance(text, str) else None
    if match is None:
        return "local"
    scheme = match.group(1).lower()
    if scheme.startswith("dicomweb+"):
        return "dicomweb"
    if scheme == "file":
        return "local"
    return "fsspec"


def is_remote(path: str) -> bool:
    """Whether `path` (a catalog path) is read through fsspec or DICOMweb rather than the local filesystem."""
    return location_kind(path) != "local"


def is_dicomweb(path: str) -> bool:
    """Whether `path` (a location or catalog path) names a DICOMweb resource."""
    return location_kind(path) == "dicomweb"


def local_path(location: str | os.PathLike[str]) -> str:
    """The filesystem path of a local location (``file://`` URLs unwrapped)."""
    text = os.fspath(location)
    if text.lower().startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlsplit(text).path)
    return text


def redact(location: str) -> str:
    """`location` safe to print: no user name or password, and query parameters without their values.

    >>> redact("dicomweb+https://alice:secret@pacs.example/dicom-web?PatientID=123&Modality=CT")
    'dicomweb+https://pacs.example/dicom-web?PatientID=...&Modality=...'
    """
    text = str(location)
    if _SCHEME.match(text) is None:
        return text
    parts = urllib.parse.urlsplit(text)
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(f"{key}=..." for key, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# --------------------------------------------------------------------------- fsspec


@functools.lru_cache(maxsize=32)
def _filesystem_cached(protocol_url: str, options_json: str) -> Any:
    import fsspec

    fs, _ = fsspec.core.url_to_fs(protocol_url, **json.loads(options_json))
    return fs


def filesystem(url: str, access: Access | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of `url` (one per protocol and settings, reused) and the path inside it."""
    import fsspec

    options = access.storage_options if access is not None else {}
    try:
        options_json = json.dumps(options, sort_keys=True)
    except TypeError:  # options fsspec accepts but JSON cannot hold (a session object): no cache
        fs, path = fsspec.core.url_to_fs(url, **options)
        return fs, path
    try:
        protocol = _SCHEME.match(url).group(0)  # type: ignore[union-attr]
        fs = _filesystem_cached(protocol, options_json)
    except (ImportError, ValueError) as exc:
        raise SourceError(
            f"{redact(url)}: no filesystem for this URL ({exc}); install the fsspec implementation "
            "for its scheme (s3fs for s3://, gcsfs for gs://)"
        ) from None
    return fs, fs._strip_protocol(url)


class TransientError(OSError):
    """A request that may succeed when tried again (an HTTP 408, 429 or 5xx answer): :func:`with_retries` retries it.

    For readers that know the status (ctframe.dicomweb); errors of fsspec
    filesystems are recognised by their class or text (:func:`_is_transient`).
    """


def _is_transient(exc: BaseException) -> bool:
    """Whether a failed request may succeed when tried again (timeout, dropped connection, 429, 5xx)."""
    if isinstance(exc, TransientError | TimeoutError | ConnectionError):
        return True
    text = f"{type(exc).__name__} {exc}"
    if re.search(r"\b(429|500|502|503|504)\b|SlowDown|Throttl|ServiceUnavailable|InternalError|timed? ?out", text):
        return True
    name = type(exc).__name__
    return name in {
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ClientOSError",
        "ServerTimeoutError",
    }


def _is_unreachable(exc: BaseException) -> bool:
    """Whether nothing answers at the address (refused, no route): not retried, the client library already did."""
    name = type(exc).__name__
    return (
        isinstance(exc, ConnectionRefusedError)
        or name in {"ClientConnectorError", "EndpointConnectionError", "NewConnectionError"}
        or "Connection refused" in str(exc)
        or "Could not connect" in str(exc)
    )


def with_retries(call: Callable[[], T], what: str, *, retries: int | None = None) -> T:
    """Run `call`, retrying transient failures with exponential backoff (jittered).

    At most `retries` more attempts (default: the ``remote.retries`` configuration),
    ``remote.backoff_s`` doubling between them. `what` names the resource (redacted) in
    the error raised when it still fails: a :class:`~ctframe.errors.SourceError` for an
    unreachable server, a refusal (401/403) or exhausted retries; a
    :class:`~ctframe.errors.DicomReadError` for a missing object (404).
    """
    from ctframe.config import get_config

    settings = get_config()["remote"]
    retries = settings["retries"] if retries is None else retries
    backoff_s = settings["backoff_s"]
    attempt = 0
    while True:
        try:
            return call()
        except FileNotFoundError:
            raise DicomReadError(f"{what}: not found (deleted or moved since the scan?); scan again") from None
        except PermissionError as exc:
            raise SourceError(
                f"{what}: access denied ({_short(exc)}); check the credentials or storage options"
            ) from None
        except Exception as exc:
            if isinstance(exc, DicomReadError | SourceError):
                raise
            if _is_unreachable(exc):
                raise SourceError(
                    f"{what}: server unreachable ({_short(exc)}); check the address and network"
                ) from None
            if _is_transient(exc) and attempt < retries:
                time.sleep(backoff_s * 2**attempt * (1 + random.random()))
                attempt += 1
                continue
            if _is_transient(exc):
                raise SourceError(f"{what}: failed after {attempt + 1} attempts ({_short(exc)})") from None
            raise


def _short(exc: BaseException) -> str:
    """A one-line description of a library error, without credentials or URLs' query strings."""
    text = " ".join(str(exc).split())
    text = re.sub(r"(?i)(signature|credential|x-amz-[a-z-]+|authorization|token|password)=[^&\s]+", r"\1=...", text)
    text = re.sub(r"://[^/@\s]+@", "://", text)
    return f"{type(exc).__name__}: {text[:200]}"


# --------------------------------------------------------------------------- listing


def list_files(location: str | os.PathLike[str], access: Access | None = None) -> list[FileInfo]:
    """Every file under a local or fsspec `location` (a file or a folder/prefix), with size and version.

    Remote listings come sorted by path; a local one in no particular order (callers compare by path).

    Raises
    ------
    NoSeriesError
        Nothing exists at `location`.
    SourceError
        The server cannot be reached or refuses access.
    """
    text = os.fspath(location)
    if location_kind(text) == "local":
        return _local_listing(local_path(text))
    fs, root = filesystem(text, access)
    fs.invalidate_cache()  # a listing is always fresh: fsspec filesystems cache directory listings

    def find() -> dict[str, dict[str, Any]]:
        # a prefix first: over HTTP a folder's index page is itself a "file"
        found = fs.find(root, detail=True, withdirs=False)
        if not found and fs.isfile(root):
            found = {root: fs.info(root)}
        return found

    entries = with_retries(find, redact(text))
    if not entries:
        raise NoSeriesError(f"{redact(text)}: no files there; check the bucket and prefix")
    return [
        FileInfo(fs.unstrip_protocol(name), int(info.get("size") or 0), _version_of(info))
        for name, info in sorted(entries.items())
        if info.get("type", "file") == "file"
    ]


def _local_listing(root: str) -> list[FileInfo]:
    """Every file under the local `root` with size and ``mtime_ns`` (the files of :func:`ctframe.scan.iter_files`).

    One ``os.scandir`` pass per folder and one stat per file (threads do not pay:
    the stats of a warm tree take microseconds, and threads would fight over the
    GIL); folder links are followed once, as by ``iter_files``. A file that cannot
    be stat'ed is listed with size -1 (its header read says why). In no particular
    order (callers compare by path).
    """
    if not os.path.isdir(root):
        from ctframe.scan import iter_files

        return [_stat_info(path) for path in iter_files(root)]  # a file, or the walk's own error
    with gc_paused():
        return _walk_and_stat(root)


def _walk_and_stat(root: str) -> list[FileInfo]:
    entries: list[os.DirEntry[str]] = []
    seen: set[str] = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    (pending.append(entry.path) if is_dir else entries.append(entry))
        except OSError:
            continue
    return _entry_infos(entries)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block (for building many small acyclic objects).

    Tens of thousands of tuples trigger full collections that walk every object of
    the process (pandas, dask...): tens of milliseconds each, for nothing to collect.
    """
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _entry_infos(entries: list[os.DirEntry[str]]) -> list[FileInfo]:
    out = []
    for entry in entries:
        try:
            info = entry.stat()
        except OSError:
            out.append(FileInfo(entry.path, -1, ""))
            continue
        out.append(FileInfo(entry.path, info.st_size, str(info.st_mtime_ns)))
    return out


def _stat_info(path: str) -> FileInfo:
    try:
        info = os.stat(path)
    except OSError:
        return FileInfo(path, -1, "")
    return FileInfo(path, info.st_size, str(info.st_mtime_ns))


def _version_of(info: Mapping[str, Any]) -> str:
    """What identifies an object's version in a listing: its version id, ETag or modification time."""
    for key in ("VersionId", "version_id", "ETag", "etag", "md5Hash", "generation", "LastModified", "mtime"):
        value = info.get(key)
        if value not in (None, "", "null"):
            return str(value).strip('"')
    return ""


# --------------------------------------------------------------------------- bytes


@contextmanager
def open_for_header(path: str, access: Access | None = None) -> Iterator[tuple[IO[bytes], int, str]]:
    """Open `path` for a header read: the file object, its size and its version.

    Remote files are read in ranged requests of :data:`HEADER_BLOCK_BYTES`
    blocks, a further block only when the header is longer (fsspec's block
    cache), never the whole object.
    """
    if not is_remote(path):
        local = local_path(path)
        with open(local, "rb") as fp:
            info = os.fstat(fp.fileno())
            yield fp, info.st_size, str(info.st_mtime_ns)
        return
    fs, inner = filesystem(path, access)
    info = with_retries(lambda: fs.info(inner), redact(path))
    size = int(info.get("size") or 0)
    fp = with_retries(
        lambda: fs.open(inner, "rb", block_size=HEADER_BLOCK_BYTES, cache_type="blockcache", size=size),
        redact(path),
    )
    try:
        yield fp, size, _version_of(info)
    finally:
        fp.close()


def read_range(path: str, start: int, length: int, access: Access | None = None) -> bytes:
    """`length` bytes of the remote file `path` from `start` (fewer only when the file is shorter), retried."""
    fs, inner = filesystem(path, access)
    if length < 0:
        return with_retries(lambda: fs.cat_file(inner, start=start), redact(path))
    data = with_retries(lambda: fs.cat_file(inner, start=start, end=start + length), redact(path))
    if len(data) > length:  # a server that ignores Range (a plain HTTP server) sent the whole file
        _warn_whole_files(urllib.parse.urlsplit(path).netloc.rpartition("@")[2])
        data = data[start : start + length] if len(data) >= start + length else data[:length]
    return data


@functools.lru_cache(maxsize=64)
def _warn_whole_files(host: str) -> None:
    """Say once per host (per process) that its server ignores byte ranges."""
    import warnings

    from ctframe.errors import PerformanceWarning

    warnings.warn(
        f"{host}: the server ignores byte ranges, so every read fetches a whole file", PerformanceWarning, stacklevel=4
    )

"""DICOMweb sources: catalog rows from QIDO-RS and WADO-RS metadata, pixels from WADO-RS frames.

A DICOMweb source is written ``dicomweb+http://[user:password@]host:port/path``
(or ``dicomweb+https://...``): the part after ``dicomweb+`` is the service
root. Query parameters narrow the QIDO-RS series search
(``?PatientID=...&StudyDate=...&Modality=CT``); nothing is narrowed unless
asked. A ``dicomweb_client.DICOMwebClient`` built in Python (for a custom
session, e.g. Google Cloud credentials) is accepted in place of the location.

Discovery asks for no pixel data: one QIDO-RS series search, then the WADO-RS
metadata (DICOM JSON) of each series, whose bulk data URIs are never
followed. Each instance's metadata becomes catalog rows through
:func:`ctframe.dicom.records_of_dataset`, de-identified as a file's header is.

Reads ask WADO-RS for frames as ``application/octet-stream`` in Explicit VR
Little Endian (``1.2.840.10008.1.2.1``), which servers transcode from whatever
they store (Orthanc does for native, RLE and JPEG-family syntaxes its codecs
know); the catalog records that syntax in ``transfer_syntax_uid``, because a
server's metadata need not say how an instance is stored (Orthanc's has no
TransferSyntaxUID and omits PixelData of compressed instances), so the
transfer-syntax columns of a DICOMweb catalog describe what reads receive,
and ``is_lossy`` comes from the LossyImageCompression attribute alone. When
the server cannot transcode an instance (Orthanc 1.10 and JPEG 2000), the
instance is retrieved whole in the syntax it is stored in and decoded by
pydicom, as a file would be.

Paths and privacy
-----------------
A catalog's ``path`` must let a worker read the frame later, yet Study,
Series and SOP Instance UIDs are identifiers that a shared catalog must not
hold. A DICOMweb row's path is ``dicomweb+http://host:port/root#TOKEN``, where
TOKEN seals the three original UIDs with AES-SIV (a deterministic,
authenticated cipher: the same instance always gets the same path, and a
forged or altered token is refused), base64url-encoded. Its key is derived
from the pseudonym salt (HMAC-SHA256 of a fixed label, keyed by
:func:`ctframe.privacy.resolve_salt`) and travels in the
:class:`~ctframe.sources.Access` that read tasks carry, so workers of a
distributed cluster unseal paths without the salt; a persisted catalog
reopened with the same salt rebuilds the same Access. ``file_version`` is a
keyed hash of the instance's metadata (bulk data and retrieve URLs left out):
a new instance, or a changed header, is a new version. Error messages name
the redacted service root and the catalog path, never credentials or
original UIDs.

Credentials
-----------
From the URL's user info, else the environment: ``CTFRAME_DICOMWEB_USER`` and
``CTFRAME_DICOMWEB_PASSWORD`` (HTTP basic auth) or ``CTFRAME_DICOMWEB_TOKEN``
(an ``Authorization: Bearer`` token), or the ``username``/``password``/``token``/
``headers`` arguments of :func:`access_for`. They live in
``Access.dicomweb`` under the service root they were given for (and are sent
to that root only), which no repr, log, dask key or message shows; a root
an Access has no settings for is read with the environment's credentials.
HTTPS certificates are checked by requests (``REQUESTS_CA_BUNDLE`` names a
private CA). dicomweb-client and urllib3 log request URLs at INFO/DEBUG
level: this module masks the UIDs in those records.

Decimal strings arrive as JSON numbers in DICOM JSON, so their text is lost;
the catalog's text columns of numbers (window centre and width) are written
the shortest way for every source (:func:`ctframe.dicom.records_of_dataset`),
so a file's ``49.0000`` and the JSON number ``49`` both read ``49``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import copy
import functools
import hashlib
import hmac
import json
import logging
import os
import pickle
import re
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ctframe.errors import CTFrameError, DicomReadError, ParameterError, SourceError, library_warnings_ignored
from ctframe.privacy import pseudonymous_uid, resolve_salt
from ctframe.sources import Access, TransientError, redact, with_retries

__all__ = ["ENV_PASSWORD", "ENV_TOKEN", "ENV_USER", "access_for", "discover", "read_instance_frames", "seal_key"]

#: Environment variables read for credentials when the location carries none.
ENV_USER = "CTFRAME_DICOMWEB_USER"
ENV_PASSWORD = "CTFRAME_DICOMWEB_PASSWORD"
ENV_TOKEN = "CTFRAME_DICOMWEB_TOKEN"
#: The transfer syntax frames are requested in (and that the catalog records): Explicit VR Little Endian.
FRAME_SYNTAX = "1.2.840.10008.1.2.1"
#: Media types of a frames request. dicomweb-client's default (``*/*``) gets HTTP 400 from Orthanc 1.10.
FRAME_MEDIA_TYPES = (("application/octet-stream", FRAME_SYNTAX),)
#: Media types of a whole-instance request (the fallback when a server cannot transcode frames).
INSTANCE_MEDIA_TYPES = (("application/dicom", "*"),)
#: Series whose metadata discovery requests at once.
METADATA_THREADS = 8
#: Seconds to connect, and to wait for an answer, per request.
TIMEOUT_S = (10.0, 120.0)
#: HTTP statuses of a frames request that mean "not in this syntax" (Orthanc answers 500 for JPEG 2000).
_CANNOT_TRANSCODE = frozenset({400, 406, 415, 500, 501})
_PREFIX = "dicomweb+"
_SEAL_LABEL = b"ctframe.dicomweb.path-seal.v1"
_VERSION_LABEL = b"ctframe.dicomweb.file-version.v1"
#: Symbols of a conformant UID list (digits, dots, the separator), packed two per byte in a token.
_NIBBLES = "0123456789.\\"
#: UID-like text: five or more dotted numbers (an IPv4 address has four, and stays readable).
_UID_TEXT = re.compile(r"\b\d+(?:\.\d+){4,}\b")


# --------------------------------------------------------------------------- logging


class _RedactUIDs(logging.Filter):
    """Replace UID-like numbers in log records of dicomweb-client and urllib3 (they log request URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        if _UID_TEXT.search(message):
            record.msg, record.args = _UID_TEXT.sub("<uid>", message), None
        return True


for _name in ("dicomweb_client.web", "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(_RedactUIDs())


# --------------------------------------------------------------------------- locations and access


def _split_location(location: str) -> tuple[str, str | None, str | None, dict[str, str]]:
    """The service root (``http(s)://host:port/path``, no user info), user, password and QIDO filters."""
    text = str(location)
    if not text.lower().startswith(_PREFIX):
        raise ParameterError(f"{redact(text)}: not a DICOMweb location; write dicomweb+http://host:port/path")
    parts = urllib.parse.urlsplit(text[len(_PREFIX) :])
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ParameterError(
            f"{redact(text)}: a DICOMweb location is dicomweb+http://host:port/path or dicomweb+https://..."
        )
    root = _normal_root(text[len(_PREFIX) :])
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    filters = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=False))
    return root, user, password, filters


def seal_key(salt: str | None = None) -> bytes:
    """The AES-SIV key (64 bytes) that seals DICOMweb paths, derived from the pseudonym salt.

    HMAC-SHA256 keyed by :func:`ctframe.privacy.resolve_salt` ``(salt)`` over a
    fixed label (two blocks): the same salt gives the same key, so a catalog
    reopened with its salt can be read again.

    Examples
    --------
    >>> len(seal_key("my-secret")), seal_key("my-secret") == seal_key("my-secret")
    (64, True)
    """
    secret = resolve_salt(salt).encode("utf-8", "replace")
    return b"".join(hmac.new(secret, _SEAL_LABEL + bytes([i]), hashlib.sha256).digest() for i in (1, 2))


class _ClientHolder:
    """A user's ``DICOMwebClient`` inside an Access: pickled along when it can be, else rebuilt from its settings.

    Its repr (what :class:`~ctframe.sources.Access` hashes for dask tokens)
    names only the service root, so tokens are the same in every process.
    """

    def __init__(self, client: Any):
        self.client = client

    def __repr__(self) -> str:
        return f"DICOMwebClient({self.client.base_url if self.client is not None else 'rebuilt'})"

    @functools.cached_property
    def picklable(self) -> bool:
        return _picklable(self.client)

    def __getstate__(self) -> dict[str, Any]:
        return {"client": self.client if self.client is not None and self.picklable else None}

    def __copy__(self) -> _ClientHolder:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _ClientHolder:
        # pandas deep-copies a catalog's attrs (where an Access may live): keep the user's client, do not pickle it
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.client = state["client"]


def _picklable(obj: Any) -> bool:
    """Whether `obj` travels to a worker by pickle (a lambda hook, a lock or a socket does not)."""
    try:
        pickle.dumps(obj)
    except (pickle.PicklingError, TypeError, AttributeError):
        return False
    return True


def _client_settings(client: Any) -> dict[str, Any]:
    """What a worker needs to rebuild a session like `client`'s: root, prefixes, headers, auth."""
    import requests

    session = getattr(client, "_session", None)
    defaults = requests.utils.default_headers()
    headers = {
        str(k): str(v)
        for k, v in (getattr(session, "headers", None) or {}).items()
        if k not in defaults and k.lower() != "host"
    }
    auth = getattr(session, "auth", None)
    if isinstance(auth, requests.auth.HTTPBasicAuth):
        auth = (auth.username, auth.password)
    if auth is not None and not isinstance(auth, tuple) and not _picklable(auth):
        auth = None
    return {
        "url": _normal_root(client.base_url),
        "prefixes": {k: getattr(client, k, None) for k in ("qido_url_prefix", "wado_url_prefix")},
        "headers": headers,
        "auth": list(auth) if isinstance(auth, tuple) else auth,
        "timeout_s": list(client._timeout) if isinstance(client._timeout, tuple) else client._timeout,
    }


def access_for(
    location: str | None = None,
    *,
    client: Any = None,
    salt: str | None = None,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float | tuple[float, float] = TIMEOUT_S,
) -> Access:
    """The :class:`~ctframe.sources.Access` that discovery and read tasks of a DICOMweb source carry.

    Parameters
    ----------
    location : str, optional
        ``dicomweb+http(s)://[user:password@]host:port/path[?query]``.
    client : dicomweb_client.DICOMwebClient, optional
        A client built in Python, used as it is in this process; workers get
        it pickled when it pickles, else a session rebuilt from its root,
        headers and auth.
    salt : str, optional
        Pseudonym salt (see :func:`ctframe.privacy.resolve_salt`); the key that
        seals paths is derived from it (:func:`seal_key`).
    username, password : str, optional
        HTTP basic auth; default: the location's user info, else
        ``$CTFRAME_DICOMWEB_USER`` and ``$CTFRAME_DICOMWEB_PASSWORD``.
    token : str, optional
        A bearer token (``Authorization: Bearer ...``); default
        ``$CTFRAME_DICOMWEB_TOKEN``.
    headers : mapping, optional
        Further request headers.
    timeout_s : float or (float, float)
        Seconds to connect and to wait for an answer, per request.

    Returns
    -------
    Access
        ``access.dicomweb`` maps the service root (``http(s)://host:port/path``,
        no credentials) to its settings: ``url``, ``auth``, ``headers``,
        ``timeout_s``, ``seal_key`` and, for a client, ``client``. Accesses of
        several services merge with ``dict.update`` (one entry per root), and
        credentials are only ever sent to the root they were given for. Its
        repr names the roots only.

    Raises
    ------
    ParameterError
        Neither a DICOMweb location nor a client, or a malformed location.

    Examples
    --------
    >>> access = access_for("dicomweb+http://alice:secret@127.0.0.1:8042/dicom-web", salt="s")
    >>> list(access.dicomweb), "secret" in repr(access)
    (['http://127.0.0.1:8042/dicom-web'], False)
    """
    settings: dict[str, Any] = {}
    if client is not None:
        settings.update(_client_settings(client))
        settings["client"] = _ClientHolder(client)
    elif location is not None:
        root, url_user, url_password, _ = _split_location(str(location))
        user = username or url_user or os.environ.get(ENV_USER)
        secret = password if password is not None else url_password
        if secret is None and user is not None:
            secret = os.environ.get(ENV_PASSWORD, "")
        bearer = token or os.environ.get(ENV_TOKEN)
        all_headers = dict(headers or {})
        if bearer:
            all_headers.setdefault("Authorization", f"Bearer {bearer}")
        settings.update(
            url=root,
            prefixes={},
            headers=all_headers,
            auth=[user, secret or ""] if user else None,
            timeout_s=list(timeout_s) if isinstance(timeout_s, tuple) else timeout_s,
        )
    else:
        raise ParameterError("access_for needs a dicomweb+http(s):// location or a dicomweb_client.DICOMwebClient")
    settings["seal_key"] = seal_key(salt).hex()
    return Access(dicomweb={settings["url"]: settings})


_CLIENTS: dict[tuple[str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _client_of(settings: Mapping[str, Any], root: str) -> Any:
    """The DICOMweb client for the service `root` with `settings`, one per process and settings (connections reused).

    A user's client is used as it is (a shallow copy whose own retries are
    off: :func:`ctframe.sources.with_retries` retries); otherwise a
    ``requests.Session`` with the access's auth, headers and timeouts.
    """
    user_client = getattr(settings.get("client"), "client", None)
    if user_client is not None and _normal_root(user_client.base_url) == root:
        # not cached: two clients with equal settings may differ in their sessions (hooks, auth objects)
        client = copy.copy(user_client)
        client.set_http_retry_params(retry=False)
        return client
    key = (hashlib.sha256(json.dumps(settings, sort_keys=True, default=repr).encode()).hexdigest(), root)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is not None:
            return client
        import requests
        from dicomweb_client import DICOMwebClient

        session = requests.Session()
        # as many pooled connections as dask has threads, so parallel reads reuse them
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(32, os.cpu_count() or 1))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        auth = settings.get("auth")
        session.auth = tuple(auth) if isinstance(auth, list) else auth
        session.headers.update(settings.get("headers") or {})
        timeout = settings.get("timeout_s", TIMEOUT_S)
        client = DICOMwebClient(
            url=root,
            session=session,
            timeout=tuple(timeout) if isinstance(timeout, list) else timeout,
            **{k: v for k, v in (settings.get("prefixes") or {}).items() if v},
        )
        client.set_http_retry_params(retry=False)
        _CLIENTS[key] = client
        return client


def _normal_root(url: str) -> str:
    """A service root as catalog paths and Access keys write it: no user info, query or trailing slash."""
    parts = urllib.parse.urlsplit(str(url))
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


def _settings_of(access: Access | None, root: str) -> dict[str, Any]:
    """The settings of `access` for the service `root`; without any, built from the environment (credentials, salt)."""
    found = access.dicomweb.get(root) if access is not None else None
    return found if isinstance(found, dict) else access_for(_PREFIX + root).dicomweb[root]


def _key_of(settings: Mapping[str, Any]) -> bytes:
    text = settings.get("seal_key")
    if not text:
        raise ParameterError(
            "this Access has no key to unseal DICOMweb paths; build it with ctframe.dicomweb.access_for(location, "
            "salt=<the catalog's salt>)"
        )
    return bytes.fromhex(text)


# --------------------------------------------------------------------------- sealed paths


def _seal(key: bytes, uids: Sequence[str]) -> str:
    """The base64url token sealing `uids` (study, series, instance) with AES-SIV under `key`."""
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    text = "\\".join(uids)
    if all(ch in _NIBBLES for ch in text):  # conformant UIDs: two symbols per byte
        codes = [_NIBBLES.index(ch) for ch in text] + ([15] if len(text) % 2 else [])
        plain = b"\x01" + bytes(codes[i] << 4 | codes[i + 1] for i in range(0, len(codes), 2))
    else:
        plain = b"\x00" + text.encode("utf-8")
    sealed = AESSIV(key).encrypt(plain, [_SEAL_LABEL])
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def _unseal(key: bytes, token: str, where: str) -> tuple[str, str, str]:
    """The (study, series, instance) UIDs sealed in `token`; DicomReadError when it was sealed with another key."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        plain = AESSIV(key).decrypt(sealed, [_SEAL_LABEL])
    except (InvalidTag, ValueError):
        raise DicomReadError(
            f"{where}: the path's token does not open with this access's key; read the catalog with the salt "
            "it was scanned with (access_for(location, salt=...))"
        ) from None
    if plain[:1] == b"\x01":
        symbols = []
        for byte in plain[1:]:
            symbols.extend((byte >> 4, byte & 15))
        text = "".join(_NIBBLES[c] for c in symbols if c < len(_NIBBLES))
    else:
        text = plain[1:].decode("utf-8")
    study, series, instance = text.split("\\")
    return study, series, instance


def _path_of(root: str, key: bytes, study: str, series: str, instance: str) -> str:
    return f"{_PREFIX}{root}#{_seal(key, (study, series, instance))}"


def _split_path(path: str) -> tuple[str, str]:
    """The service root (``http(s)://...``) and the token of a catalog path."""
    head, _, token = path.partition("#")
    return head[len(_PREFIX) :], token


def _file_version(key: bytes, metadata: Mapping[str, Any]) -> str:
    """A keyed hash of an instance's metadata, without bulk data and retrieve URLs (they name the host)."""
    kept = {
        tag: element
        for tag, element in metadata.items()
        if isinstance(element, Mapping) and "BulkDataURI" not in element and element.get("vr") != "UR"
    }
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    digest = hmac.new(key, _VERSION_LABEL + b"\x00" + text.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"dicomweb:{digest[:32]}"


# --------------------------------------------------------------------------- requests


def _call(fn: Any, what: str, *, missing: str = "read") -> Any:
    """Run the request `fn`, turning requests' errors into what :func:`~ctframe.sources.with_retries` understands.

    404/410: ``FileNotFoundError`` when reading (the instance is gone since the
    scan: DicomReadError), a SourceError when searching (no such service).
    401/403: SourceError. 408/429/5xx, timeouts and dropped connections:
    transient (retried). Connection refused: SourceError, at once.
    """
    import requests

    try:
        return fn()
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        reason = exc.response.reason if exc.response is not None else ""
        if status in (404, 410):
            if missing == "read":
                raise FileNotFoundError(f"HTTP {status}") from None
            raise SourceError(
                f"{what}: HTTP {status} {reason}; no DICOMweb service at this path, check the URL"
            ) from None
        if status in (401, 403):
            raise SourceError(
                f"{what}: access denied (HTTP {status} {reason}); check the credentials (user info in the URL, "
                f"${ENV_USER} and ${ENV_PASSWORD}, or ${ENV_TOKEN})"
            ) from None
        if status in (408, 429) or status >= 500:
            raise TransientError(f"HTTP {status} {reason}") from None
        raise SourceError(f"{what}: HTTP {status} {reason}") from None
    except requests.Timeout:
        raise TimeoutError("request timed out") from None
    except requests.ConnectionError as exc:
        if _refused(exc):
            raise SourceError(
                f"{what}: server unreachable (connection refused or unknown host); check the address and that "
                "the server runs"
            ) from None
        raise ConnectionResetError("connection dropped") from None


def _refused(exc: BaseException) -> bool:
    """Whether a requests ConnectionError means no server answers (refused, unknown host) rather than a drop."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ConnectionRefusedError) or type(item).__name__ in (
            "NewConnectionError",
            "NameResolutionError",
        ):
            return True
        stack.extend([item.__cause__, item.__context__, *(a for a in item.args if isinstance(a, BaseException))])
        stack.append(
            getattr(item, "reason", None) if isinstance(getattr(item, "reason", None), BaseException) else None
        )
    return False


# --------------------------------------------------------------------------- discovery


def _no_bulk_data(tag: Any, vr: Any, uri: Any) -> bytes:
    """Bulk data handler for ``Dataset.from_json``: never fetches, the value stays empty."""
    return b""


def _dataset_of(metadata: Mapping[str, Any]) -> Any:
    from pydicom.dataset import Dataset

    return Dataset.from_json(dict(metadata), bulk_data_uri_handler=_no_bulk_data)


def _first_value(metadata: Mapping[str, Any], tag: str) -> str:
    values = (metadata.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def discover(
    location_or_client: Any,
    *,
    salt: str | None = None,
    include_phi: bool = False,
    access: Access | None = None,
    known_series: Mapping[str, int] | None = None,
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Catalog rows of the images of a DICOMweb service, from QIDO-RS and WADO-RS metadata (no pixel data).

    Parameters
    ----------
    location_or_client : str or dicomweb_client.DICOMwebClient
        ``dicomweb+http(s)://...`` (query parameters become QIDO-RS series
        search filters), or a client.
    salt, include_phi
        As in :func:`ctframe.scan`.
    access : Access, optional
        From :func:`access_for` with the same salt (built here when omitted
        or without DICOMweb settings). Pass the same Access to the reads:
        it holds the credentials and the key that opens the catalog's paths.
    known_series : mapping, optional
        Pseudonymous SeriesInstanceUID -> number of instances already in a
        persisted catalog (:mod:`ctframe.catalog_store`): a series whose QIDO-RS
        ``NumberOfSeriesRelatedInstances`` still says that number is not read
        again, and is listed in ``catalog.attrs["unchanged_series"]``.

    Returns
    -------
    catalog : DataFrame
        One row per frame, columns of :func:`ctframe.scan` (before stacking).
    problems : list of dict
        ``{"path": ..., "reason": ...}`` for each instance that is not an
        image or whose metadata cannot be read (paths sealed, reasons free of
        original UIDs).

    Raises
    ------
    SourceError
        The server is unreachable, refuses the credentials, answers an error
        that retries did not cure, or has no DICOMweb service at that path.
    ParameterError
        `access` was built with another salt.

    Notes
    -----
    **Computes** (metadata only: bulk data URIs are never followed).
    """
    from ctframe.scan import catalog_columns

    salt = resolve_salt(salt)  # once: every record and path of this scan under one salt
    is_location = isinstance(location_or_client, str | os.PathLike)
    location = os.fspath(location_or_client) if is_location else None
    if location is not None:
        root, _, _, filters = _split_location(location)
    else:
        root, filters = _normal_root(location_or_client.base_url), {}
    settings = access.dicomweb.get(root) if access is not None else None
    if not isinstance(settings, dict):  # no access, or one for other services or fsspec only
        built = access_for(location, client=None if is_location else location_or_client, salt=salt)
        settings = built.dicomweb[root]
    key = _key_of(settings)
    if key != seal_key(salt):
        raise ParameterError("discover: `access` was built with another salt than `salt`; build both from one salt")
    where = redact(_PREFIX + root)
    client = _client_of(settings, root)
    found = with_retries(
        lambda: _call(
            lambda: client.search_for_series(search_filters=filters or None, get_remaining=True),
            where,
            missing="search",
        ),
        where,
    )
    series = sorted({(_first_value(s, "0020000D"), _first_value(s, "0020000E")) for s in found})
    unchanged: set[str] = set()
    if known_series:
        for item in found:
            pseudonym = pseudonymous_uid(_first_value(item, "0020000E"), salt=salt)
            count = _first_value(item, "00201209")
            if count.isdigit() and known_series.get(pseudonym) == int(count):
                unchanged.add(pseudonym)
        series = [uids for uids in series if pseudonymous_uid(uids[1], salt=salt) not in unchanged]
    records: list[dict[str, Any]] = []
    problems: list[dict[str, str]] = []
    read = functools.partial(_series_records, client, root, key, salt, include_phi)
    # series metadata requests overlap (the server's latency dominates); results keep the series order
    with (
        library_warnings_ignored(),  # entered here, once, for the metadata threads (see its docstring)
        concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(METADATA_THREADS, len(series)))) as pool,
    ):
        for series_records, series_problems in pool.map(read, series):
            records.extend(series_records)
            problems.extend(series_problems)
    catalog = pd.DataFrame.from_records(records, columns=catalog_columns(include_phi))
    catalog.attrs["unchanged_series"] = tuple(sorted(unchanged))
    return catalog, problems


def _series_records(
    client: Any, root: str, key: bytes, salt: str, include_phi: bool, uids: tuple[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Catalog records and problems of one series, from its WADO-RS metadata."""
    from ctframe.dicom import records_of_dataset

    study_uid, series_uid = uids
    series_path = _path_of(root, key, study_uid, series_uid, "")
    try:
        fetch = functools.partial(client.retrieve_series_metadata, study_uid, series_uid)
        metadata = with_retries(functools.partial(_call, fetch, series_path), series_path)
    except DicomReadError as exc:  # gone between the search and now
        return [], [{"path": series_path, "reason": _reason(exc, series_path)}]
    records: list[dict[str, Any]] = []
    problems: list[dict[str, str]] = []
    for item in sorted(metadata, key=lambda m: _first_value(m, "00080018")):
        path = _path_of(root, key, study_uid, series_uid, _first_value(item, "00080018"))
        try:
            records.extend(_records_of(item, path, key, salt, include_phi, records_of_dataset))
        except CTFrameError as exc:
            problems.append({"path": path, "reason": _reason(exc, path)})
    return records, problems


def _records_of(
    metadata: Mapping[str, Any], path: str, key: bytes, salt: str, include_phi: bool, records_of_dataset: Any
) -> list[dict[str, Any]]:
    """Catalog records of one instance's metadata (DicomReadError when pydicom cannot read it)."""
    from ctframe.dicom import _raised_in_pydicom

    with library_warnings_ignored():  # odd values surface as NaN fields or problems, as for files
        try:
            ds = _dataset_of(metadata)
        except Exception as exc:
            if not _raised_in_pydicom(exc):  # ctframe's own code failed: a bug, not bad metadata
                raise
            raise DicomReadError(f"{redact(path)}: unreadable DICOM JSON metadata ({type(exc).__name__})") from None
        pixel_keys = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
        # servers omit PixelData of compressed instances (Orthanc): an image is known by its matrix then
        has_pixels = any(k in ds for k in pixel_keys) or ("Rows" in ds and "Columns" in ds and "BitsAllocated" in ds)
        try:
            return records_of_dataset(
                ds,
                path=path,
                file_size=-1,
                file_version=_file_version(key, metadata),
                pixel_data_offset=-1,
                has_pixels=has_pixels,
                undefined_length=False,
                salt=salt,
                include_phi=include_phi,
                transfer_syntax_uid=FRAME_SYNTAX,
            )
        except CTFrameError:
            raise
        except Exception as exc:  # pydicom converts JSON values lazily and raises many types
            if not _raised_in_pydicom(exc):  # ctframe's own code failed: a bug, not bad metadata
                raise
            raise DicomReadError(f"{redact(path)}: unreadable metadata value ({type(exc).__name__})") from None


def _reason(exc: Exception, path: str) -> str:
    text = str(exc)
    for prefix in (path, redact(path)):
        if text.startswith(prefix + ": "):
            return text[len(prefix) + 2 :]
    return text


# --------------------------------------------------------------------------- reads


def read_instance_frames(refs: Sequence[Any], access: Access | None = None) -> list[np.ndarray]:
    """The stored values of the frames `refs` (:class:`~ctframe.dicom.SliceRef`) of one DICOMweb instance.

    One WADO-RS frames request (frames are 1-based there), as
    ``application/octet-stream`` in Explicit VR Little Endian; each frame is
    checked for its byte count, viewed in the dtype of BitsAllocated and
    PixelRepresentation and corrected by :func:`ctframe.dicom.keep_stored_bits`
    (what pydicom's ``pixel_array`` gives). An instance the server cannot
    transcode is retrieved whole and decoded by pydicom. This is the DICOMweb
    reader of :func:`ctframe.dicom.read_frames`, which stacks and checks the
    frames of every reader the same way.

    Parameters
    ----------
    refs : sequence of SliceRef
        Frames of one instance (one sealed path), in output order.
    access : Access, optional
        From :func:`access_for` (settings per service root). A root it has
        no settings for (or no access at all) is read with the environment's
        credentials and the configured salt.

    Raises
    ------
    DicomReadError
        The instance is gone since the scan (404), a frame has the wrong byte
        count, cannot be decoded, or the path was sealed with another salt.
    SourceError
        The server is unreachable, refuses access, or keeps failing.

    Notes
    -----
    **Computes**.
    """
    first = refs[0]
    root, token = _split_path(first.path)
    settings = _settings_of(access, root)  # credentials go only to the service they were given for
    uids = _unseal(_key_of(settings), token, redact(first.path))
    client = _client_of(settings, root)
    numbers = [ref.frame + 1 for ref in refs]
    what = f"{first.path} frame(s) {_ranges(numbers)}"
    fetch = functools.partial(_fetch, client, uids, first, numbers, what)
    return with_retries(functools.partial(_call, fetch, what), what)


def _ranges(numbers: Sequence[int]) -> str:
    return f"{numbers[0]}" if len(numbers) == 1 else f"{numbers[0]}..{numbers[-1]} ({len(numbers)})"


def _fetch(client: Any, uids: tuple[str, str, str], ref: Any, numbers: list[int], what: str) -> list[np.ndarray]:
    """The stored values of frames `numbers` (1-based) of one instance: octet-stream frames, else the whole instance."""
    import requests

    from ctframe.dicom import _pixel_dtype, keep_stored_bits

    simple = ref.bits_allocated in (8, 16, 32) and ref.samples_per_pixel == 1
    if simple:
        try:
            parts = client.retrieve_instance_frames(*uids, frame_numbers=numbers, media_types=FRAME_MEDIA_TYPES)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status not in _CANNOT_TRANSCODE:
                raise
        else:
            if len(parts) != len(numbers):
                raise DicomReadError(f"{what}: the server sent {len(parts)} frame(s) for {len(numbers)} requested")
            little = _pixel_dtype(ref.pixel_representation, ref.bits_allocated)
            expected = ref.rows * ref.columns * little.itemsize
            arrays = []
            for number, part in zip(numbers, parts, strict=True):
                if len(part) not in (expected, expected + expected % 2):  # one pad byte makes an odd length even
                    raise DicomReadError(
                        f"{what}: frame {number} has {len(part)} bytes, expected {expected} ({ref.rows}x{ref.columns} "
                        f"at {ref.bits_allocated} bits); if the instance changed since the scan, scan again"
                    )
                array = np.frombuffer(part, little, count=ref.rows * ref.columns).reshape(ref.rows, ref.columns).copy()
                arrays.append(
                    keep_stored_bits(array, ref.bits_stored) if ref.bits_stored < ref.bits_allocated else array
                )
            return arrays
    return _decode_instance(client.retrieve_instance(*uids, media_types=INSTANCE_MEDIA_TYPES), numbers, what)


def _decode_instance(ds: Any, numbers: list[int], what: str) -> list[np.ndarray]:
    """Frames `numbers` (1-based) of a whole retrieved instance, decoded by pydicom (as a file's would be)."""
    try:
        with library_warnings_ignored():
            pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types
        raise DicomReadError(
            f"{what}: cannot decode pixel data ({type(exc).__name__}); "
            "install the pylibjpeg plugins or check the instance"
        ) from None
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if n_frames == 1:
        pixels = pixels[np.newaxis]
    if max(numbers) > len(pixels):
        raise DicomReadError(
            f"{what}: the instance holds {len(pixels)} frame(s) now; if it changed since the scan, scan again"
        )
    return [np.asarray(pixels[n - 1]) for n in numbers]

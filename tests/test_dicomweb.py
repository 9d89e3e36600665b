"""DICOMweb sources against a real Orthanc (with its DICOMweb plugin and basic auth) on loopback.

The `orthanc` fixture (tests/_servers.py) starts the server once per test session; each test
narrows its searches to the patients it uploaded, so it does not depend on what others stored.
"""

from __future__ import annotations

import copy
import inspect
import logging
import pickle
import urllib.parse
from pathlib import Path

import dask.base
import numpy as np
import pandas as pd
import pydicom
import pytest

import ctframe
from ctframe import dicomweb
from ctframe.dicom import SliceRef, read_frames, stored_dtype
from ctframe.errors import DicomReadError, ParameterError, SourceError
from ctframe.scan import assign_stacks

SALT = "dicomweb-test-salt"
LIDC_PATIENT = "LIDC-IDRI-0001"
#: Columns that say where an instance lives, not what it holds: they differ between a file and a DICOMweb row.
LOCATION_COLUMNS = ["path", "file_size", "mtime_ns", "file_version", "pixel_data_offset"]
#: Columns that describe how pixels arrive: octet-stream frames in Explicit VR Little Endian over DICOMweb.
SYNTAX_COLUMNS = ["transfer_syntax_uid", "transfer_syntax", "is_compressed"]


def _with_credentials(url: str, user: str, password: str, query: str = "") -> str:
    """`url` (``dicomweb+http://host:port/path``) with user info and a query string."""
    scheme, rest = url.split("://", 1)
    user_info = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@"
    return f"{scheme}://{user_info}{rest}" + (f"?{query}" if query else "")


def _refs(rows: pd.DataFrame) -> list[SliceRef]:
    return [
        SliceRef(
            *(
                str(v) if name in ("path", "transfer_syntax_uid") else int(v)
                for name, v in zip(SliceRef._fields, values, strict=True)
            )
        )
        for values in zip(*(rows[name].to_numpy() for name in SliceRef._fields), strict=True)
    ]


def _original_uids(paths: list[Path]) -> set[str]:
    uids = set()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    return uids


@pytest.fixture(scope="module")
def lidc_files(lidc_dir: Path) -> list[Path]:
    return sorted(lidc_dir.glob("*.dcm"))


@pytest.fixture(scope="module")
def lidc_local(lidc_files) -> pd.DataFrame:
    """The local scan of the same files (the folder also holds the radiologists' XML)."""
    return ctframe.scan(lidc_files, salt=SALT)


@pytest.fixture(scope="module")
def lidc_web(orthanc, lidc_files):
    """Orthanc holding the LIDC series; the location narrowed to its patient, with credentials in the URL."""
    orthanc.upload(lidc_files)
    return orthanc, _with_credentials(orthanc.dicomweb_url, *orthanc.auth, f"PatientID={LIDC_PATIENT}")


@pytest.fixture(scope="module")
def lidc_catalog(lidc_web):
    _, location = lidc_web
    catalog, problems = dicomweb.discover(location, salt=SALT, access=dicomweb.access_for(location, salt=SALT))
    return catalog, problems


def _compare(web: pd.DataFrame, local: pd.DataFrame, skip: list[str]) -> None:
    key = ["sop_instance_uid", "frame"]
    web = web.sort_values(key, ignore_index=True)
    local = local.sort_values(key, ignore_index=True)
    columns = [c for c in local.columns if c not in skip]
    assert set(columns) <= set(web.columns)
    # DICOM JSON carries decimal strings as numbers, so their text may come back shorter ("49.0000" -> "49")
    text_numbers = ["window_center", "window_width"]
    exact = [c for c in columns if c not in text_numbers]
    pd.testing.assert_frame_equal(web[exact], local[exact])
    for column in set(text_numbers) & set(columns):
        as_numbers = [[float(v) for v in str(text).split("\\")] if text else [] for text in web[column]]
        assert as_numbers == [[float(v) for v in str(text).split("\\")] if text else [] for text in local[column]]


def test_discover__catalog_equals_local_scan(lidc_catalog, lidc_local):
    catalog, problems = lidc_catalog
    local = lidc_local
    assert problems == []
    assert len(catalog) == len(local) == 133
    # everything but where the bytes live, including stacks and slice positions, and the syntax (native LE here)
    _compare(assign_stacks(catalog), local, LOCATION_COLUMNS)
    # integral decimal strings keep their text exactly
    ordered = catalog.sort_values("sop_instance_uid")["window_center"].tolist()
    assert ordered == local.sort_values("sop_instance_uid")["window_center"].tolist()
    assert (catalog["file_size"] == -1).all() and (catalog["mtime_ns"] == -1).all()
    assert catalog["path"].is_unique and catalog["file_version"].is_unique
    assert catalog["path"].str.startswith(lidc_catalog[0]["path"].iloc[0].split("#")[0] + "#").all()


def test_discover__retrieves_no_pixel_data(orthanc, lidc_web, lidc_catalog, counting_proxy):
    proxy = counting_proxy("127.0.0.1", orthanc.port)
    through_proxy = _with_credentials(f"dicomweb+{proxy.url}/dicom-web", *orthanc.auth, f"PatientID={LIDC_PATIENT}")
    catalog, _ = dicomweb.discover(through_proxy, salt=SALT)
    pixel_bytes = int((catalog["rows"] * catalog["columns"] * catalog["bits_allocated"] // 8).sum())
    discovery_bytes = proxy.total_bytes
    assert len(catalog) == 133
    assert 0 < discovery_bytes < 0.02 * pixel_bytes, (discovery_bytes, pixel_bytes)
    targets = [urllib.parse.urlsplit(r.target).path for r in proxy.requests]
    assert targets and all(t.endswith(("/series", "/metadata")) for t in targets), targets
    assert all(r.method == "GET" for r in proxy.requests)
    # versions come from the metadata, not from the address it was fetched through (the proxy's port)
    assert sorted(catalog["file_version"]) == sorted(lidc_catalog[0]["file_version"])
    assert not set(catalog["path"]) & set(lidc_catalog[0]["path"])
    # the proxy does count pixels: one frame read through it moves at least that frame's bytes
    proxy.reset()
    one = read_frames(
        _refs(catalog.head(1)), dtype=np.dtype("int16"), access=dicomweb.access_for(through_proxy, salt=SALT)
    )
    assert one.shape == (1, 512, 512)
    assert proxy.bytes_to_client >= 512 * 512 * 2

    # the requests themselves: a series search and series metadata, never frames, rendered images or bulk data
    client = orthanc.client()
    urls: list[str] = []
    client._session.hooks["response"].append(lambda response, *a, **k: urls.append(response.request.url))
    catalog_from_client, _ = dicomweb.discover(client, salt=SALT)
    assert len(catalog_from_client) >= 133
    assert urls and all(("/frames" not in u and "/rendered" not in u and "/bulk" not in u) for u in urls)
    assert {urllib.parse.urlsplit(u).path.rsplit("/", 1)[-1] for u in urls} == {"series", "metadata"}


def test_read_frames__catalog_path_carries_no_credentials(lidc_catalog, lidc_web, monkeypatch):
    _, location = lidc_web
    catalog, _ = lidc_catalog
    rows = catalog.sort_values(["sop_instance_uid", "frame"], ignore_index=True).head(2)
    monkeypatch.delenv(dicomweb.ENV_USER, raising=False)
    monkeypatch.delenv(dicomweb.ENV_TOKEN, raising=False)
    # an access built from the path alone has no credentials: Orthanc refuses it
    bare = dicomweb.access_for(rows["path"].iloc[0].split("#")[0], salt=SALT)
    with pytest.raises(SourceError, match=r"access denied \(HTTP 401") as info:
        read_frames(_refs(rows), dtype=np.dtype("int16"), access=bare)
    assert "\n" not in str(info.value)
    frames = read_frames(_refs(rows), dtype=np.dtype("int16"), access=dicomweb.access_for(location, salt=SALT))
    assert frames.shape == (2, 512, 512) and frames.std() > 0


def test_volume__hu_and_stored_volumes_equal_the_files(lidc_catalog, lidc_local, lidc_web, monkeypatch):
    orthanc, location = lidc_web
    catalog, _ = lidc_catalog
    local = lidc_local
    # a worker that rebuilds its access from the environment (salt and credentials), as a reopened catalog would
    monkeypatch.setenv("CTFRAME_SALT", SALT)
    monkeypatch.setenv(dicomweb.ENV_USER, orthanc.username)
    monkeypatch.setenv(dicomweb.ENV_PASSWORD, orthanc.password)
    from ctframe.io import volume_from_catalog

    kwargs = {}
    if "access" in inspect.signature(volume_from_catalog).parameters:
        kwargs["access"] = dicomweb.access_for(location, salt=SALT)
    web_volume = volume_from_catalog(assign_stacks(catalog), slices_per_chunk=16, **kwargs)
    local_volume = volume_from_catalog(local, slices_per_chunk=16)
    web_stored, local_stored = web_volume.values, local_volume.values
    assert web_stored.dtype == local_stored.dtype == np.int16
    np.testing.assert_array_equal(web_stored, local_stored)
    web_hu, local_hu = ctframe.to_hu(web_volume).values, ctframe.to_hu(local_volume).values
    np.testing.assert_array_equal(web_hu, local_hu)
    assert np.isfinite(web_hu).any() and web_hu.dtype == np.float32


def test_access__credentials_hidden_and_picklable(lidc_web, lidc_catalog):
    orthanc, location = lidc_web
    access = dicomweb.access_for(location, salt=SALT)
    assert list(access.dicomweb) == [orthanc.dicomweb_root]
    assert access.dicomweb[orthanc.dicomweb_root]["auth"] == [orthanc.username, orthanc.password]
    for text in (repr(access), str(dask.base.tokenize(access)), repr(lidc_catalog[0]["path"].tolist())):
        assert orthanc.password not in text and orthanc.username not in text
    assert dask.base.tokenize(access) == dask.base.tokenize(dicomweb.access_for(location, salt=SALT))
    assert dask.base.tokenize(access) != dask.base.tokenize(dicomweb.access_for(location, salt="another salt"))
    # a worker gets it pickled and reads with it
    clone = pickle.loads(pickle.dumps(access))
    catalog, _ = lidc_catalog
    frames = read_frames(_refs(catalog.head(3)), dtype=np.dtype("int16"), access=clone)
    assert frames.shape == (3, 512, 512)


def test_access__credentials_from_environment(lidc_web, monkeypatch):
    orthanc, _ = lidc_web
    plain = f"{orthanc.dicomweb_url}?PatientID={LIDC_PATIENT}"
    with pytest.raises(SourceError, match="access denied"):
        dicomweb.discover(plain, salt=SALT)
    monkeypatch.setenv(dicomweb.ENV_USER, orthanc.username)
    monkeypatch.setenv(dicomweb.ENV_PASSWORD, orthanc.password)
    catalog, _ = dicomweb.discover(plain, salt=SALT)
    assert len(catalog) == 133


def test_paths__hold_no_original_uids(lidc_web, lidc_catalog, lidc_files, caplog):
    orthanc, location = lidc_web
    catalog, _ = lidc_catalog
    originals = _original_uids(lidc_files)
    shared_text = "\n".join(catalog["path"].tolist() + catalog["file_version"].tolist())
    assert not any(uid in shared_text for uid in originals)
    assert not any(uid in str(v) for uid in originals for v in catalog.astype(str).to_numpy().ravel())
    # the token opens to the original UIDs with the salt's key (include_phi shows them for the check)
    with_phi, _ = dicomweb.discover(location, salt=SALT, include_phi=True)
    row = with_phi.iloc[0]
    token = row["path"].split("#", 1)[1]
    opened = dicomweb._unseal(dicomweb.seal_key(SALT), token, "test")
    assert opened == (row["original_study_uid"], row["original_series_uid"], row["original_sop_instance_uid"])
    assert set(with_phi["path"]) == set(catalog["path"])  # deterministic: the same instance, the same path
    # another salt: other paths, and its access cannot open these
    other, _ = dicomweb.discover(location, salt="another salt")
    assert not set(other["path"]) & set(catalog["path"])
    with pytest.raises(DicomReadError, match="does not open with this access's key") as info:
        read_frames(_refs(catalog.head(1)), dtype=np.dtype("int16"), access=dicomweb.access_for(location, salt="x"))
    assert not any(uid in str(info.value) for uid in originals)
    # dicomweb-client and urllib3 log request URLs: the UIDs in them are masked
    with caplog.at_level(logging.DEBUG):
        dicomweb.discover(location, salt=SALT)
        read_frames(_refs(catalog.head(1)), dtype=np.dtype("int16"), access=dicomweb.access_for(location, salt=SALT))
    assert "<uid>" in caplog.text
    assert not any(uid in caplog.text for uid in originals)
    assert orthanc.password not in caplog.text


def test_discover__wrong_password_is_one_line_source_error(lidc_web):
    orthanc, _ = lidc_web
    wrong = _with_credentials(orthanc.dicomweb_url, orthanc.username, "not-the-password-123")
    with pytest.raises(SourceError, match=r"access denied \(HTTP 401") as info:
        dicomweb.discover(wrong, salt=SALT)
    message = str(info.value)
    assert "\n" not in message
    assert "not-the-password-123" not in message and orthanc.username not in message
    assert message.startswith(orthanc.dicomweb_url + ": ")


def test_discover__unreachable_port_is_source_error(orthanc):
    from _servers import unused_port

    location = f"dicomweb+http://user:pw-secret@127.0.0.1:{unused_port()}/dicom-web"
    with pytest.raises(SourceError, match="server unreachable") as info:
        dicomweb.discover(location, salt=SALT)
    assert "pw-secret" not in str(info.value) and "\n" not in str(info.value)


def test_discover__no_dicomweb_service_at_path_is_source_error(orthanc):
    location = _with_credentials(f"dicomweb+{orthanc.base_url}/no-such-root", *orthanc.auth)
    with pytest.raises(SourceError, match="HTTP 404"):
        dicomweb.discover(location, salt=SALT)


def test_read_frames__deleted_series_is_dicom_read_error(orthanc, shared_data):
    files = sorted((shared_data / "dcm_qa_ct" / "Philips_S2010_brain5mm_notilt").iterdir())
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    orthanc.upload(files)
    location = _with_credentials(orthanc.dicomweb_url, *orthanc.auth, f"SeriesInstanceUID={ds.SeriesInstanceUID}")
    access = dicomweb.access_for(location, salt=SALT)
    catalog, problems = dicomweb.discover(location, salt=SALT, access=access)
    assert len(catalog) == len(files) and problems == []
    dtype = stored_dtype(catalog["bits_allocated"], catalog["pixel_representation"])
    before = read_frames(_refs(catalog.head(2)), dtype=dtype, access=access)
    assert before.shape[0] == 2
    assert orthanc.delete_series(str(ds.SeriesInstanceUID)) == 1
    with pytest.raises(DicomReadError, match=r"not found \(deleted or moved since the scan\?\); scan again") as info:
        read_frames(_refs(catalog.head(2)), dtype=dtype, access=access)
    message = str(info.value)
    assert str(ds.SeriesInstanceUID) not in message and str(ds.StudyInstanceUID) not in message
    assert orthanc.password not in message and "\n" not in message
    assert dicomweb.discover(location, salt=SALT, access=access)[0].empty


@pytest.mark.parametrize(
    "name",
    [
        "wg04-robyoung/CT1_RLE.dcm",  # RLE: Orthanc transcodes it to little endian frames
        "wg04-robyoung/CT1_J2KR.dcm",  # JPEG 2000: Orthanc 1.10 cannot transcode; the instance is decoded here
        "wg04-robyoung/CT1_J2KI.dcm",  # JPEG 2000 lossy (LossyImageCompression 01), decoded here
        "wg04-robyoung/CT1_JPLL.dcm",  # JPEG Lossless, transcoded by Orthanc
        "wg04-robyoung/CT1_JLSN.dcm",  # JPEG-LS near-lossless, transcoded by Orthanc
        "pydicom-data-1.0.0/eCT_Supplemental.dcm",  # Enhanced CT, 2 frames, per-frame positions
        "pydicom-data-1.0.0/emri_small_big_endian.dcm",  # Enhanced MR, 10 frames, big endian, 12 of 16 bits
    ],
)
def test_read_frames__other_encodings_equal_the_file(orthanc, edge_cases, name):
    path = edge_cases / name
    ds = pydicom.dcmread(path)
    orthanc.upload([path])
    location = _with_credentials(orthanc.dicomweb_url, *orthanc.auth, f"SeriesInstanceUID={ds.SeriesInstanceUID}")
    access = dicomweb.access_for(location, salt=SALT)
    catalog, problems = dicomweb.discover(location, salt=SALT, access=access)
    local = ctframe.scan([path], salt=SALT)
    assert problems == []
    catalog = catalog[catalog["sop_instance_uid"].isin(local["sop_instance_uid"])]
    assert len(catalog) == len(local) == int(getattr(ds, "NumberOfFrames", 1) or 1)
    skip = LOCATION_COLUMNS + SYNTAX_COLUMNS  # is_lossy compared: these files carry LossyImageCompression
    _compare(assign_stacks(catalog), local, skip)
    rows = catalog.sort_values("frame")
    dtype = stored_dtype(rows["bits_allocated"], rows["pixel_representation"])
    web = read_frames(_refs(rows), dtype=dtype, access=access)
    expected = ds.pixel_array.reshape(len(rows), ds.Rows, ds.Columns)
    np.testing.assert_array_equal(web, expected)
    # only some of the frames, out of order
    if len(rows) > 2:
        picked = rows.iloc[[2, 0]]
        np.testing.assert_array_equal(read_frames(_refs(picked), dtype=dtype, access=access), expected[[2, 0]])
    # which request served the pixels: frames when Orthanc transcodes, the whole instance when it cannot (JPEG 2000)
    client = orthanc.client()
    urls: list[str] = []
    client._session.hooks["response"].append(lambda response, *a, **k: urls.append(response.request.url))
    read_frames(_refs(rows), dtype=dtype, access=dicomweb.access_for(client=client, salt=SALT))
    served_by = urllib.parse.urlsplit(urls[-1]).path.split("/")[-2]
    assert served_by == ("instances" if "J2K" in name else "frames"), urls


def test_discover__non_images_are_problems(orthanc, edge_cases):
    path = edge_cases / "pydicom-3.0.2" / "test-SR.dcm"
    ds = pydicom.dcmread(path)
    orthanc.upload([path])
    location = _with_credentials(orthanc.dicomweb_url, *orthanc.auth, f"SeriesInstanceUID={ds.SeriesInstanceUID}")
    catalog, problems = dicomweb.discover(location, salt=SALT)
    assert catalog.empty
    assert len(problems) == 1
    assert "no image pixel data" in problems[0]["reason"] and "not an image" in problems[0]["reason"]
    assert str(ds.SOPInstanceUID) not in str(problems) and str(ds.SeriesInstanceUID) not in str(problems)
    assert problems[0]["path"].startswith(orthanc.dicomweb_url + "#")


def test_discover__client_in_python_matches_location(lidc_web, lidc_catalog):
    orthanc, _ = lidc_web
    catalog, _ = lidc_catalog
    client = orthanc.client()
    client._session.hooks["response"].append(lambda response, *a, **k: response)  # a lambda: the client cannot pickle
    access = dicomweb.access_for(client=client, salt=SALT)
    from_client, _ = dicomweb.discover(client, salt=SALT, access=access)
    lidc = from_client[from_client["path"].isin(catalog["path"])]
    assert len(lidc) == 133  # the same sealed paths as through the location
    # a worker: the client did not pickle, so the worker rebuilds a session from its root and credentials
    clone = pickle.loads(pickle.dumps(access))
    assert clone.dicomweb[orthanc.dicomweb_root]["client"].client is None
    assert (
        copy.deepcopy(access).dicomweb[orthanc.dicomweb_root]["client"].client is client
    )  # in this process (catalog attrs) it stays
    frames = read_frames(_refs(lidc.head(2)), dtype=np.dtype("int16"), access=clone)
    np.testing.assert_array_equal(frames, read_frames(_refs(lidc.head(2)), dtype=np.dtype("int16"), access=access))
    assert orthanc.password not in repr(access) and orthanc.password not in repr(
        clone.dicomweb[orthanc.dicomweb_root]["client"]
    )


def test_discover__access_with_another_salt_is_refused(lidc_web):
    _, location = lidc_web
    with pytest.raises(ParameterError, match="another salt"):
        dicomweb.discover(location, salt=SALT, access=dicomweb.access_for(location, salt="other"))


def test_access_for__rejects_other_locations():
    with pytest.raises(ParameterError, match="not a DICOMweb location"):
        dicomweb.access_for("s3://bucket/prefix")
    with pytest.raises(ParameterError, match="needs a dicomweb"):
        dicomweb.access_for()
    settings = dicomweb.access_for("dicomweb+HTTPS://pacs.example/dicom-web/?Modality=CT", salt="s").dicomweb
    assert (
        list(settings) == ["https://pacs.example/dicom-web"]
        and settings["https://pacs.example/dicom-web"]["auth"] is None
    )


def test_read_frames__bits_above_bits_stored_are_ignored(orthanc, lidc_dir, tmp_path):
    """LIDC slices rewritten as 12 of 16 bits with overlay garbage above bit 11: pydicom's values, not the raw bytes."""
    from _lidc_variants import write_variant

    def twelve_bits(k: int, ds: pydicom.Dataset) -> None:
        raw = np.frombuffer(ds.PixelData, "<u2").copy()
        ds.PixelData = ((raw & 0x0FFF) | 0x7000).tobytes()
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PatientID = "CTFRAME-DICOMWEB-12BIT"
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            setattr(ds, keyword, pydicom.uid.generate_uid(entropy_srcs=[keyword, "ctframe 12-bit variant"]))
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["ctframe 12-bit variant", str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    paths = write_variant(lidc_dir, tmp_path / "twelve", twelve_bits)[:4]
    orthanc.upload(paths)
    location = _with_credentials(orthanc.dicomweb_url, *orthanc.auth, "PatientID=CTFRAME-DICOMWEB-12BIT")
    access = dicomweb.access_for(location, salt=SALT)
    catalog, _ = dicomweb.discover(location, salt=SALT, access=access)
    local = ctframe.scan(paths, salt=SALT)
    key = ["sop_instance_uid", "frame"]
    catalog, local = catalog.sort_values(key, ignore_index=True), local.sort_values(key, ignore_index=True)
    assert (catalog["bits_stored"] == 12).all() and len(catalog) == 4
    web = read_frames(_refs(catalog), dtype=np.dtype("int16"), access=access)
    expected = read_frames(_refs(local), dtype=np.dtype("int16"))
    np.testing.assert_array_equal(web, expected)
    by_pydicom = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p).pixel_array for p in paths}
    with_phi, _ = dicomweb.discover(location, salt=SALT, include_phi=True)
    order = with_phi.sort_values(key, ignore_index=True)["original_sop_instance_uid"]
    np.testing.assert_array_equal(web, np.stack([by_pydicom[uid] for uid in order]))
    assert web.min() < 0  # sign-extended from bit 11: the garbage bits above did not survive


def test_read_frames__a_server_that_stops_answering_is_retried_then_source_error(lidc_catalog, monkeypatch):
    """A real listener that accepts connections and never answers: each request times out and is tried again."""
    import socket
    import threading

    from ctframe.config import config_context, get_config

    retries = get_config()["remote"]["retries"]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        catalog, _ = lidc_catalog
        port = listener.getsockname()[1]
        root = f"dicomweb+http://127.0.0.1:{port}/dicom-web"
        rows = catalog.head(1).assign(path=lambda d: root + "#" + d["path"].str.split("#").str[1])
        access = dicomweb.access_for(root + "?x=1", username="u", password="pw-hidden", salt=SALT, timeout_s=(2, 0.2))
        with (
            config_context(remote={"backoff_s": 0.01}),  # the same retries, without the test waiting for them
            pytest.raises(SourceError, match=rf"failed after {retries + 1} attempts") as info,
        ):
            read_frames(_refs(rows), dtype=np.dtype("int16"), access=access)
        assert len(accepted) == retries + 1  # one connection per attempt
        assert "pw-hidden" not in str(info.value) and "\n" not in str(info.value)
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


def test_read_frames__local_cluster_workers_read_with_the_access_they_are_sent(lidc_web, lidc_catalog, monkeypatch):
    """Two worker processes with no credentials or salt of their own read every slice; keys show no secret."""
    distributed = pytest.importorskip("distributed")
    from ctframe.execution import local_cluster

    orthanc, location = lidc_web
    for name in (dicomweb.ENV_USER, dicomweb.ENV_PASSWORD, dicomweb.ENV_TOKEN, "CTFRAME_SALT"):
        monkeypatch.delenv(name, raising=False)  # the workers inherit this environment
    catalog, _ = lidc_catalog
    refs = _refs(catalog.sort_values(["sop_instance_uid", "frame"], ignore_index=True))
    access = dicomweb.access_for(location, salt=SALT)
    threaded = read_frames(refs, dtype=np.dtype("int16"), access=access)
    chunks = [refs[i : i + 34] for i in range(0, len(refs), 34)]
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        futures = [client.submit(read_frames, chunk, dtype=np.dtype("int16"), access=access) for chunk in chunks]
        on_cluster = np.concatenate(client.gather(futures))
        where = client.who_has(futures)
        keys = [str(f.key) for f in futures]
    np.testing.assert_array_equal(on_cluster, threaded)
    assert len({worker for workers in where.values() for worker in workers}) >= 1
    assert not any(orthanc.password in key or orthanc.username in key for key in keys)


def test_read_frames__credentials_go_only_to_their_own_service(lidc_web, lidc_catalog, monkeypatch):
    """A catalog row naming another server (a moved or forged path) never gets this server's password."""
    import socket
    import threading

    import ctframe.sources

    orthanc, location = lidc_web
    catalog, _ = lidc_catalog
    for name in (dicomweb.ENV_USER, dicomweb.ENV_PASSWORD, dicomweb.ENV_TOKEN):
        monkeypatch.delenv(name, raising=False)
    from ctframe.config import config_context

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    received: list[bytes] = []

    def serve_once() -> None:
        conn, _ = listener.accept()
        with conn:
            received.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    other_root = f"dicomweb+http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
    token = catalog["path"].iloc[0].split("#", 1)[1]
    forged = catalog.head(1).assign(path=f"{other_root}#{token}")
    # one Access for two services (merged as scan merges them): each root keeps its own settings
    ours = dicomweb.access_for(location, salt=SALT)
    theirs = dicomweb.access_for(other_root, salt=SALT)
    merged = ctframe.sources.Access(dicomweb={**ours.dicomweb, **theirs.dicomweb})
    assert read_frames(_refs(catalog.head(1)), dtype=np.dtype("int16"), access=merged).shape == (1, 512, 512)
    try:
        with config_context(remote={"retries": 0}), pytest.raises(SourceError, match="access denied"):
            read_frames(_refs(forged), dtype=np.dtype("int16"), access=merged)
        thread.join(10)
    finally:
        listener.close()
    request = b"".join(received)
    assert request.startswith(b"GET /dicom-web/studies/")
    assert b"authorization" not in request.lower() and orthanc.password.encode() not in request


def test_scan__skipped_instances_are_counted_among_the_instances_found(orthanc, edge_cases):
    """The ScanWarning's 'k of n files' counts DICOMweb instances (it said '1 of 0' before)."""
    sr = edge_cases / "pydicom-3.0.2" / "test-SR.dcm"
    orthanc.upload([sr])
    series = pydicom.dcmread(sr, stop_before_pixels=True).SeriesInstanceUID
    location = _with_credentials(orthanc.dicomweb_url, *orthanc.auth, f"SeriesInstanceUID={series}")
    with pytest.warns(ctframe.ScanWarning, match=r"^1 of 1 files were skipped \(1 x no image pixel data"):
        catalog = ctframe.scan(location, salt=SALT)
    assert catalog.empty

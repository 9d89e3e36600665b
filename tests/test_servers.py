"""The loopback servers of tests/_servers.py work: Orthanc's DICOMweb, moto's S3, and the counting proxy.

These tests check the test infrastructure itself on real shared data, so that a failure in a remote-source
test points at ctframe and not at the fixtures.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from _servers import CountingProxy, unused_port

#: Five neighbouring LIDC slices (uncompressed int16, 512 x 512): about 2.6 MB.
SLICES = tuple(f"1-{n:03d}.dcm" for n in range(60, 65))
OCTET_STREAM = (("application/octet-stream", "*"),)
SERIES_UID, STUDY_UID, SOP_UID, PIXEL_DATA = "0020000E", "0020000D", "00080018", "7FE00010"


@pytest.fixture
def lidc_slices(lidc_dir: Path) -> list[Path]:
    return [lidc_dir / name for name in SLICES]


def tag(item: dict, keyword_tag: str) -> str:
    return item[keyword_tag]["Value"][0]


def test_orthanc__dicomweb_metadata_and_frames_match_the_files(empty_orthanc, lidc_slices):
    ids = empty_orthanc.upload(lidc_slices)
    assert len(set(ids)) == len(SLICES)
    assert empty_orthanc.count_instances() == len(SLICES)
    first = pydicom.dcmread(lidc_slices[0])
    client = empty_orthanc.client()

    series = client.search_for_series(search_filters={"Modality": "CT"})
    assert [tag(s, SERIES_UID) for s in series] == [first.SeriesInstanceUID]

    metadata = client.retrieve_series_metadata(first.StudyInstanceUID, first.SeriesInstanceUID)
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in lidc_slices}
    assert {tag(m, SOP_UID) for m in metadata} == expected
    # pixels are referenced, never inlined, in the metadata
    assert all("InlineBinary" not in m.get(PIXEL_DATA, {}) for m in metadata)

    frames = client.retrieve_instance_frames(
        first.StudyInstanceUID,
        first.SeriesInstanceUID,
        first.SOPInstanceUID,
        frame_numbers=[1],
        media_types=OCTET_STREAM,
    )
    assert len(frames) == 1
    pixels = first.pixel_array
    received = np.frombuffer(frames[0], dtype=pixels.dtype.newbyteorder("<")).reshape(pixels.shape)
    np.testing.assert_array_equal(received, pixels)


@pytest.mark.parametrize("name", ["CT1_RLE.dcm", "CT1_JPLL.dcm"])
def test_orthanc__compressed_frames_come_as_stored_or_transcoded_on_request(empty_orthanc, edge_cases, name):
    # what a WADO-RS reader must know about this Orthanc: "*" gives the stored (compressed) bytes, without saying
    # which syntax through dicomweb-client; naming Explicit VR Little Endian gives pixel_array's bytes
    path = edge_cases / "wg04-robyoung" / name
    empty_orthanc.upload([path])
    ds = pydicom.dcmread(path)
    client = empty_orthanc.client()
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    metadata = client.retrieve_series_metadata(*uids[:2])
    assert PIXEL_DATA not in metadata[0]  # the compressed instance's metadata omits PixelData altogether
    (stored,) = client.retrieve_instance_frames(*uids, frame_numbers=[1], media_types=OCTET_STREAM)
    assert len(stored) < ds.pixel_array.nbytes
    explicit_le = (("application/octet-stream", "1.2.840.10008.1.2.1"),)
    (raw,) = client.retrieve_instance_frames(*uids, frame_numbers=[1], media_types=explicit_le)
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<i2").reshape(ds.pixel_array.shape), ds.pixel_array)


def test_orthanc__delete_series_removes_it_from_dicomweb(empty_orthanc, lidc_slices):
    empty_orthanc.upload(lidc_slices[:2])
    uid = pydicom.dcmread(lidc_slices[0], stop_before_pixels=True).SeriesInstanceUID
    client = empty_orthanc.client()
    assert len(client.search_for_series()) == 1
    assert empty_orthanc.delete_series(uid) == 1
    assert client.search_for_series() == []
    assert empty_orthanc.count_instances() == 0


def test_orthanc__refuses_requests_without_the_credentials(empty_orthanc):
    assert requests.get(f"{empty_orthanc.base_url}/system", timeout=10).status_code == 401
    assert requests.get(f"{empty_orthanc.dicomweb_root}/studies", timeout=10).status_code == 401
    wrong = (empty_orthanc.username, empty_orthanc.password + "x")
    assert requests.get(f"{empty_orthanc.dicomweb_root}/studies", auth=wrong, timeout=10).status_code == 401
    with pytest.raises(requests.HTTPError, match="401"):
        empty_orthanc.client(auth=False).search_for_series()
    assert requests.get(f"{empty_orthanc.dicomweb_root}/studies", auth=empty_orthanc.auth, timeout=10).ok
    # the generated password stays out of the fixture's repr and Orthanc's log
    assert empty_orthanc.password not in repr(empty_orthanc)
    assert empty_orthanc.password not in empty_orthanc.log_path.read_text(errors="replace")


def test_orthanc__stopped_server_is_unreachable_and_restarts_with_its_data(empty_orthanc, lidc_slices):
    empty_orthanc.upload(lidc_slices[:1])
    empty_orthanc.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{empty_orthanc.base_url}/system", auth=empty_orthanc.auth, timeout=10)
    empty_orthanc.start()
    assert empty_orthanc.count_instances() == 1
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{unused_port()}/system", timeout=10)


def test_s3__ranged_reads_return_the_files_bytes(s3_server, lidc_slices, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    shutil.copy(lidc_slices[0], tree / lidc_slices[0].name)
    shutil.copy(lidc_slices[1], tree / "sub" / lidc_slices[1].name)
    bucket = s3_server.make_bucket()
    keys = s3_server.upload_tree(tree, bucket, prefix="cohort/a")
    assert keys == [f"cohort/a/{lidc_slices[0].name}", f"cohort/a/sub/{lidc_slices[1].name}"]
    assert s3_server.url(bucket, "cohort/a") == f"s3://{bucket}/cohort/a"

    fs = s3_server.filesystem()
    assert sorted(fs.find(f"{bucket}/cohort")) == [f"{bucket}/{key}" for key in keys]
    local = lidc_slices[0].read_bytes()
    path = f"{bucket}/{keys[0]}"
    assert fs.size(path) == len(local)
    assert fs.cat_file(path, start=0, end=8192) == local[:8192]
    assert fs.cat_file(path, start=100_000, end=100_517) == local[100_000:100_517]
    assert fs.cat_file(path, start=len(local) - 10) == local[-10:]

    s3_server.delete_object(bucket, keys[0])
    with pytest.raises(FileNotFoundError):
        s3_server.filesystem().cat_file(path, start=0, end=10)


def test_s3__environment_alone_reaches_the_server(s3_env, lidc_slices):
    import s3fs

    bucket = s3_env.make_bucket()
    (key,) = s3_env.upload_files(lidc_slices[:1], bucket)
    # no storage options: endpoint and fake credentials come from the environment, as for the CLI
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.cat_file(f"{bucket}/{key}", start=0, end=132) == lidc_slices[0].read_bytes()[:132]


def test_s3__server_with_auth_refuses_wrong_or_missing_credentials(s3_server_auth, lidc_slices):
    bucket = s3_server_auth.make_bucket(versioned=True)
    (key,) = s3_server_auth.upload_files(lidc_slices[:1], bucket)
    path = f"{bucket}/{key}"
    assert s3_server_auth.filesystem().cat_file(path, start=0, end=132) == lidc_slices[0].read_bytes()[:132]
    assert s3_server_auth.filesystem().info(path).get("VersionId")
    for wrong in ({"secret": "x" + s3_server_auth.secret}, {"key": "testing", "secret": "testing"}):
        with pytest.raises(PermissionError, match=r"signature|Access Key"):
            s3_server_auth.filesystem(**wrong).cat_file(path, start=0, end=132)
    with pytest.raises(PermissionError, match="Forbidden"):
        s3_server_auth.filesystem(anon=True, key=None, secret=None).cat_file(path, start=0, end=132)
    assert s3_server_auth.secret not in repr(s3_server_auth)
    assert s3_server_auth.secret not in s3_server_auth.log_path.read_text(errors="replace")


def test_proxy__counts_the_bytes_of_a_ranged_s3_read(s3_server, counting_proxy, lidc_slices):
    bucket = s3_server.make_bucket()
    (key,) = s3_server.upload_files(lidc_slices[:1], bucket, prefix="p")
    proxy = counting_proxy("127.0.0.1", s3_server.port)
    fs = s3_server.filesystem(client_kwargs={"endpoint_url": proxy.url, "region_name": "us-east-1"})
    assert fs.cat_file(f"{bucket}/{key}", start=0, end=8192) == lidc_slices[0].read_bytes()[:8192]
    counts = proxy.counts()
    assert counts["connections"] >= 1
    assert counts["bytes_to_server"] > 0
    # the 8 KB and HTTP headers, but not the whole 0.5 MB file
    assert 8192 <= counts["bytes_to_client"] < 8192 + 16_384
    gets = [r for r in proxy.requests if r.method == "GET"]
    assert [(r.target.split("?")[0], r.range) for r in gets] == [(f"/{bucket}/{key}", (0, 8191))]
    proxy.reset()
    assert proxy.counts() == {"bytes_to_client": 0, "bytes_to_server": 0, "connections": 0}
    assert proxy.requests == []


def test_proxy__parses_requests_split_anywhere_with_bodies_of_both_kinds():
    from _servers import _RequestParser

    stream = (
        b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\nGET / HTTP/1.1"
        b"POST /instances HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nGET \r\n3;x=1\r\nabc\r\n0\r\n\r\n"
        b"GET /b/k?x=1 HTTP/1.1\r\nRange: bytes=10-19\r\n\r\n"
        b"HEAD /b/k HTTP/1.1\r\n\r\n"
    )
    expected = [
        ("PUT", "/b/k", None),
        ("POST", "/instances", None),
        ("GET", "/b/k?x=1", (10, 19)),
        ("HEAD", "/b/k", None),
    ]
    for size in (1, 2, 7, len(stream)):
        parser = _RequestParser()
        seen = []
        for i in range(0, len(stream), size):
            seen += parser.feed(stream[i : i + size])
        assert [(r.method, r.target, r.range) for r in seen] == expected
    parser = _RequestParser()
    assert parser.feed(b"\x16\x03\x01 not http\r\n\r\n") == []
    assert parser.broken


def test_proxy__dicomweb_metadata_carries_no_pixels_but_frames_do(empty_orthanc, lidc_slices):
    empty_orthanc.upload(lidc_slices)
    first = pydicom.dcmread(lidc_slices[0])
    frame_bytes = first.Rows * first.Columns * first.BitsAllocated // 8
    with CountingProxy("127.0.0.1", empty_orthanc.port) as proxy:
        client = empty_orthanc.client(f"{proxy.url}/dicom-web")
        metadata = client.retrieve_series_metadata(first.StudyInstanceUID, first.SeriesInstanceUID)
        assert len(metadata) == len(SLICES)
        # five instances' metadata together are smaller than one frame
        assert 0 < proxy.bytes_to_client < frame_bytes
        assert [r.target for r in proxy.requests] == [
            f"/dicom-web/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/metadata"
        ]
        proxy.reset()
        client.retrieve_instance_frames(
            first.StudyInstanceUID,
            first.SeriesInstanceUID,
            first.SOPInstanceUID,
            frame_numbers=[1],
            media_types=OCTET_STREAM,
        )
        assert proxy.bytes_to_client >= frame_bytes
        assert [r.target.rsplit("/", 2)[-2:] for r in proxy.requests] == [["frames", "1"]]


def test_proxy__a_refusing_target_is_refused_through_the_proxy():
    with CountingProxy("127.0.0.1", unused_port()) as proxy:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{proxy.url}/", timeout=10)
        assert proxy.connections >= 1
        assert proxy.bytes_to_client == 0

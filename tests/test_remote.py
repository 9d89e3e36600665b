"""One series through three sources: a local folder, ``s3://`` on a loopback moto server and
``dicomweb+http://`` on a loopback Orthanc (both started by the test suite; tests/_servers.py).

The catalogs, HU volumes and cohort tables must be the same whichever source they came from,
on the threaded scheduler and on a LocalCluster whose workers read from the source themselves.
Discovery over object storage must read only the bytes of the headers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ctframe
from ctframe import catalog_store, sources
from ctframe.config import config_context
from ctframe.errors import SourceError

SALT = "remote-test-salt"
#: Where a row lives, not what it holds (they differ between a file, an object and a DICOMweb instance).
LOCATION_COLUMNS = ["path", "file_size", "mtime_ns", "file_version", "pixel_data_offset"]
LIDC_PATIENT = "LIDC-IDRI-0001"


def _with_credentials(url: str, user: str, password: str, query: str = "") -> str:
    scheme, rest = url.split("://", 1)
    info = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@"
    return f"{scheme}://{info}{rest}" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def lidc_files(lidc_dir: Path) -> list[Path]:
    return sorted(lidc_dir.glob("*.dcm"))


@pytest.fixture(scope="module")
def remote_sources(lidc_dir: Path, lidc_files: list[Path], s3_server, orthanc) -> dict[str, dict]:
    """The LIDC series as a local folder, an S3 prefix and a DICOMweb location (same files in each)."""
    bucket = s3_server.make_bucket()
    s3_server.upload_tree(lidc_dir, bucket, "lidc")
    orthanc.upload(lidc_files)
    web = _with_credentials(orthanc.dicomweb_url, *orthanc.auth, f"PatientID={LIDC_PATIENT}")
    return {
        "local": {"source": str(lidc_dir)},
        "s3": {"source": s3_server.url(bucket, "lidc"), "storage_options": s3_server.storage_options},
        "dicomweb": {"source": web},
    }


@pytest.fixture(scope="module")
def catalogs(remote_sources) -> dict[str, pd.DataFrame]:
    import warnings

    out = {}
    for name, spec in remote_sources.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ctframe.ScanWarning)  # the folder's XML and notes are not DICOM
            out[name] = ctframe.scan(spec["source"], salt=SALT, storage_options=spec.get("storage_options"))
    # the same two files skipped from the folder and the bucket (Orthanc holds the DICOM files only)
    skipped = {name: sorted(p.rsplit("/", 1)[-1] for p, _ in c.attrs["problems"]) for name, c in out.items()}
    assert skipped == {"local": ["069.xml", "PROVENANCE.md"], "s3": ["069.xml", "PROVENANCE.md"], "dicomweb": []}
    return out


def _content(catalog: pd.DataFrame) -> pd.DataFrame:
    return catalog.drop(columns=LOCATION_COLUMNS).sort_values(["stack_key", "slice_position_mm"], ignore_index=True)


@pytest.mark.parametrize("name", ["s3", "dicomweb"])
def test_catalog__same_as_the_local_folder_apart_from_location(catalogs, name: str) -> None:
    local, remote = _content(catalogs["local"]), _content(catalogs[name])
    assert len(local) == 133
    pd.testing.assert_frame_equal(remote, local)
    assert catalogs[name]["path"].map(sources.is_remote).all()
    if name == "s3":  # same objects: same sizes; versions are ETags
        assert (catalogs["s3"]["file_size"].to_numpy() > 0).all()
        assert catalogs["s3"]["file_version"].str.fullmatch(r"[0-9a-f]{32}").all()


def test_file_url__is_the_local_folder(catalogs, lidc_dir) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.ScanWarning)
        catalog = ctframe.scan(lidc_dir.as_uri(), salt=SALT)
    pd.testing.assert_frame_equal(catalog, catalogs["local"])


@pytest.mark.parametrize("name", ["s3", "dicomweb"])
def test_hu_volume__identical_to_the_local_folder(remote_sources, catalogs, name: str) -> None:
    local = ctframe.to_hu(ctframe.open_series(catalogs["local"])).values
    spec = remote_sources[name]
    remote = ctframe.to_hu(ctframe.open_series(spec["source"], salt=SALT, storage_options=spec.get("storage_options")))
    assert remote.shape == (133, 512, 512)
    np.testing.assert_array_equal(remote.values, local)  # NaN (padding) in the same voxels too


def _tables(source, storage_options, scheduler) -> dict[str, pd.DataFrame]:
    from ctframe.cohort import open_cohort, summarize

    cohort = open_cohort(source, salt=SALT, storage_options=storage_options)
    summary = summarize(cohort, regions=["scan", "lungs"], levels=("series",), scheduler=scheduler, progress=False)
    return {
        "regions": summary.regions.reset_index(drop=True),
        "histograms": summary.histograms.reset_index(drop=True),
        "slice_areas": summary.slice_areas.reset_index(drop=True),
        "longitudinal": summary.longitudinal.reset_index(drop=True),
        "lung_qc": summary.series.filter(like="lung_qc").reset_index(drop=True),
    }


def test_summarize__identical_tables_from_every_source_threads_and_local_cluster(remote_sources) -> None:
    """Workers of a 2-process LocalCluster read the objects themselves: no shared disk, no credentials of their own."""
    from dask.distributed import Client, LocalCluster

    reference = _tables(remote_sources["local"]["source"], None, "threads")
    assert (reference["regions"].set_index("region")["volume_ml"] > 0).all()  # the scan and its lungs
    assert bool(reference["lung_qc"]["lung_qc_ok"].iloc[0])
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        # the workers' environment holds no credentials: they come inside the tasks (Access)
        credential_names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")
        env = client.run(lambda: {k for k in os.environ if k in credential_names or k.startswith("CTFRAME_DICOMWEB")})
        assert not any(env.values())
        for name in ("s3", "dicomweb"):
            spec = remote_sources[name]
            for scheduler in ("threads", client):
                got = _tables(spec["source"], spec.get("storage_options"), scheduler)
                for table, frame in reference.items():
                    pd.testing.assert_frame_equal(got[table], frame, obj=f"{name} {table} ({scheduler})")


def test_s3_discovery__reads_only_header_bytes_in_ranged_requests(s3_server, lidc_dir, counting_proxy) -> None:
    bucket = s3_server.make_bucket()
    keys = s3_server.upload_tree(lidc_dir, bucket, "lidc")
    total = sum(p.stat().st_size for p in lidc_dir.iterdir() if p.is_file())
    assert len(keys) == 135
    proxy = counting_proxy("127.0.0.1", s3_server.port)
    options = {**s3_server.storage_options, "client_kwargs": {"endpoint_url": proxy.url, "region_name": "us-east-1"}}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.ScanWarning)  # the folder's XML and notes are not DICOM
        catalog = ctframe.scan(s3_server.url(bucket, "lidc"), salt=SALT, storage_options=options)
    assert len(catalog) == 133
    fraction = proxy.bytes_to_client / total
    assert fraction < 0.05, f"discovery read {fraction:.1%} of the bytes"
    gets = [r for r in proxy.requests if r.method == "GET" and "list-type" not in r.target]
    assert gets and all(r.range for r in gets), "a GET without a Range header fetches a whole object"
    # the pixel reads are ranged too: the first chunk's slices, exactly their bytes (plus HTTP headers)
    proxy.reset()
    volume = ctframe.open_series(catalog)
    volume[:1].compute()
    pixel_bytes = volume.chunks[0][0] * 512 * 512 * 2
    assert pixel_bytes <= proxy.bytes_to_client < pixel_bytes * 1.01


def _rescan(source, catalog_path, **kwargs) -> pd.DataFrame:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.ScanWarning)
        return ctframe.scan(source, salt=SALT, catalog=catalog_path, **kwargs)


def _changed_copy(path: Path, target: Path, description: str) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    ds.SeriesDescription = description
    ds.save_as(target)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_catalog__follows_added_modified_and_deleted_files_exactly(where, lidc_files, tmp_path, s3_server) -> None:
    folder = tmp_path / "tree"
    folder.mkdir()
    for path in lidc_files[:12]:
        (folder / path.name).write_bytes(path.read_bytes())
    options = None
    if where == "s3":
        bucket = s3_server.make_bucket()
        s3_server.upload_tree(folder, bucket, "tree")
        source, options = s3_server.url(bucket, "tree"), s3_server.storage_options
    else:
        source = str(folder)
    store = tmp_path / "catalog.parquet"

    first = _rescan(source, store, storage_options=options)
    assert first.attrs["scan_changes"] == {"unchanged": 0, "new": 12, "changed": 0, "removed": 0}
    again = _rescan(source, store, storage_options=options)
    assert again.attrs["scan_changes"] == {"unchanged": 12, "new": 0, "changed": 0, "removed": 0}
    pd.testing.assert_frame_equal(again, first)

    # add one, modify one (a new header), delete one
    _changed_copy(lidc_files[3], folder / lidc_files[3].name, "edited")
    (folder / lidc_files[20].name).write_bytes(lidc_files[20].read_bytes())
    (folder / lidc_files[5].name).unlink()
    if where == "s3":
        client = s3_server.client()
        client.upload_file(str(folder / lidc_files[3].name), bucket, f"tree/{lidc_files[3].name}")
        client.upload_file(str(folder / lidc_files[20].name), bucket, f"tree/{lidc_files[20].name}")
        s3_server.delete_object(bucket, f"tree/{lidc_files[5].name}")
    else:
        os.utime(folder / lidc_files[3].name, ns=(1, 1))  # a new mtime even on a coarse clock
    updated = _rescan(source, store, storage_options=options)
    assert updated.attrs["scan_changes"] == {"unchanged": 10, "new": 1, "changed": 1, "removed": 1}
    fresh = ctframe.scan(source, salt=SALT, storage_options=options)
    pd.testing.assert_frame_equal(updated.reset_index(drop=True), fresh.reset_index(drop=True))
    assert "edited" in set(updated["series_description"])
    # the persisted file says the same, and summarize/open_cohort take it in place of the source
    reread = catalog_store.read_catalog(store)
    pd.testing.assert_frame_equal(reread.reset_index(drop=True), fresh.reset_index(drop=True))
    with pytest.warns(ctframe.QCWarning, match="missing slices"):  # one deleted, one added further down
        volume = ctframe.open_series(str(store), storage_options=options, series=fresh["stack_key"].iloc[0][:12])
    assert volume.shape[0] == 12
    assert volume.isel(slice=0).values.std() > 0


def test_catalog__a_failed_scan_leaves_the_previous_catalog_whole(lidc_files, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "tree"
    folder.mkdir()
    for path in lidc_files[:4]:
        (folder / path.name).write_bytes(path.read_bytes())
    store = tmp_path / "catalog.parquet"
    _rescan(str(folder), store)
    before = store.read_bytes()
    (folder / lidc_files[9].name).write_bytes(lidc_files[9].read_bytes())

    def broken(*args, **kwargs):
        raise RuntimeError("disk went away mid-write")

    monkeypatch.setattr("pyarrow.parquet.write_table", broken)
    with pytest.raises(RuntimeError, match="mid-write"):
        _rescan(str(folder), store)
    assert store.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".catalog")] == []


# --------------------------------------------------------------------------- faults, as a user meets them (CLI)


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    command = Path(sys.executable).with_name("ctframe")
    return subprocess.run([str(command), *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def _one_error_line(result: subprocess.CompletedProcess[str], status: int, pattern: str) -> str:
    import re

    assert result.returncode == status, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ctframe: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def test_fault__unreachable_servers_are_one_line_errors_and_write_nothing(tmp_path) -> None:
    from _servers import unused_port

    port = unused_port()
    out = tmp_path / "out"
    line = _one_error_line(
        _cli("summarize", f"dicomweb+http://alice:s3cret@127.0.0.1:{port}/dicom-web", "-o", str(out), "-q"),
        2,
        rf"^ctframe: error: dicomweb\+http://127\.0\.0\.1:{port}/dicom-web.*server unreachable",
    )
    assert "s3cret" not in line and "alice" not in line
    assert not out.exists()
    line = _one_error_line(
        _cli(
            "scan",
            "s3://bucket/prefix",
            "--storage-option",
            f"client_kwargs.endpoint_url=http://127.0.0.1:{port}",
            "--storage-option",
            "key=AKIDEXAMPLE",
            "--storage-option",
            "secret=wJalrXUtnFEMI",
        ),
        2,
        r"^ctframe: error: s3://bucket/prefix: server unreachable",
    )
    assert "wJalrXUtnFEMI" not in line


def test_fault__refused_credentials_are_one_line_errors(orthanc, s3_server_auth, tmp_path) -> None:
    _one_error_line(
        _cli("scan", _with_credentials(orthanc.dicomweb_url, "intruder", "guess")),
        2,
        r"^ctframe: error: dicomweb\+http://127\.0\.0\.1:\d+/dicom-web.*access denied \(HTTP 401",
    )
    bucket = s3_server_auth.make_bucket()
    line = _one_error_line(
        _cli(
            "scan",
            f"s3://{bucket}/x",
            "--storage-option",
            f"client_kwargs.endpoint_url={s3_server_auth.endpoint_url}",
            "--storage-option",
            "key=AKIAWRONGWRONGWRONG1",
            "--storage-option",
            "secret=not-the-secret",
        ),
        2,
        rf"^ctframe: error: s3://{bucket}/x: access denied",
    )
    assert "not-the-secret" not in line


def test_fault__nothing_at_the_location_is_a_clear_error(s3_server, orthanc) -> None:
    bucket = s3_server.make_bucket()
    _one_error_line(
        _cli("scan", f"s3://{bucket}/no-such-prefix", env=s3_server.env),
        2,
        rf"^ctframe: error: s3://{bucket}/no-such-prefix: no files there",
    )
    _one_error_line(
        _cli(
            "scan",
            _with_credentials(orthanc.base_url.replace("http", "dicomweb+http") + "/no-dicomweb-here", *orthanc.auth),
        ),
        2,
        r"HTTP 404",
    )


def test_fault__objects_deleted_after_the_scan_fail_their_stack_only(s3_server, shared_data, tmp_path) -> None:
    """A persisted catalog outlives objects: the stack whose objects vanished is a problem; the other is summarised."""
    bucket = s3_server.make_bucket()
    lidc = s3_server.upload_tree(shared_data / "lidc-idri-0001", bucket, "a")
    s3_server.upload_tree(shared_data / "lung-pet-ct-dx-a0001", bucket, "b")
    store = tmp_path / "catalog.parquet"
    env = s3_server.env
    scanned = _cli("scan", f"s3://{bucket}", "--catalog", str(store), "-q", env=env)
    assert scanned.returncode == 0, scanned.stderr
    for key in [k for k in lidc if k.endswith(".dcm")][40:45]:
        s3_server.delete_object(bucket, key)
    out = tmp_path / "out"
    result = _cli("summarize", str(store), "-o", str(out), "-q", env=env, timeout=400)
    assert result.returncode == 0, result.stderr
    series = pd.read_csv(out / "series.csv")
    outcomes = dict(zip(series["n_slices"], series["outcome"].astype(str), strict=True))
    assert outcomes[64] == "summarised"
    assert outcomes[133].startswith("failed") and "not found (deleted or moved since the scan?)" in outcomes[133]
    problems = pd.read_csv(out / "problems.csv")
    assert problems["reason"].str.contains("deleted or moved since the scan").sum() == 1
    regions = pd.read_csv(out / "regions.csv")
    healthy = series.loc[series["n_slices"] == 64, "stack_key"].iloc[0]
    assert regions.loc[regions["series"] == healthy, "voxel_count"].gt(0).all()
    assert regions.loc[regions["series"] != healthy, "voxel_count"].isna().all()


def test_fault__a_server_that_stops_answering_times_out_retries_then_fails(s3_server, lidc_files, counting_proxy):
    bucket = s3_server.make_bucket()
    s3_server.upload_files(lidc_files[:2], bucket, "t")
    proxy = counting_proxy("127.0.0.1", s3_server.port)
    proxy.inject(stall=True, count=1000)
    options = {
        **s3_server.storage_options,
        "client_kwargs": {"endpoint_url": proxy.url, "region_name": "us-east-1"},
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}},
    }
    # s3fs retries on its own (below ours); one retry of ours on top keeps the test short
    with (
        config_context(remote={"retries": 1, "backoff_s": 0.05}),
        pytest.raises(SourceError, match=rf"^s3://{bucket}/t: failed after 2 attempts \(.*[Tt]imeout"),
    ):
        ctframe.scan(f"s3://{bucket}/t", salt=SALT, storage_options=options)
    assert proxy.connections >= 2  # tried again before giving up


# --------------------------------------------------------------------------- credentials never leak


def test_credentials__absent_from_task_keys_outputs_and_provenance(s3_server_auth, lidc_dir, tmp_path) -> None:
    bucket = s3_server_auth.make_bucket()
    s3_server_auth.upload_files(sorted(lidc_dir.glob("*.dcm"))[:20], bucket, "c")
    secret, key = s3_server_auth.secret, s3_server_auth.key
    options = dict(s3_server_auth.storage_options)
    volume = ctframe.open_series(f"s3://{bucket}/c", salt=SALT, storage_options=options)
    graph = dict(volume.data.dask)
    task_text = repr(graph) + repr(list(graph))
    assert secret not in task_text and key not in task_text and secret not in str(volume.attrs)
    assert "Access(<" in task_text  # the settings ride in the tasks, shown only by their names
    out = tmp_path / "out"
    result = _cli(
        "summarize", f"s3://{bucket}/c", "-o", str(out), "-q",
        "--storage-option", f"key={key}", "--storage-option", f"secret={secret}",
        "--storage-option", f"client_kwargs.endpoint_url={s3_server_auth.endpoint_url}",
        env={k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert secret not in result.stderr + result.stdout
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    record = json.loads((out / "provenance.json").read_text())
    assert secret not in json.dumps(record)


def test_catalog__dicomweb_rescan_reads_only_new_series_and_follows_deletions(
    empty_orthanc, shared_data, tmp_path, counting_proxy, monkeypatch
) -> None:
    """Unchanged series are kept from the catalog without a metadata request; new ones are read; deleted ones go."""
    import pydicom

    lidc = sorted((shared_data / "lidc-idri-0001").glob("*.dcm"))
    other = sorted((shared_data / "lung-pet-ct-dx-a0001").rglob("*.dcm"))
    empty_orthanc.upload(lidc)
    proxy = counting_proxy("127.0.0.1", empty_orthanc.port)
    location = _with_credentials(proxy.url.replace("http://", "dicomweb+http://") + "/dicom-web", *empty_orthanc.auth)
    store = tmp_path / "catalog.parquet"

    first = _rescan(location, store)
    assert first.attrs["scan_changes"] == {"unchanged": 0, "new": 133, "changed": 0, "removed": 0}
    proxy.reset()
    again = _rescan(location, store)
    assert again.attrs["scan_changes"] == {"unchanged": 133, "new": 0, "changed": 0, "removed": 0}
    assert not [r for r in proxy.requests if "/metadata" in r.target], "an unchanged series was read again"
    pd.testing.assert_frame_equal(again.reset_index(drop=True), first.reset_index(drop=True))

    empty_orthanc.upload(other)
    proxy.reset()
    grown = _rescan(location, store)
    assert grown.attrs["scan_changes"] == {"unchanged": 133, "new": len(other), "changed": 0, "removed": 0}
    assert len([r for r in proxy.requests if "/metadata" in r.target]) == 1  # the new series only
    fresh = ctframe.scan(location, salt=SALT)
    pd.testing.assert_frame_equal(grown.reset_index(drop=True), fresh.reset_index(drop=True))

    removed = empty_orthanc.delete_series(pydicom.dcmread(other[0], stop_before_pixels=True).SeriesInstanceUID)
    assert removed == 1
    shrunk = _rescan(location, store)
    assert shrunk.attrs["scan_changes"] == {"unchanged": 133, "new": 0, "changed": 0, "removed": len(other)}
    pd.testing.assert_frame_equal(shrunk.reset_index(drop=True), first.reset_index(drop=True))
    # the persisted catalog opens without the source location: credentials from the environment, the salt's key
    monkeypatch.setenv("CTFRAME_DICOMWEB_USER", empty_orthanc.username)
    monkeypatch.setenv("CTFRAME_DICOMWEB_PASSWORD", empty_orthanc.password)
    from_store = ctframe.open_series(str(store), salt=SALT)
    np.testing.assert_array_equal(
        from_store.isel(slice=slice(60, 64)).values, ctframe.open_series(first).isel(slice=slice(60, 64)).values
    )


@pytest.fixture(scope="module")
def http_server(shared_data, tmp_path_factory):
    """Python's own HTTP server on loopback, serving ../shared/data (it ignores Range: whole-file reads)."""
    from _servers import _wait_http, free_port

    port = free_port()
    log = tmp_path_factory.mktemp("http") / "http.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(shared_data)],
            stdout=sink,
            stderr=sink,
        )
    try:
        _wait_http(process, f"http://127.0.0.1:{port}/", log, "python -m http.server")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_https_style_url__a_folder_served_over_http_opens_like_the_folder(http_server, catalogs) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.ScanWarning)
        catalog = ctframe.scan(f"{http_server}/lidc-idri-0001/", salt=SALT)
    pd.testing.assert_frame_equal(_content(catalog), _content(catalogs["local"]))
    with pytest.warns(ctframe.errors.PerformanceWarning, match="ignores byte ranges") as caught:
        hu = ctframe.to_hu(ctframe.open_series(catalog)).values
    assert sum("ignores byte ranges" in str(w.message) for w in caught) == 1  # once per host, not per file
    np.testing.assert_array_equal(hu, ctframe.to_hu(ctframe.open_series(catalogs["local"])).values)


def test_s3_anonymous_access_to_a_public_bucket(s3_server, lidc_files) -> None:
    bucket = s3_server.make_bucket()
    s3_server.upload_files(lidc_files[:3], bucket, "public")
    public_read = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{bucket}/*"},
            {"Effect": "Allow", "Principal": "*", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"},
        ],
    }
    s3_server.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(public_read))
    options = {"anon": True, "client_kwargs": {"endpoint_url": s3_server.endpoint_url}}
    catalog = ctframe.scan(f"s3://{bucket}/public", salt=SALT, storage_options=options)
    assert len(catalog) == 3


def test_transient_errors_are_retried_with_backoff(s3_server, empty_orthanc, lidc_files, counting_proxy) -> None:
    """503s from object storage and from a PACS: tried again, then the scan succeeds with everything."""
    bucket = s3_server.make_bucket()
    s3_server.upload_files(lidc_files[:3], bucket, "flaky")
    proxy = counting_proxy("127.0.0.1", s3_server.port)
    proxy.inject(503, count=2)
    options = {**s3_server.storage_options, "client_kwargs": {"endpoint_url": proxy.url, "region_name": "us-east-1"}}
    assert len(ctframe.scan(f"s3://{bucket}/flaky", salt=SALT, storage_options=options)) == 3
    assert sum(r.method == "GET" for r in proxy.requests) >= 3

    empty_orthanc.upload(lidc_files[:3])
    web_proxy = counting_proxy("127.0.0.1", empty_orthanc.port)
    web_proxy.inject(503, count=2)
    location = _with_credentials(
        web_proxy.url.replace("http://", "dicomweb+http://") + "/dicom-web", *empty_orthanc.auth
    )
    assert len(ctframe.scan(location, salt=SALT)) == 3
    assert web_proxy.connections >= 3


def test_cli_export__from_s3_equals_the_export_from_the_folder(remote_sources, tmp_path) -> None:
    import nibabel as nib

    spec = remote_sources["s3"]
    options = spec["storage_options"]
    local_out, remote_out = tmp_path / "local.nii.gz", tmp_path / "s3.nii.gz"
    given = [f"key={options['key']}", f"secret={options['secret']}"]
    given.append(f"client_kwargs.endpoint_url={options['client_kwargs']['endpoint_url']}")
    flags = [part for option in given for part in ("--storage-option", option)]
    exported = _cli("export", spec["source"], "-o", str(remote_out), "-q", *flags)
    assert exported.returncode == 0, exported.stderr
    assert _cli("export", remote_sources["local"]["source"], "-o", str(local_out), "-q").returncode == 0
    local, remote = nib.load(local_out), nib.load(remote_out)
    np.testing.assert_array_equal(remote.get_fdata(), local.get_fdata())
    np.testing.assert_array_equal(remote.affine, local.affine)


def test_remote_scans_change_warning_filters_only_in_the_calling_thread(remote_sources, monkeypatch) -> None:
    """Header and metadata threads once entered warnings.catch_warnings each; threads leaving it out of
    order restore each other's filters, and every warning of the process can end up ignored for good."""
    import threading
    import warnings

    entered_in: list[str] = []
    original = warnings.catch_warnings

    class Recording(original):  # type: ignore[misc, valid-type]
        def __enter__(self):  # type: ignore[no-untyped-def]
            entered_in.append(threading.current_thread().name)
            return super().__enter__()

    before = list(warnings.filters)
    monkeypatch.setattr(warnings, "catch_warnings", Recording)
    for name in ("s3", "dicomweb"):
        spec = remote_sources[name]
        # (Orthanc may hold other series by now: tests with `empty_orthanc` share the server)
        with warnings.catch_warnings():  # the folder's XML and notes; this thread is the main thread
            warnings.simplefilter("ignore", ctframe.ScanWarning)
            ctframe.scan(spec["source"], salt=SALT, storage_options=spec.get("storage_options"))
    monkeypatch.undo()
    assert entered_in and set(entered_in) == {threading.main_thread().name}, sorted(set(entered_in))
    assert warnings.filters == before


def test_catalog__a_file_that_is_not_a_ctframe_catalog_is_a_clear_error(tmp_path) -> None:
    text = tmp_path / "notes.parquet"
    text.write_text("not parquet")
    with pytest.raises(ctframe.DicomReadError, match=r"notes\.parquet: not a readable Parquet catalog \(ArrowInvalid"):
        catalog_store.read_catalog(text)
    other = tmp_path / "other.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(other)
    with pytest.raises(ctframe.DicomReadError, match=r"other\.parquet: not a ctframe catalog of format"):
        catalog_store.read_catalog(other)

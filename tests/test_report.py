"""The cohort report: files, privacy, self-containment, and a real render in headless Chromium.

The browser test drives Debian's Chromium over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file
descriptors 3 and 4), so it needs no Python package and opens no port. It
records every network request and every JavaScript exception or console error
while the page loads, counts the rendered tables and decoded images, and saves
a full-page screenshot in the test output folder.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _figure_checks import assert_legible
from PIL import Image

from ctframe.cli import run_summarize
from ctframe.cohort import open_cohort, summarize
from ctframe.errors import ParameterError
from ctframe.report import write_figures_and_report
from ctframe.testing import write_phantom_cohort

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,1000", "--hide-scrollbars",
)  # fmt: skip
#: Identifying values the phantom writer puts into the DICOM headers (see ctframe.testing).
PHI_VALUES = ("PHANTOM-0001", "PHANTOM-0002", "Phantom^Patient", "Patient1", "19600101", "ACC0011", "ACC0021",
              "Phantom General Hospital", "Doctor^Referring", "CHEST PHANTOM")  # fmt: skip


def find_chromium() -> str:
    """Path of the chromium binary; skip without it, fail under CI=true (.ci/run installs it)."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path:
        return path
    message = "headless Chromium not found (Debian package 'chromium', installed by .ci/run)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI must provide it")
    pytest.skip(message)


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, executable: str, profile: str) -> None:
        to_child_read, self._to_child = os.pipe()
        self._from_child, from_child_write = os.pipe()

        def wire() -> None:  # in the child: the pipe ends become fds 3 (commands) and 4 (replies)
            # Move both ends above 9 first, so neither is overwritten if it happens to be fd 3 or 4.
            commands = fcntl.fcntl(to_child_read, fcntl.F_DUPFD, 10)
            replies = fcntl.fcntl(from_child_write, fcntl.F_DUPFD, 10)
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        self.process = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=wire,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_read)
        os.close(from_child_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from chromium")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed the DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, session: str | None = None, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError, EOFError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        os.close(self._to_child)
        os.close(self._from_child)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report-cohort")
    write_phantom_cohort(root, n_patients=2, n_time_points=2, shape=(24, 64, 64), spacing_mm=(10.0, 5.0, 5.0))
    return root


def write_and_keep_figures(summary, cohort, folder: Path, figures: dict, **options) -> Path:
    """write_figures_and_report, keeping every matplotlib figure it saves in `figures` (file stem -> figure)."""
    from ctframe import plot

    save = plot.save_figure

    def keep(figure, path, **kwargs):
        figures[Path(path).stem] = figure
        return save(figure, path, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plot, "save_figure", keep)
        return write_figures_and_report(summary, cohort, folder, **options)


@pytest.fixture(scope="module")
def report_figures() -> dict:
    """The figures of the `report` fixture, by file stem."""
    return {}


@pytest.fixture(scope="module")
def report(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory, report_figures: dict):
    """A report on a cohort opened WITH identifying values, to prove none leaks."""
    cohort = open_cohort(phantom_root, include_phi=True)
    assert "PHANTOM-0001" in {v.attrs.get("patient_id") for v in cohort.volumes.values()}
    assert "patient_id" in cohort.catalog
    summary = summarize(cohort, progress=False)
    folder = tmp_path_factory.mktemp("report")
    path = write_and_keep_figures(summary, cohort, folder, report_figures)
    return path, cohort, summary


@pytest.fixture(scope="module")
def one_scan_report(tmp_path_factory: pytest.TempPathFactory):
    """The report of a cohort of one patient with one scan, and its figures."""
    root = tmp_path_factory.mktemp("one-scan-cohort")
    write_phantom_cohort(root, n_patients=1, n_time_points=1, shape=(24, 64, 64), spacing_mm=(10.0, 5.0, 5.0))
    cohort = open_cohort(root)
    summary = summarize(cohort, progress=False)
    figures: dict = {}
    path = write_and_keep_figures(summary, cohort, tmp_path_factory.mktemp("one-scan-report"), figures)
    return path, summary, figures


# --------------------------------------------------------------------------- files and content


def test_write_figures_and_report__figure_files(report):
    path, cohort, _ = report
    assert path.name == "report.html" and path.is_file()
    names = sorted(p.name for p in (path.parent / "figures").iterdir())
    keys = sorted(cohort.selected["patient_key"].unique())
    expected = {
        "histogram_grid.png", "histograms_by_patient.png", "histograms_lungs_by_scan.png", "coronal_middle.png",
        "coronal_mip_30mm.png", "axial_mip_125mm.png", "lung_volumes.png", "lung_area.png", "longitudinal.png",
        *(f"axial_slice_{k}_scan1.png" for k in keys), *(f"mask_overlay_{k}_scan1.png" for k in keys),
    }  # fmt: skip
    assert set(names) == expected
    for name in names:
        with Image.open(path.parent / "figures" / name) as image:
            assert image.format == "PNG"
            assert image.width >= 300 and image.height >= 200
            pixels = np.asarray(image.convert("L"))
            assert pixels.std() > 5, name
            assert len(np.unique(pixels)) > 16, name


def test_write_figures_and_report__no_identifying_values(report):
    path, cohort, _ = report
    text = path.read_text(encoding="utf-8")
    names = " ".join(p.name for p in (path.parent / "figures").iterdir())
    for value in PHI_VALUES:
        assert value not in text, value
        assert value not in names, value
    for uid in set(cohort.series["series_uid"]) | set(cohort.series["study_uid"]):
        assert uid not in text and uid not in names
    for key in cohort.selected["patient_key"].unique():
        assert key in text
    assert str(path.parent.parent) not in text  # no local file path either


def test_write_figures_and_report__self_contained(report):
    path, _, _ = report
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|url\(", text, flags=re.IGNORECASE)
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', text)
    assert sources
    assert all(s.startswith(("data:image/png;base64,", "#")) for s in sources), {s[:30] for s in sources}
    images = [s for s in sources if s.startswith("data:")]
    assert len(images) == len(list((path.parent / "figures").iterdir()))
    for source in images:
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_figures_and_report__tables(report):
    path, cohort, summary = report
    text = path.read_text(encoding="utf-8")
    tables = re.findall(r"<table.*?</table>", text, flags=re.DOTALL)
    bodies = [t for t in tables if "<tbody>" in t]
    assert len(bodies) >= 3  # series, regions, longitudinal

    def body_rows(table: str) -> int:
        return table.split("<tbody>", 1)[1].count("<tr")

    assert body_rows(bodies[0]) == len(cohort.selected)
    regions_table = next(t for t in bodies if "volume_ml" in t and "hu_p15" in t)
    assert body_rows(regions_table) == len(summary.regions)
    longitudinal_table = next(t for t in bodies if "days_since_baseline" in t)
    assert body_rows(longitudinal_table) == len(summary.longitudinal)


def test_write_figures_and_report__scan_region_only(phantom_root, tmp_path):
    cohort = open_cohort(phantom_root)
    summary = summarize(cohort, regions=["scan"], progress=False)
    path = write_figures_and_report(summary, cohort, tmp_path, image_patients=1)
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert "histogram_grid.png" in figures and "coronal_middle.png" in figures
    assert not {f for f in figures if f.startswith(("lung_", "mask_overlay"))}
    assert len([f for f in figures if f.startswith("axial_slice_")]) == 1
    assert 'id="lungs"' not in path.read_text(encoding="utf-8")


def test_write_figures_and_report__rejects_bad_options(report, tmp_path):
    _, cohort, summary = report
    with pytest.raises(ParameterError, match="image_patients"):
        write_figures_and_report(summary, cohort, tmp_path, image_patients=-1)
    with pytest.raises(ParameterError, match="dpi"):
        write_figures_and_report(summary, cohort, tmp_path, dpi=0)


def test_write_figures_and_report__written_by_summarize(phantom_root, tmp_path):
    outdir = run_summarize(phantom_root, tmp_path / "summary", quiet=True)
    assert (outdir / "report.html").is_file()
    assert (outdir / "figures" / "histogram_grid.png").is_file()
    assert (outdir / "figures" / "lung_volumes.png").is_file()


# --------------------------------------------------------------------------- figures: legible, labelled, in mm

#: Image figures (no value axis; every image axis carries patient directions) by file-name prefix.
IMAGE_FIGURES = ("axial_slice_", "coronal_middle", "coronal_mip_", "axial_mip_", "mask_overlay_")


def check_report_figures(figures: dict, folder: Path, test_output: Path, tag: str) -> None:
    assert figures
    for name, fig in figures.items():
        image = name.startswith(IMAGE_FIGURES)
        assert_legible(fig, value_axis=None if image else ("x" if name == "lung_volumes" else "y"),
                       allow_inside_legend=name == "histogram_grid")  # fmt: skip
        shutil.copyfile(folder / "figures" / f"{name}.png", test_output / f"report_{tag}_{name}.png")
        if image:
            for ax in fig.axes:
                if not ax.get_images() or ax.get_label() == "<colorbar>":
                    continue
                letters = {t.get_gid(): t.get_text() for t in ax.texts if str(t.get_gid()).startswith("direction-")}
                assert set(letters) == {"direction-left", "direction-right", "direction-top", "direction-bottom"}
                assert all(re.fullmatch(r"[RLAPSI]{1,3}", v) for v in letters.values()), letters
                assert "\u2190" in ax.get_xlabel() and "\u2190" in ax.get_ylabel()
        if "_mip_" in name:
            for ax in fig.axes:
                if ax.get_images() and ax.get_label() != "<colorbar>":
                    assert re.search(r"MIP of a \d+\.\d mm slab", ax.get_title()), ax.get_title()
                    assert not re.search(r"\[\d+, \d+\)", ax.get_title())  # no index range
            assert "mm slab" in fig.get_suptitle()


def test_write_figures_and_report__figures_legible(report, report_figures, test_output):
    check_report_figures(report_figures, report[0].parent, test_output, "2x2")
    assert {"longitudinal", "histogram_grid", "lung_volumes"} <= set(report_figures)
    grid = report_figures["histogram_grid"]
    assert [ax.get_label() for ax in grid.axes] == ["slice", "A", "B", "both"]


def test_write_figures_and_report__one_scan(one_scan_report, test_output):
    """One patient, one scan: no empty panel, no longitudinal figure, and the report says why."""
    path, summary, figures = one_scan_report
    check_report_figures(figures, path.parent, test_output, "1scan")
    assert summary.longitudinal.empty and "longitudinal" not in figures
    grid = figures["histogram_grid"]
    assert [ax.get_label() for ax in grid.axes] == ["slice", "A"]
    assert "one patient" in " ".join(t.get_text() for t in grid.texts if t.get_gid() == "note")
    text = path.read_text(encoding="utf-8")
    assert "HU histograms: one slice, patient A<" in text or "HU histograms: one slice, patient A." in text
    assert "patient B" not in text
    assert {f.stem for f in (path.parent / "figures").iterdir()} == set(figures)


# --------------------------------------------------------------------------- in a browser


def test_write_figures_and_report__renders_in_chromium(report, test_output):
    executable = find_chromium()
    path, cohort, summary = report
    n_figures = len(list((path.parent / "figures").iterdir()))
    with tempfile.TemporaryDirectory(prefix="ctframe-chromium-") as profile:
        browser = DevTools(executable, profile)
        try:
            target = browser.send("Target.createTarget", url="about:blank")["targetId"]
            session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Network", "Runtime", "Log"):
                browser.send(f"{domain}.enable", session=session)
            browser.send("Page.navigate", session=session, url=path.as_uri())
            browser.wait_for("Page.loadEventFired")
            state = browser.send(
                "Runtime.evaluate",
                session=session,
                returnByValue=True,
                expression="""JSON.stringify({
                    title: document.title,
                    tables: Array.from(document.querySelectorAll('table')).map(t => t.tBodies[0].rows.length),
                    images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight,
                                                                 i.getBoundingClientRect().width]),
                    sections: Array.from(document.querySelectorAll('section h2')).map(h => h.textContent),
                    scripts: document.scripts.length,
                    height: document.documentElement.scrollHeight,
                })""",
            )
            page = json.loads(state["result"]["value"])
            metrics = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot = browser.send(
                "Page.captureScreenshot",
                session=session,
                format="png",
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": metrics["width"], "height": metrics["height"], "scale": 0.6},
            )
            viewport = browser.send("Page.captureScreenshot", session=session, format="png")
        finally:
            browser.close()
    full = test_output / "report_screenshot_full.png"
    full.write_bytes(base64.b64decode(shot["data"]))
    top = test_output / "report_screenshot.png"
    top.write_bytes(base64.b64decode(viewport["data"]))

    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert requests[0] == path.as_uri()
    assert all(url.startswith(("file:", "data:")) for url in requests), [u[:60] for u in requests]
    failed = [e for e in browser.events if e.get("method") == "Network.loadingFailed"]
    assert not failed, failed
    exceptions = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    assert not exceptions, exceptions
    errors = [
        e
        for e in browser.events
        if (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
    ]
    assert not errors, errors

    assert page["title"] == "ctframe cohort report"
    assert page["scripts"] == 0
    assert len(page["tables"]) >= 3 and all(n > 0 for n in page["tables"])
    assert sum(page["tables"]) >= len(cohort.selected) + len(summary.regions)
    assert len(page["images"]) == n_figures
    for complete, width, height, shown_width in page["images"]:
        assert complete and width > 0 and height > 0 and shown_width > 100  # decoded and laid out
    assert {"Series and quality control", "Histograms", "Images", "Lungs", "Region statistics"} <= set(page["sections"])
    with Image.open(full) as image:
        assert image.width == pytest.approx(0.6 * metrics["width"], abs=2)
        assert image.height == pytest.approx(0.6 * metrics["height"], abs=2)
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 20
    with Image.open(top) as image:
        assert np.asarray(image.convert("L")).std() > 20

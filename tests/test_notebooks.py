"""The notebooks in notebooks/ run top to bottom (nbclient, the venv's own python3 kernel).

They are stored without outputs; executing them here keeps them from rotting.
Notebook 01 uses ../shared/data when present and a phantom otherwise; 02-04 write
a phantom cohort into a temporary folder; 05 opens the LIDC chest CT from an Orthanc
(DICOMweb) and a moto S3 server that the test starts on 127.0.0.1 (tests/_servers.py).
"""

from __future__ import annotations

import base64
import io
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from PIL import Image

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("01_one_series", "02_cohort", "03_longitudinal", "04_distributed", "05_remote")
KERNEL = "python3"


def kernel_runs_this_interpreter() -> None:
    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    program = spec.argv[0]
    # jupyter_client replaces a bare "python"/"python3" by sys.executable when it starts the kernel.
    assert program in {
        "python",
        f"python{sys.version_info[0]}",
        f"python{sys.version_info[0]}.{sys.version_info[1]}",
    } or (Path(program).resolve() == Path(sys.executable).resolve()), (
        f"kernel {KERNEL!r} would run {program}, not this venv's {sys.executable}"
    )


def test_notebooks__stored_without_outputs():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    for name in NAMES:
        book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(book)
        assert book.metadata["kernelspec"]["name"] == KERNEL
        code = [c for c in book.cells if c.cell_type == "code"]
        assert code, name
        assert all(c.outputs == [] and c.execution_count is None for c in code), name


def _remote_sources(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Notebook 05's sources: the LIDC series in a loopback Orthanc and a loopback S3 bucket, named in the env."""
    lidc = sorted(request.getfixturevalue("lidc_dir").glob("*.dcm"))
    orthanc, s3 = request.getfixturevalue("orthanc"), request.getfixturevalue("s3_server")
    orthanc.upload(lidc)
    bucket = s3.make_bucket()
    s3.upload_files(lidc, bucket, "cohort/lidc")
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CTFRAME_DICOMWEB_USER", orthanc.username)
    monkeypatch.setenv("CTFRAME_DICOMWEB_PASSWORD", orthanc.password)
    monkeypatch.setenv("CTFRAME_EXAMPLE_DICOMWEB", orthanc.dicomweb_url + "?PatientID=LIDC-IDRI-0001")
    monkeypatch.setenv("CTFRAME_EXAMPLE_S3", s3.url(bucket, "cohort"))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_execute_notebook__runs_top_to_bottom(name, test_output, request, monkeypatch):
    kernel_runs_this_interpreter()
    if name == "05_remote":
        _remote_sources(request, monkeypatch)
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        book,
        timeout=120,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.monotonic()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.monotonic() - start
    (test_output / "notebooks").mkdir(exist_ok=True)
    nbformat.write(book, test_output / "notebooks" / f"{name}.ipynb")  # executed copy, for a human to look at
    print(f"{name}: {seconds:.1f} s")

    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "Traceback" not in stderr and "CTFrameWarning" not in stderr, stderr[-2000:]
    # Every static figure cell produced a real picture.
    pictures = [o["data"]["image/png"] for o in outputs if o.output_type in ("display_data", "execute_result")
                and "image/png" in o.get("data", {})]  # fmt: skip
    assert pictures, f"{name} displayed no figure"
    for data in pictures:
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 5

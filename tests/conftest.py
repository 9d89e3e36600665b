"""Shared fixtures: the real data in ../shared/data and synthetic phantoms.

Tests that need ../shared/data skip with a reason when it is absent (a user's
checkout) and fail when ``CI=true`` (CI always has it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Loopback servers for the remote-source tests (Orthanc with DICOMweb, moto's S3, a counting proxy): fixtures
# available to every test module by name; a server starts only when a test asks for it (see tests/_servers.py).
from _servers import counting_proxy, empty_orthanc, orthanc, s3_env, s3_server, s3_server_auth  # noqa: F401
from hypothesis import settings

from ctframe.testing import PhantomTruth, write_phantom_series

# No wall-clock deadline per example in any profile: a slow example on a busy machine is not a failure.
# The default profile keeps the run short; HYPOTHESIS_PROFILE=slow (with CTFRAME_FUZZ_EXAMPLES for the fuzz
# tests, which set their own example counts) is the long fuzzing run.
settings.register_profile("default", deadline=None)
settings.register_profile("slow", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# the default pseudonym salt is kept in a file (see ctframe.privacy): the test run keeps its own, not the user's
os.environ.setdefault("CTFRAME_SALT_FILE", str(Path(tempfile.mkdtemp(prefix="ctframe-test-salt-")) / "salt"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CTFRAME_SHARED_DATA", REPO.parent / "shared" / "data"))
TEST_OUTPUT = Path(os.environ.get("CTFRAME_TEST_OUTPUT", REPO / "test-output"))


def require_shared_data() -> Path:
    """Return ../shared/data, skipping (or failing under CI=true) when it is absent."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    message = f"real DICOM data not found at {SHARED_DATA} (set CTFRAME_SHARED_DATA)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI must provide it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared_data()


@pytest.fixture(scope="session")
def lidc_dir(shared_data: Path) -> Path:
    return shared_data / "lidc-idri-0001"


@pytest.fixture(scope="session")
def edge_cases(shared_data: Path) -> Path:
    return shared_data / "edge-cases"


@pytest.fixture(scope="session")
def test_output() -> Path:
    TEST_OUTPUT.mkdir(parents=True, exist_ok=True)
    return TEST_OUTPUT


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomTruth:
    """The default chest phantom (80 x 192 x 192, 4 mm slices) with ground glass."""
    return write_phantom_series(tmp_path_factory.mktemp("phantom"), time_point=1, seed=1)


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomTruth:
    """A small phantom (24 x 64 x 64) for fast API tests."""
    return write_phantom_series(
        tmp_path_factory.mktemp("small"), shape=(24, 64, 64), spacing_mm=(10.0, 5.0, 5.0), seed=2
    )

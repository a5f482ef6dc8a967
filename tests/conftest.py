import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Scenarios and feature caches go to a per-session temp dir, never the user's ~/.cache."""
    if "MMFED_TEST_CACHE" in os.environ:  # reuse between local runs: export MMFED_TEST_CACHE=/tmp/x
        os.environ["MMFED_CACHE_DIR"] = os.environ["MMFED_TEST_CACHE"]
    else:
        os.environ["MMFED_CACHE_DIR"] = str(tmp_path_factory.mktemp("mmfed-cache"))
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data beside the repository (../shared/data), or $MMFED_SHARED_DATA."""
    path = Path(os.environ.get("MMFED_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (path / "fsdd").is_dir():
        pytest.fail(f"real test data not found at {path}; set MMFED_SHARED_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session")
def fsdd_sites(shared_data, tmp_path_factory):
    from mmfed.data.scenarios import prepare_scenario

    return prepare_scenario("fsdd-mnist", data_dir=shared_data, cache_dir=tmp_path_factory.mktemp("fsdd"))


@pytest.fixture(scope="session")
def digits_av():
    """The embedded default scenario, generated once per test session into the session cache."""
    from mmfed.data.scenarios import prepare_scenario

    return prepare_scenario("digits-av")

"""Fixtures the federation tests share."""

import pytest

from mmfed.federation.config import FederationConfig


@pytest.fixture
def small_federation(tmp_path):
    """A few synthetic image+audio sites on the in-process grid; each test says what it changes."""

    def make(**changes) -> FederationConfig:
        base = dict(
            scenario="synthetic",
            sites=3,
            samples_per_site=40,
            modalities="image,audio",
            rounds=1,
            batch_size=16,
            augment=False,
            min_sites=2,
            site_wait_s=2,
            run_dir=str(tmp_path / "run"),
            state_dir=str(tmp_path / "state"),
        )
        return FederationConfig(**{**base, **changes})

    return make

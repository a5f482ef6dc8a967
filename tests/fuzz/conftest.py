"""Property-based ("fuzz") tests of every parser of outside input: manifests and labels, task files,
site policies, run configs, ledgers and model updates. Each property: a valid result that obeys the
documented rules, or an MMFedError that names the file / setting — never another exception.

The `ci` profile (the default) is bounded and derandomised, so CI is reproducible and fast; explore
more with `MMFED_FUZZ_PROFILE=deep pytest tests/fuzz` (random seeds, many more examples) and keep what
it finds as an explicit `@example` in the test file.
"""

import os

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=_QUIET
)
settings.register_profile(
    "deep", max_examples=3000, deadline=None, database=None, suppress_health_check=_QUIET
)
settings.load_profile(os.environ.get("MMFED_FUZZ_PROFILE", "ci"))

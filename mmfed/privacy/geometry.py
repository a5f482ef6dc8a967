"""DP-SGD's sampling geometry, from a site's *public* size — never from its exact number of records.

Under add/remove adjacency the exact N tells D from D' with certainty, and Opacus' own geometry is a
function of it (q = 1/ceil(N/B), normaliser int(N·q)). So a site discloses a public size P (its policy's
`public_examples`; in simulation N rounded to two significant digits) and everything the server sees or
that scales the release follows from P: the sample rate q, the steps per round, the normaliser of the
noisy sum (the expected batch size P·q) and the FedAvg weight. Poisson sampling at q still runs over
the real records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SIGNIFICANT_DIGITS = 2


def rounded_size(records: int, digits: int = SIGNIFICANT_DIGITS) -> int:
    """`records` rounded to `digits` significant digits (at least 1): 449 -> 450, 1234 -> 1200."""
    if records <= 0:
        return 1
    scale = 10 ** max(len(str(records)) - digits, 0)
    return max(int(round(records / scale)) * scale, 1)


@dataclass(frozen=True)
class Geometry:
    public_examples: int
    batch_size: int
    local_epochs: int

    @property
    def batches_per_epoch(self) -> int:
        return max(math.ceil(self.public_examples / self.batch_size), 1)

    @property
    def sample_rate(self) -> float:
        # Opacus' convention, q = 1/len(loader): its accountant takes q from the loader's length
        return 1.0 / self.batches_per_epoch

    @property
    def steps(self) -> int:
        return self.batches_per_epoch * self.local_epochs

    @property
    def expected_batch_size(self) -> float:
        return self.public_examples * self.sample_rate

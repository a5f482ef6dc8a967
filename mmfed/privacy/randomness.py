"""The site's secret DP randomness: Poisson sampling and Gaussian noise, drawn fresh every round.

The server knows the run seed, the round, the site's name and (for DP's sake) every record but one: if
it also knew the generator's state it could replay a round and subtract the noise. So nothing here is
ever seeded from the run: every round starts from the operating system's entropy (`os.urandom`).

Two sources, chosen by the site's policy (`secure_rng`):
- `TorchRandomness`: torch's generator (Philox/MT19937) seeded from 64 bits of OS entropy. Fresh and
  secret, but not a cryptographic generator.
- `ChaChaRandomness`: a ChaCha20 keystream (the `cryptography` package, key from OS entropy) turned into
  uniforms, Gaussians by Box-Muller, and each noise value the sum of 4 such draws divided by 2. That
  sum is the guard Opacus' `secure_mode` uses against floating-point attacks on the Gaussian sampler
  (Holohan & Braghin 2021; Jin et al. 2021: 2n draws, n = 2); `secure_mode` itself needs torchcsprng,
  which has no build for current torch.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

# Gaussians summed per noise value (2n with n = 2, as Opacus' secure_mode): complexity of the
# floating-point attack grows from 2^53 to 2^159
GUARD_DRAWS = 4
CHUNK = 32_768  # noise values drawn at a time


class DPRandomness:
    """What DP-SGD draws: a Poisson sample of record indices, and Gaussian noise."""

    name = ""

    def poisson_indices(self, records: int, rate: float) -> list[int]:
        """Indices of the records this step samples: each independently with probability `rate`."""
        raise NotImplementedError

    def normal(self, numel: int, std: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """`numel` independent N(0, std²) values (a flat tensor on `device`)."""
        raise NotImplementedError


class TorchRandomness(DPRandomness):
    name = "torch"

    def __init__(self, device: torch.device):
        seeds = np.frombuffer(os.urandom(16), dtype=np.uint64)
        self._cpu = torch.Generator().manual_seed(int(seeds[0] >> np.uint64(1)))
        if device.type == "cpu":
            self._noise = self._cpu
        else:
            self._noise = torch.Generator(device=device).manual_seed(int(seeds[1] >> np.uint64(1)))

    def poisson_indices(self, records: int, rate: float) -> list[int]:
        mask = torch.rand(records, generator=self._cpu) < rate
        return mask.nonzero().reshape(-1).tolist()

    def normal(self, numel: int, std: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.normal(0.0, std, (numel,), generator=self._noise, device=device, dtype=dtype)


class ChaChaRandomness(DPRandomness):
    name = "chacha20"

    def __init__(self, device: torch.device):
        del device  # drawn on the CPU (the keystream is), moved to the device once per step
        # 256-bit key and 96-bit nonce from the OS, one keystream per round; the 32-bit block counter
        # (the first 4 bytes) starts at 0: a random start could overflow within a round (256 GiB of room)
        cipher = Cipher(algorithms.ChaCha20(os.urandom(32), bytes(4) + os.urandom(12)), mode=None)
        self._stream = cipher.encryptor()
        self._zeros = b""  # the plaintext (keystream = ChaCha20 of zeros), grown as needed
        self._out: dict[int, bytearray] = {}  # one output buffer per size: a step draws the same sizes

    def _words(self, count: int, dtype: torch.dtype) -> torch.Tensor:
        """`count` fresh keystream words (a view of a reused buffer: consume before the next draw)."""
        if count == 0:  # a site with no records still draws (nothing) for each step
            return torch.empty(0, dtype=dtype)
        size = count * (torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits) // 8
        if len(self._zeros) < size:
            self._zeros = bytes(size)
        out = self._out.setdefault(size, bytearray(size))
        self._stream.update_into(memoryview(self._zeros)[:size], out)
        return torch.frombuffer(out, dtype=dtype, count=count)

    def uniform(self, count: int) -> torch.Tensor:
        """`count` float64 uniforms on (0, 1): 52 keystream bits as the mantissa of a float in [1, 2), less
        1 - 2^-53 (exact): (k + 0.5) / 2^52, never 0 or 1."""
        words = self._words(count, torch.int64)
        mantissa = torch.bitwise_right_shift(words, 12).bitwise_and_((1 << 52) - 1)
        return mantissa.bitwise_or_(0x3FF0000000000000).view(torch.float64).sub_(1.0 - 2.0**-53)

    def poisson_indices(self, records: int, rate: float) -> list[int]:
        return (self.uniform(records) < rate).nonzero().reshape(-1).tolist()

    def standard_normal(self, count: int) -> torch.Tensor:
        """`count` float32 N(0, 1) by Box-Muller. The radius' uniform has 52 bits (so the tail reaches
        8.5σ, not the 5.9σ of a 24-bit uniform); the angle's 24 bits are float32's full precision."""
        pairs = (count + 1) // 2
        radius = self.uniform(pairs).to(torch.float32).log_().mul_(-2.0).sqrt_()
        angle = torch.bitwise_right_shift(self._words(pairs, torch.int32), 8).bitwise_and_((1 << 24) - 1)
        angle = angle.to(torch.float32).add_(0.5).mul_(2.0 * math.pi * 2.0**-24)
        return torch.cat((radius * torch.cos(angle), radius * torch.sin(angle)))[:count]

    def normal(self, numel: int, std: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        out = torch.empty(numel, dtype=torch.float32)
        # in chunks: the temporaries of a whole model's draw (4 values each) would be fresh memory every
        # step (page faults cost more than the arithmetic); a chunk's stay in cache
        for start in range(0, numel, CHUNK):
            size = min(CHUNK, numel - start)
            draws = self.standard_normal(GUARD_DRAWS * size).view(GUARD_DRAWS, size)
            # the sum of 4 N(0, 1) is N(0, 4): halve it
            torch.sum(draws, 0, out=out[start : start + size])
        return out.mul_(std / 2.0).to(device=device, dtype=dtype)


def fresh_randomness(secure: bool, device: torch.device) -> DPRandomness:
    """A new, secret source for one round: ChaCha20 when `secure`, else torch's generator."""
    return ChaChaRandomness(device) if secure else TorchRandomness(device)

"""SecAgg+'s mask generator, replaced: a ChaCha20 keystream keyed by the whole seed, drawn in bulk.

Flower 1.42's `pseudo_rand_gen` XOR-folds a 32-byte seed down to 32 bits and seeds numpy's RandomState
with it, so every pairwise and private mask had 2**32 possible values: whoever saw a masked vector could
try every seed. Here a mask is ChaCha20's keystream under key SHA-256(domain, seed) — every byte of the
seed counts — read as little-endian uint64 and reduced mod the ring's modulus (a power of two, which
SecAggPlusWorkflow requires, so the values are exactly uniform). One keystream covers the whole vector;
the list form splits it in order, so a flat vector and its layers get the same mask.

Both sides must agree, or the sum unmasks to garbage without anyone noticing: `install()` puts the
generator where Flower's client mod and server workflow look it up, used while mmfed's own SecAgg+ code
runs (`active()`); everyone else in the process keeps Flower's. The server announces the generator in
the setup stage's config (ANNOUNCE_KEY) and a site refuses a round whose announced generator is not its
own (mmfed.site.client).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

GENERATOR = "chacha20-sha256-v1"
ANNOUNCE_KEY = "mmfed-mask-generator"
_DOMAIN = b"mmfed secagg+ mask v1\x00"
_NONCE = bytes(16)  # each key is used for one stream: the key is a fresh per-round secret

_ACTIVE = contextvars.ContextVar("mmfed_secagg_masks", default=False)
_installed = False


def _check_modulus(num_range: int) -> int:
    if num_range < 2 or num_range & (num_range - 1) or num_range > 2**63:
        raise ValueError(f"the SecAgg+ modulus must be a power of two up to 2**63, not {num_range}")
    return num_range - 1


def _keystream(seed: bytes, out: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """ChaCha20's keystream of `seed` into the uint64 array `out` (`zeros`: as many zero bytes, read only)."""
    key = hashlib.sha256(_DOMAIN + bytes(seed)).digest()
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    encryptor.update_into(zeros, out.view(np.uint8))  # zeros XOR keystream = keystream
    return out


def mask(seed: bytes, num_range: int, size: int) -> np.ndarray:
    """`size` values uniform in [0, num_range), uint64, from the keystream of `seed`."""
    bits = _check_modulus(num_range)
    out = _keystream(seed, np.empty(size, dtype="<u8"), np.zeros(size * 8, dtype=np.uint8))
    np.bitwise_and(out, np.uint64(bits), out=out)
    return out


def pseudo_rand_gen(
    seed: bytes, num_range: int, dimensions_list: Sequence[tuple[int, ...]]
) -> list[np.ndarray]:
    """Flower's signature: one int64 array per shape, all cut in order from one keystream."""
    sizes = [int(np.prod(d, dtype=np.int64)) for d in dimensions_list]
    flat = mask(seed, num_range, sum(sizes)).view(np.int64)  # < 2**63 for any ring Flower allows
    out, start = [], 0
    for shape, n in zip(dimensions_list, sizes, strict=True):
        out.append(flat[start : start + n].reshape(shape))
        start += n
    return out


def collect_masked_vectors(state, configs, num_examples: int, updated_parameters) -> dict:
    """Flower's `_collect_masked_vectors` (secaggplus_mod) on one flat vector: the same checks of the
    forwarded key shares, the same quantisation (scaled by the quantised weight, clipped, stochastically
    rounded — in float64 here), the same masks from this module's generator, summed in place as uint64
    (wrapping, then reduced mod the power-of-two ring); sent as one int64 array per layer, as Flower's."""
    from flwr.common import ndarray_to_bytes, parameters_to_ndarrays
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, generate_shared_key
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_separate
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    ciphertexts, srcs = configs[Key.CIPHERTEXT_LIST], configs[Key.SOURCE_LIST]
    if len(ciphertexts) + 1 < state.threshold:
        raise ValueError("Not enough available neighbour clients.")
    available: list[int] = []
    for src, ciphertext in zip(srcs, ciphertexts, strict=True):
        plaintext = decrypt(state.ss2_dict[src], ciphertext)
        actual_src, dst, rd_seed_share, sk1_share = share_keys_plaintext_separate(plaintext)
        available.append(src)
        if src != actual_src:
            raise ValueError(f"Node {state.nid}: received ciphertext from {actual_src} instead of {src}.")
        if dst != state.nid:
            raise ValueError(
                f"Node {state.nid}: received an encrypted message for Node {dst} from Node {src}."
            )
        state.rd_seed_share_dict[src] = rd_seed_share
        state.sk1_share_dict[src] = sk1_share

    ratio = num_examples / state.max_weight
    if ratio > 1:  # mmfed's sites never send such an update (mmfed.federation.secagg.check_range)
        raise ValueError(f"the weight {num_examples} exceeds max_weight {state.max_weight}")
    q_ratio = round(ratio * state.target_range)
    arrays = parameters_to_ndarrays(updated_parameters)
    shapes = [(1,)] + [a.shape for a in arrays]
    vector = _quantise(arrays, q_ratio / state.target_range, float(state.clipping_range), state.target_range)
    vector[0] = q_ratio

    # the masks as drawn, summed mod 2**64 and reduced once: the same as reducing each (the ring's modulus
    # divides 2**64); one scratch buffer for all, zero pages as the cipher's input
    bits = np.uint64(_check_modulus(state.mod_range))
    scratch, zeros = np.empty_like(vector), np.zeros(vector.size * 8, dtype=np.uint8)
    vector += _keystream(state.rd_seed, scratch, zeros)
    own = bytes_to_private_key(state.sk1)
    for node_id in available:
        shared_key = generate_shared_key(own, bytes_to_public_key(state.public_keys_dict[node_id][0]))
        pairwise = _keystream(shared_key, scratch, zeros)
        if state.nid > node_id:
            vector += pairwise
        else:
            vector -= pairwise
    vector &= bits
    del scratch, zeros
    flat, out, start = vector.view(np.int64), [], 0
    for shape in shapes:
        n = int(np.prod(shape, dtype=np.int64))
        out.append(ndarray_to_bytes(flat[start : start + n].reshape(shape)))
        start += n
    return {Key.MASKED_PARAMETERS: out}


def _quantise(arrays: list[np.ndarray], scale: float, clip: float, levels: int) -> np.ndarray:
    """[0, then every value of `arrays` x scale, clipped to ±clip, mapped onto [0, levels] and rounded
    stochastically] as uint64, in float64 and in place: floor(x + u), u uniform in [0, 1), rounds x up with
    probability frac(x), as Flower's stochastic rounding does (unbiased)."""
    x = np.empty(1 + sum(a.size for a in arrays), dtype=np.float64)
    x[0] = 0.0
    if arrays:
        np.concatenate([np.ravel(a) for a in arrays], out=x[1:], casting="unsafe")
    step = levels / (2 * clip)  # clip(v * scale, -c, c) + c, times step = clip(v * scale * step + c * step)
    x[1:] *= scale * step
    x[1:] += clip * step
    np.clip(x, 0.0, levels, out=x)
    x[1:] += np.random.default_rng().random(x.size - 1)
    np.floor(x, out=x)
    return x.astype(np.uint64)


def active() -> bool:
    return _ACTIVE.get()


@contextlib.contextmanager
def using() -> Iterator[None]:
    """mmfed's SecAgg+ code runs inside: Flower's mod and workflow draw masks from this generator."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def install() -> None:
    """Patch `pseudo_rand_gen` where Flower's client mod and server workflow look it up, and the client
    mod's masking step (idempotent): this module's inside `using()`, Flower's own outside."""
    global _installed
    if _installed:
        return
    import importlib

    # the modules themselves (their packages re-export functions of the same names)
    client_mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    server_mod = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")

    for module, name, ours in (
        (client_mod, "pseudo_rand_gen", pseudo_rand_gen),
        (server_mod, "pseudo_rand_gen", pseudo_rand_gen),
        (client_mod, "_collect_masked_vectors", collect_masked_vectors),
    ):
        setattr(module, name, _dispatch(getattr(module, name), ours))
    _installed = True


def _dispatch(flower, ours):
    def dispatch(*args, **kwargs):
        return (ours if _ACTIVE.get() else flower)(*args, **kwargs)

    dispatch.mmfed = ours  # type: ignore[attr-defined]
    return dispatch

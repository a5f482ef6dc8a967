"""Fuzzed privacy ledgers (mmfed.privacy.ledger): whatever a ledger file holds, read_lines / verify /
last_line / append report the problem or raise an MMFedError — never another exception — and a ledger
whose bytes were changed never verifies as intact (unless what is left is the same entries, whole lines
cut off its end: only the site's anchors can tell that from a shorter ledger)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given
from hypothesis import strategies as st

from mmfed.errors import MMFedError
from mmfed.privacy import ledger
from mmfed.privacy.site_keys import key_id

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NEW_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
PUBLIC = KEY.public_key()


def _release(i: int) -> dict:
    return {
        "run_id": "run-1", "round": i + 1, "time": f"2026-01-0{1 + i % 9}T10:00:00+00:00",
        "data_fingerprint": "ab" * 16, "noise_multiplier": 1.1, "sample_rate": 0.0125, "steps": 80,
        "max_grad_norm": 1.0, "delta": 1e-05, "epsilon_prv": 0.5 * (i + 1), "epsilon_rdp": 6.1e-1 * (i + 1),
        "site": "h\u00f4pital-1",
    }  # fmt: skip


def _rotation(new: Ed25519PrivateKey) -> dict:
    pem = new.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "kind": ledger.ROTATION, "time": "2026-01-05T10:00:00+00:00", "previous_key_id": key_id(PUBLIC),
        "new_key_id": key_id(new.public_key()), "new_public_key": pem.decode(),
    }  # fmt: skip


def _chain(fields: list[dict], keys: list[Ed25519PrivateKey]) -> list[bytes]:
    lines, prev = [], ledger.GENESIS
    for i, (entry_fields, key) in enumerate(zip(fields, keys, strict=True)):
        line = ledger.canonical(ledger.signed_entry(entry_fields, key, i, prev))
        lines.append(line)
        prev = ledger.line_hash(line)
    return lines


# six entries; the fourth rotates the signing key to NEW_KEY
LINES = _chain(
    [_release(0), _release(1), _release(2), _rotation(NEW_KEY), _release(3), _release(4)],
    [KEY, KEY, KEY, KEY, NEW_KEY, NEW_KEY],
)
FOREIGN = _chain([_release(0), _release(1)], [OTHER_KEY, OTHER_KEY])  # another site's ledger
DATA = b"".join(line + b"\n" for line in LINES)


@pytest.fixture(scope="module")
def path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-ledger") / "ledger.jsonl"


def test_the_valid_ledger_verifies():
    for every in (False, True):
        entries, problem = ledger.verify(LINES, PUBLIC, every_signature=every)
        assert problem is None and len(entries) == len(LINES)


def _verify_all(lines: list[bytes]) -> list:
    """verify's problems (None: intact) with the site's key, both ways; verify never raises."""
    problems = []
    for every in (False, True):
        entries, problem = ledger.verify(lines, PUBLIC, every_signature=every)
        assert isinstance(entries, list) and len(entries) <= len(lines)
        if problem is not None:
            assert isinstance(problem, ledger.Problem) and 1 <= problem.line <= len(lines), problem
            assert str(problem)
        problems.append(problem)
    assert (problems[0] is None) == (problems[1] is None), f"the two checks disagree: {problems}"
    return problems


def _read_and_append(path: Path, data: bytes) -> None:
    """The file's last line (never raises) and an append to it: done, or refused with an MMFedError."""
    path.write_bytes(data)
    last = ledger.last_line(path)
    lines = ledger.read_lines(path)
    assert last == (lines[-1] if lines else None)
    try:
        entry = ledger.append(path, KEY, _release(9))
    except MMFedError as exc:
        assert str(path) in str(exc)
        return
    assert ledger.read_lines(path)[-1] == ledger.canonical(entry)


# -- arbitrary bytes ------------------------------------------------------------------------------------


@given(data=st.binary(max_size=600) | st.binary(max_size=100).map(lambda b: DATA + b))
@example(data=b'{"index": 1e400}\n')
@example(data=b'{"index": ' + b"[" * 5000 + b"\n")
@example(data=b'{"index": "x"}\n\xff\xfe\n')
@example(data=b'{"index": 1.5}\n')
def test_arbitrary_bytes(path, data):
    path.write_bytes(data)
    lines = ledger.read_lines(path)
    problems = _verify_all(lines)
    if problems[0] is None:
        assert lines == LINES[: len(lines)], "arbitrary bytes verified as an intact ledger"
    _read_and_append(path, data)


# -- mutated valid ledgers ------------------------------------------------------------------------------


MUTATIONS = ["flip", "byte", "insert", "delete", "cut", "duplicate", "drop", "swap", "shuffle", "foreign",
             "whitespace", "case", "signature"]  # fmt: skip
BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@st.composite
def mutated(draw) -> bytes:
    data = DATA
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(MUTATIONS))
        lines = data.split(b"\n")
        if kind in ("flip", "byte", "insert", "delete", "cut", "whitespace", "case") and data:
            at = draw(st.integers(0, len(data) - 1))
            if kind == "flip":
                data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
            elif kind == "byte":
                data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
            elif kind == "insert":
                data = data[:at] + draw(st.binary(min_size=1, max_size=3)) + data[at:]
            elif kind == "delete":
                data = data[:at] + data[at + draw(st.integers(1, 20)) :]
            elif kind == "cut":
                data = data[:at]
            elif kind == "whitespace":
                data = data[:at] + draw(st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\r\n"])) + data[at:]
            else:
                data = data[:at] + data[at : at + 1].swapcase() + data[at + 1 :]
        elif kind == "duplicate" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
            data = b"\n".join(lines)
        elif kind == "drop" and len(lines) > 1:
            del lines[draw(st.integers(0, len(lines) - 2))]  # not the end: that is a cut
            data = b"\n".join(lines)
        elif kind == "swap" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
        elif kind == "shuffle":
            data = b"\n".join(draw(st.permutations(lines)))
        elif kind == "foreign":
            lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(FOREIGN)))
            data = b"\n".join(lines)
        elif kind == "signature":  # change one base64 character of one signature
            i = draw(st.integers(0, len(LINES) - 1))
            line = lines[i] if i < len(lines) else b""
            at = line.rfind(b'"signature":"') + len(b'"signature":"')
            if at > len(b'"signature":"') and line.find(b'"', at) > at:
                end = line.find(b'"', at)
                pos = draw(st.integers(at, end - 1))
                char = draw(st.sampled_from(BASE64 + b"="))
                lines[i] = line[:pos] + bytes([char]) + line[pos + 1 :]
                data = b"\n".join(lines)
    return data


def _last_line_edited(old: bytes, new: bytes) -> bytes:
    assert old in LINES[-1]
    return b"".join(line + b"\n" for line in [*LINES[:-1], LINES[-1].replace(old, new)])


def _last_signature_with_padding_bits_set() -> bytes:
    line = LINES[-1]
    at = line.find(b'=="')  # a 64-byte signature is 86 base64 characters and ==; the 86th has 2 spare bits
    spare = bytes([BASE64[BASE64.index(line[at - 1]) ^ 1]])
    signature = line[at - 86 : at + 2]
    assert base64.b64decode(signature[:-3] + spare + b"==") == base64.b64decode(signature)
    return b"\n".join([*LINES[:-1], line[: at - 1] + spare + line[at:]]) + b"\n"


@given(data=mutated())
@example(data=_last_signature_with_padding_bits_set())
@example(data=_last_line_edited(b"e-05", b"E-05"))  # the same entry, other bytes
@example(data=_last_line_edited(b"}", b"} "))
@example(data=_last_line_edited(b',"delta"', b', "delta"'))
@example(data=_last_line_edited(b"h\\u00f4pital", b"h\\u00F4pital"))
@example(data=b"\n".join([*LINES[:-1], b" " + LINES[-1]]))
@example(data=DATA.replace(b"MCowBQYDK2VwAyEA", b"MCowBQYDUmVwAyEA"))  # the new key's OID edited: 2.2.101.112
def test_a_mutated_ledger_never_verifies_as_intact(path, data):
    path.write_bytes(data)
    lines = ledger.read_lines(path)
    problems = _verify_all(lines)
    if problems[0] is None:
        assert lines == LINES[: len(lines)], f"a changed ledger verified as intact: {lines}"
    _read_and_append(path, data)


@given(data=mutated())
def test_another_sites_key_never_verifies(data):
    lines = [line for line in data.split(b"\n") if line.strip()]
    if lines and lines != FOREIGN[: len(lines)]:  # (what is left may be the other site's own entry)
        for every in (False, True):
            assert ledger.verify(lines, OTHER_KEY.public_key(), every_signature=every)[1] is not None


def test_a_forged_key_rotation_never_verifies():
    """Entry 0 announces the forger's key (signed by it, not the site's), the rest are signed by it: the
    last signature holds, so the quick check must check each rotation's signature too."""
    forged = _chain([_rotation(OTHER_KEY), _release(1), _release(2)], [OTHER_KEY, OTHER_KEY, OTHER_KEY])
    for every in (False, True):
        problem = ledger.verify(forged, PUBLIC, every_signature=every)[1]
        assert problem is not None and problem.line == 1, problem


def test_append_after_a_last_entry_that_lost_its_newline(path):
    path.write_bytes(DATA.rstrip(b"\n"))
    ledger.append(path, NEW_KEY, _release(5))
    lines = ledger.read_lines(path)
    assert lines[:-1] == LINES and ledger.verify(lines, PUBLIC, every_signature=True)[1] is None

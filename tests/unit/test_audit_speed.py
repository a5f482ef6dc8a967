"""What makes `mmfed audit` fast must not change what it accepts: signatures checked over bytes cut from
the line (not re-serialised) and in threads agree with the canonical check one by one; the collector is
given back its objects; dp-accounting's RDP module loaded alone is the package's own."""

import gc
import subprocess
import sys

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from mmfed.privacy import entry_signatures, ledger

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(3, 35)))
PUBLIC = KEY.public_key()
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(4, 36)))


def _fields(i: int) -> dict:
    return {
        "run_id": "run-1", "round": i + 1, "time": "2026-01-01T10:00:00+00:00", "site": "site-a",
        "data_fingerprint": "sha256:" + "ab" * 32, "budget": "site", "noise_multiplier": 1.1,
        "sample_rate": 0.0125, "steps": 80, "max_grad_norm": 1.0, "delta": 1e-05,
        "epsilon_prv": 0.5 * (i + 1), "epsilon_rdp": 0.61 * (i + 1),
        "accountant": {"prv": {"eps_error": 0.01}, "rdp": {"orders": [2, 3, 4, 64]}},
    }  # fmt: skip


def _chain(n: int, keys=None) -> list[bytes]:
    lines, prev = [], ledger.GENESIS
    for i in range(n):
        line = ledger.canonical(ledger.signed_entry(_fields(i), (keys or {}).get(i, KEY), i, prev))
        lines.append(line)
        prev = ledger.line_hash(line)
    return lines


LINES = _chain(3)


def _body(entry: dict) -> bytes:
    return ledger.canonical({k: v for k, v in entry.items() if k != "signature"})


def test_the_bytes_cut_from_a_written_line_are_the_canonical_ones():
    for line in LINES:
        entry = orjson.loads(line)
        assert b"\\" not in line  # (so the cut applies)
        assert entry_signatures.signed_bytes(line, entry) == _body(entry)
        assert ledger.signature_ok(entry, PUBLIC, line) and ledger.signature_ok(entry, PUBLIC)


def test_lines_the_cut_cannot_read_plainly_fall_back_to_the_canonical_check():
    entry = orjson.loads(LINES[0])
    sig = entry["signature"].encode()
    nested = LINES[0].replace(b'"prv":{', b'"prv":{"signature":"' + sig + b'",')
    escaped = LINES[0].replace(b'"site-a"', b'"site\\u002da"')  # the same entry, other bytes
    spaced = LINES[0].replace(b',"site"', b', "site"')
    first = b'{"signature":"' + sig + b'",' + LINES[0][1:].replace(b',"signature":"' + sig + b'"', b"")
    for line in (nested, escaped, spaced, first):
        parsed = orjson.loads(line)
        assert ledger.signature_ok(parsed, PUBLIC, line) == ledger.signature_ok(parsed, PUBLIC)
    assert entry_signatures.signed_bytes(nested, orjson.loads(nested)) is None  # two "signature": no cut
    assert not ledger.signature_ok(orjson.loads(nested), PUBLIC, nested)  # (an extra member is an edit)
    assert ledger.signature_ok(orjson.loads(escaped), PUBLIC, escaped)  # same content: canonical holds


@given(
    line=st.sampled_from(LINES),
    at=st.integers(min_value=0, max_value=2000),
    cut=st.integers(min_value=0, max_value=3),
    insert=st.binary(max_size=4) | st.sampled_from([b'"', b",", b'\\"', b'"signature":"', b"1", b" "]),
)
def test_a_mutated_line_is_accepted_with_the_cut_exactly_when_canonically(line, at, cut, insert):
    at %= len(line)
    mutated = line[:at] + insert + line[at + cut :]
    try:
        entry = orjson.loads(mutated)
    except orjson.JSONDecodeError:
        return
    if not isinstance(entry, dict) or not isinstance(entry.get("signature"), str):
        return
    fast = ledger.signature_ok(entry, PUBLIC, mutated)
    assert fast == ledger.signature_ok(entry, PUBLIC)
    if fast:  # only the site's own content verifies
        assert {k: v for k, v in entry.items() if k != "signature"} == {
            k: v for k, v in orjson.loads(line).items() if k != "signature"
        }


def test_signatures_checked_in_threads_agree_and_name_the_first_bad_entry():
    n = 2 * entry_signatures._PARALLEL_FROM + 3
    lines = _chain(n, keys={300: OTHER, 400: OTHER})  # two entries signed by another key
    entries = [orjson.loads(line) for line in lines]
    threaded = entry_signatures.signatures_valid(lines, entries, [PUBLIC] * n)
    assert threaded == [ledger.signature_ok(e, PUBLIC) for e in entries]
    assert [i for i, ok in enumerate(threaded) if not ok] == [300, 400]
    # the key_id still matches (only the signature is another key's): the signature check names it
    for e in entries:
        e["key_id"] = entries[0]["key_id"]
    lines = [ledger.canonical(e) for e in entries]
    problem = ledger.verify(lines, PUBLIC, every_signature=True)[1]
    assert problem is not None and problem.line == 301 and "signature does not verify" in problem.message


def test_the_audit_gives_the_collector_back_its_objects_when_its_result_goes(tmp_path):
    from mmfed.audit.check import audit_ledger

    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"\n".join(LINES) + b"\n")
    key = tmp_path / "site.pub.pem"
    key.write_bytes(
        PUBLIC.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    result = audit_ledger(path, None, public_key=key)
    assert result.chain and gc.get_freeze_count() > 0 and gc.isenabled()
    del result
    assert gc.get_freeze_count() == 0


def test_dp_accountings_rdp_module_loaded_alone_is_the_packages_own():
    code = (
        "import sys\n"
        "from mmfed.audit import epsilon\n"
        "rdp = epsilon.dp_accounting_rdp()\n"
        "assert 'dp_accounting' not in sys.modules and 'dp_accounting.pld' not in sys.modules\n"
        "import dp_accounting\n"
        "assert dp_accounting.rdp.rdp_privacy_accountant is rdp\n"
        "assert dp_accounting.GaussianDpEvent is rdp.dp_event.GaussianDpEvent\n"
        "acc = dp_accounting.rdp.RdpAccountant()\n"
        "acc.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(2.0)), 10)\n"
        "print(acc.get_epsilon(1e-5), epsilon._google_pld([(2.0, 0.1, 10)], 1e-5))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rdp, pld = map(float, done.stdout.split())
    assert 0 < pld < rdp

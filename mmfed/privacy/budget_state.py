"""A site's persisted accountant state, reconciled with its signed ledger: crash recovery, legacy migration.

The ledger (state/ledger.jsonl) is the source of truth; state/budget.json saves the accountant history
with the site's high-water mark (the last entry it wrote). Reading the history checks the two against each
other: a missing, truncated, rolled-back or edited ledger, or a replaced state, is refused naming both
sides — a budget is never reset. One verified entry past the mark is a release whose state write a crash
cut off, and is taken in. A site from before one budget per site (one state/budget/<fingerprint>.json
per data version) is migrated once, in ledger order, never dropping a release.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mmfed.files import WriteError, write_atomic
from mmfed.privacy import accounting, ledger, site_keys
from mmfed.privacy.accounting import History
from mmfed.privacy.key_rotation import first_public_key
from mmfed.privacy.refusals import LedgerRefusal

LEDGER = site_keys.LEDGER_FILE
BUDGET = "state/budget.json"  # the one accountant state of the site (+ its ledger high-water mark)
BUDGETS = "state/budget"  # before one budget per site: one accountant file per data fingerprint


def ledger_history(entries: list[dict[str, Any]]) -> History:
    """The accountant history the ledger entries record: (σ, sample rate, steps) of each release, in order
    (key rotations release nothing)."""
    return accounting.compact(
        (e["noise_multiplier"], e["sample_rate"], e["steps"])
        for e in entries
        if e.get("kind") != ledger.ROTATION
    )


class BudgetState:
    """The ledger and accountant state in a site's home, signed and checked with the site's `key`."""

    def __init__(self, home: Path, site: str, key: Ed25519PrivateKey):
        self.home = home
        self.site = site
        self.key = key
        self.ledger_path = self.home / LEDGER
        self.budget_path = self.home / BUDGET

    def history(self, delta: float) -> History:
        """The site's whole history — every release, whatever the data version — read from its ledger
        after verifying it, and checked against the accountant state saved with the last release.
        Anything that does not add up is refused, naming both sides: a budget is never reset.
        `delta`: the policy's δ, for the ε the messages name (and a migrated state records)."""
        lines = ledger.read_lines(self.ledger_path)
        state = self._read()
        head = state.get("ledger_head") if state else None
        if state is None and lines:
            state = self._migrate(lines, delta)  # a site from before one budget per site
            head = state["ledger_head"]
        if state is not None and not lines and (head or state["history"]):
            raise LedgerRefusal(
                f"{self.ledger_path} is missing or empty, but {self.budget_path} records "
                f"{sum(s for *_, s in state['history'])} steps released up to entry "
                f"{head['index'] if head else '?'}; a restored or emptied ledger never re-grants budget — "
                "put back the ledger that matches it"
            )
        entries = self._verify(lines, head)
        past = len(entries) - (head["index"] + 1 if head else 0)
        if state is not None and past > 1:  # one is a release whose state write a crash cut off
            raise LedgerRefusal(
                f"{self.ledger_path} has {past} entries past the last release {self.budget_path} records "
                f"(entry {head['index'] if head else 'none'}): the accountant state was replaced or rolled "
                "back; restore the state that matches the ledger"
            )
        from_ledger = ledger_history(entries)
        if state is not None:
            self._check_saved(state, head, entries, delta)
        return from_ledger

    def _check_saved(
        self, state: dict[str, Any], head: dict[str, Any] | None, entries: list[dict[str, Any]], delta: float
    ) -> None:
        """The saved accountant history must be the ledger's up to the saved high-water mark."""
        upto = head["index"] + 1 if head else 0
        saved = accounting.compact(tuple(h) for h in state["history"])
        covered = ledger_history(entries[:upto])
        if saved != covered:
            raise LedgerRefusal(
                f"{self.budget_path} holds {sum(s for *_, s in saved)} steps "
                f"(ε {accounting.epsilon_rdp(saved, delta) if saved else 0:.4g} RDP) but "
                f"{self.ledger_path} up to entry {upto - 1} holds {sum(s for *_, s in covered)} steps "
                f"(ε {accounting.epsilon_rdp(covered, delta) if covered else 0:.4g} RDP): "
                "the accountant state was replaced or edited; restore the matching pair from backup"
            )

    def check_anchor(self, anchor: str) -> None:
        """`anchor` ("INDEX:HASH"): the last head of this site's ledger the server recorded. A ledger that
        does not hold it was rolled back or truncated (e.g. a backup restored with its state): refused."""
        if not anchor:
            return
        try:
            index_text, expected = anchor.split(":", 1)
            index = int(index_text)
        except ValueError:
            raise LedgerRefusal(f"the server sent a malformed ledger anchor {anchor[:80]!r}") from None
        lines = ledger.read_lines(self.ledger_path)
        if index >= len(lines) or ledger.line_hash(lines[index]) != expected:
            have = f"{len(lines)} entries" if index >= len(lines) else f"another entry {index}"
            raise LedgerRefusal(
                f"the server recorded this site's ledger head at entry {index} (hash {expected[:12]}…), but "
                f"{self.ledger_path} has {have}: the ledger was rolled back or truncated (e.g. restored from "
                "a backup); a released budget is never un-spent — put back the ledger that holds that entry"
            )

    def _verify(self, lines: list[bytes], head: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The ledger's entries: the whole chain checked (cheap hashes), the entry at the site's own
        high-water mark unchanged, and every signature after it verified with the site's key."""
        if head is not None:
            if len(lines) <= head["index"]:
                raise LedgerRefusal(
                    f"{self.ledger_path} has {len(lines)} entries but this site has released up to entry "
                    f"{head['index']}: the ledger was truncated or rolled back; it trains no more until the "
                    "ledger that matches its state is back (a released budget is never un-spent)"
                )
            if ledger.line_hash(lines[head["index"]]) != head["hash"]:
                raise LedgerRefusal(
                    f"{self.ledger_path}: entry {head['index']} is not the one this site wrote (hash "
                    f"{head['hash'][:12]}…): the ledger was edited or replaced"
                )
        public = self.key.public_key()
        entries, problem = ledger.verify(lines, first_public_key(self.home, lines, public))
        start = head["index"] + 1 if head else 0
        problem = problem or next(
            (
                ledger.Problem(i + 1, f"entry {e['index']}: signature does not verify with the site's key")
                for i, e in enumerate(entries[start:], start)
                if e["key_id"] != site_keys.key_id(public) or not ledger.signature_ok(e, public)
            ),
            None,
        )
        if problem:
            raise LedgerRefusal(f"{self.ledger_path}: {problem}; run `mmfed audit` on this site")
        return entries

    def _read(self) -> dict[str, Any] | None:
        if not self.budget_path.exists():
            return None
        try:
            state = json.loads(self.budget_path.read_text())
            if state["accountant"]["mechanism"] != "prv":
                raise ValueError("another accountant")
            history = [tuple(h) for h in state["accountant"]["history"]]
            head = state["ledger_head"]
            if head is not None and not (isinstance(head["index"], int) and isinstance(head["hash"], str)):
                raise ValueError("bad ledger head")
            return {"history": history, "ledger_head": head}
        except (ValueError, KeyError, TypeError):
            raise LedgerRefusal(
                f"{self.budget_path}: the site's accountant state is unreadable; it is never reset "
                "automatically — restore it from backup"
            ) from None

    def _migrate(self, lines: list[bytes], delta: float) -> dict[str, Any]:
        """A ledger without `state/budget.json`: a site from before one budget per site keeps one
        accountant file per data fingerprint (state/budget/). Each must match its entries of the ledger;
        then they are composed — in ledger order, never dropped — into the one budget."""
        entries = self._verify(lines, None)
        releases = [e for e in entries if e.get("kind") != ledger.ROTATION]
        one_budget = [e for e in releases if e.get("budget") == "site"]
        # the state of the one budget is written right after the ledger: only a crash between the two
        # writes of the site's very first release leaves one such entry without it
        if len(one_budget) > 1 or (one_budget and one_budget[-1] is not releases[-1]):
            raise LedgerRefusal(
                f"{self.budget_path} is missing but {self.ledger_path} records {len(one_budget)} releases "
                "of the site's budget: a budget is never reset — restore the file from backup"
            )
        by_fingerprint: dict[str, list[dict[str, Any]]] = {}
        for e in releases:
            if e.get("budget") != "site":
                by_fingerprint.setdefault(e["data_fingerprint"], []).append(e)
        for fingerprint, group in by_fingerprint.items():
            self._check_legacy(fingerprint, group)
        history = ledger_history(entries)
        head = {"index": len(lines) - 1, "hash": ledger.line_hash(lines[-1])}
        self.save(history, head, delta)
        return {"history": history, "ledger_head": head}

    def _check_legacy(self, fingerprint: str, group: list[dict[str, Any]]) -> None:
        """The legacy accountant file of one data fingerprint must hold exactly its ledger entries."""
        legacy = self.home / BUDGETS / f"{fingerprint.replace(':', '-')}.json"
        try:
            saved = accounting.compact(
                tuple(h) for h in json.loads(legacy.read_text())["accountant"]["history"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            raise LedgerRefusal(
                f"{self.ledger_path} records releases on data {fingerprint[:19]}, but {legacy} (its "
                "accountant state) is missing or unreadable: a budget is never reset — restore it "
                "from backup"
            ) from None
        if saved != ledger_history(group):
            raise LedgerRefusal(f"{legacy} does not match the ledger's entries for that data: restore both")

    def save(self, history: History, head: dict[str, Any] | None, delta: float) -> None:
        self.budget_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "site": self.site,
            "delta": delta,
            "accountant": {"mechanism": "prv", "history": [list(h) for h in history]},
            # the site's high-water mark: the last entry it wrote (a shorter ledger is refused)
            "ledger_head": head,
        }
        try:
            write_atomic(self.budget_path, json.dumps(state, indent=1))
        except WriteError as exc:  # a full disk: the entry just appended released nothing, take it back
            if head is None or not ledger.take_back(self.ledger_path, head["hash"]):
                raise
            raise WriteError(
                self.budget_path, exc, f"{self.ledger_path} and it are as they were (nothing was released)"
            ) from exc

"""A site's warm worker (`mmfed site serve`): one long-lived process, owned by the site, that keeps torch,
the site's runtime (model, decoded data, features) and its privacy state loaded between messages.

Flower 1.42 starts a fresh ClientApp process for every message; a site that runs a worker has those
processes hand fit and evaluate to it over a Unix socket in its home (mmfed.site.wire) and pass its reply
on. The worker runs each message through the very SiteClient code a ClientApp runs in-process — every
check of the site's policy, budget and ledger, and the ledger entry written before the update leaves —
and serves them one at a time. SecAgg+'s masking stays in the ClientApp process; what comes back is what
the site would have returned in-process, or its refusal or failure as a reason code (the full text goes
to the site's log here).

What is kept: the runtimes (mmfed.site.loading), and the file identity cache (mmfed.data.file_identity:
content digests and manifest probes, in memory and in `state/file-identity.json`). Before each message
the worker looks at its files (manifest, labels, policy, keys, every data file: a stat each); when one
changed, the site's runtimes are built again, re-reading only the changed files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import selectors
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from mmfed.data import file_identity
from mmfed.errors import ConfigError, MMFedError
from mmfed.site import sitelog, wire

log = logging.getLogger("mmfed.site.worker")
LOCK = "worker.lock"
WATCHED = ("manifest.csv", "labels.txt")  # in the site directory
WATCHED_HOME = ("site.toml", "keys/ledger-signing.pem", "keys/ledger-signing.pub.pem")


class Worker:
    def __init__(self, site_dir: Path, state_dir: Path | None = None, cache_dir: Path | None = None):
        self.site_dir = Path(site_dir).resolve()
        self.home = Path(state_dir or site_dir).resolve()
        self.name = self.site_dir.name
        self.node_config: dict[str, Any] = {"site-dir": str(self.site_dir)}
        if state_dir:
            self.node_config["state-dir"] = str(self.home)
        if cache_dir:
            self.node_config["cache-dir"] = str(Path(cache_dir).resolve())
        self.socket = wire.socket_path(self.home)
        self.files = file_identity.FileIdentityCache(self.home / file_identity.STATE_FILE)
        self.messages = 0
        self.started = time.time()
        self.summary: dict[str, Any] = {}
        self._work = threading.Lock()  # one message at a time: the runtimes are not shared
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._lock_file = None
        self._seen: dict[str, list[int] | None] | None = None
        self._threads: set[threading.Thread] = set()

    # -- start and stop ---------------------------------------------------------------------------
    def open(self) -> None:
        """Take the socket: refused when another worker serves it; a stale socket is removed."""
        folder = self.socket.parent
        if not (self.home / "site.toml").exists():
            raise MMFedError(f"{self.home}: no site.toml; run `mmfed site init --dir {self.site_dir}` first")
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.stat(folder).st_uid != os.getuid():
            raise MMFedError(f"{folder} belongs to another account; run the worker as the site's account")
        os.chmod(folder, 0o700)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        self._lock_file = os.fdopen(fd, "r+")  # held for the worker's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            pid = self._lock_file.read().strip() or "?"
            self._lock_file.close()
            self._lock_file = None
            raise MMFedError(
                f"a site worker (pid {pid}) already serves {self.socket}; stop it first"
            ) from None
        self._lock_file.truncate(0)
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()
        self._take_socket()

    def _take_socket(self) -> None:
        if os.path.lexists(self.socket):
            if wire.connect(self.socket, timeout=1.0) is not None:
                raise MMFedError(f"{self.socket} is served by another process; stop it first")
            if not self.socket.is_socket():
                raise MMFedError(f"{self.socket} exists and is not a socket; remove it")
            self.socket.unlink()  # stale: its worker died
            log.info("removed a stale socket %s", self.socket)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mask = os.umask(0o177)  # 0600 from the first moment
        try:
            with wire.Address(self.socket) as address:
                listener.bind(address)
        finally:
            os.umask(mask)
        os.chmod(self.socket, 0o600)
        listener.listen(16)
        self._listener = listener

    def close(self) -> None:
        """Stop serving: no new message; the one in progress (if any) finishes first."""
        self._stop.set()
        with self._work:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
                with contextlib.suppress(FileNotFoundError):
                    self.socket.unlink()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None
        for thread in list(self._threads):  # a reply on its way is sent before the process ends
            if thread is not threading.current_thread():
                thread.join(timeout=30)

    def warm(self) -> None:
        """Import torch and the site's training code, and read the site's data and budget once."""
        import mmfed.site.loading  # noqa: F401 - torch, the models, Opacus: once, not per message

        with self._work:
            self.summary = self._summary()

    def serve_forever(self) -> None:
        assert self._listener is not None, "open() first"
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not selector.select(timeout=0.2):
                    continue
                try:
                    conn, _ = self._listener.accept()
                except OSError:
                    continue
                thread = threading.Thread(target=self._connection, args=(conn,), daemon=True)
                self._threads = {t for t in self._threads if t.is_alive()} | {thread}
                thread.start()

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (Ctrl-C), then stop cleanly (`mmfed site serve`)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        try:
            self.warm()
            log.info("site %s: worker ready on %s (pid %d)", self.name, self.socket, os.getpid())
            self.serve_forever()
        finally:
            self.close()
            log.info("site %s: worker stopped", self.name)

    # -- one connection, one or more messages ----------------------------------------------------
    def _connection(self, conn: socket.socket) -> None:
        with conn:
            uid = wire.peer_uid(conn)
            if uid is not None and uid != os.getuid():
                log.warning("site %s: refused a connection from account %d", self.name, uid)
                return
            while not self._stop.is_set():
                try:
                    message = wire.receive(conn)
                except wire.WorkerLost:
                    return  # the ClientApp went away mid-request: nothing was done
                except wire.WireError as exc:
                    with contextlib.suppress(OSError):
                        wire.send(conn, {"kind": "error", "message": str(exc)})
                    return
                if message is None:
                    return
                try:
                    reply, arrays = self.answer(*message)
                except Exception:  # noqa: BLE001 - the worker's own bug: its console has the traceback
                    log.exception(
                        "site %s: the worker could not answer a %s message", self.name, message[0].get("op")
                    )
                    reply, arrays = (
                        {"kind": "error", "message": "the worker could not answer (see its console)"},
                        [],
                    )
                try:
                    wire.send(conn, reply, arrays)
                except OSError:  # recorded (if DP) but never sent: the budget is spent, nothing leaked
                    log.warning("site %s: the ClientApp went away before the reply", self.name)
                    return

    def answer(self, header: dict[str, Any], arrays: list) -> tuple[dict[str, Any], list]:
        op = header.get("op")
        if op == "status":
            return {"kind": "status", **self.status()}, []
        if op in ("fit", "evaluate"):
            return self._message(op, header, arrays)
        return {"kind": "error", "message": f"unknown op {str(op)[:40]!r}"}, []

    def status(self) -> dict[str, Any]:
        busy = not self._work.acquire(blocking=False)
        if not busy:
            try:
                self.summary = self._summary()
            finally:
                self._work.release()
        return {"pid": os.getpid(), "site": self.name, "home": str(self.home), "messages": self.messages,
                "since": self.started, "busy": busy, **self.summary}  # fmt: skip

    # -- a message -------------------------------------------------------------------------------
    def _message(self, op: str, header: dict[str, Any], arrays: list) -> tuple[dict[str, Any], list]:
        from mmfed.federation.outcome import SiteOutcome
        from mmfed.site import client as site_client

        config = header.get("config") if isinstance(header.get("config"), dict) else {}
        where = {"run_id": str(config.get("run-id", "")), "round": _round(config)}
        reporter = site_client.SiteClient(None, self.node_config, local=True)
        token = site_client._MASKED.set(bool(header.get("masked")))
        outcome = None
        try:
            with self._work, file_identity.using(self.files):
                client = site_client.SiteClient(self._config(header), self.node_config, local=True)
                self._refresh()
                watched = self._watched()  # as they were before this message read them
                try:
                    result = client.fit(arrays, config) if op == "fit" else client.evaluate(arrays, config)
                finally:
                    self._seen = self._identities(watched)
        except site_client.SiteDropout as exc:  # SecAgg+: the ClientApp raises it again
            outcome = SiteOutcome.from_text(str(exc.args[0]))
        except Exception as exc:  # noqa: BLE001 - the site's failure, reported as in-process
            outcome = reporter._report(None, self.name, exc, **where)
        finally:
            site_client._MASKED.reset(token)
        self.messages += 1
        if outcome is not None:
            self._log(op, where, f"{outcome.status} ({outcome.code})")
            return {"kind": "outcome", "outcome": dataclasses.asdict(outcome)}, []
        if op == "fit":
            update, examples, metrics = result
            self._log(op, where, _did("fit", metrics), metrics.get("epsilon_prv"))
            return {"kind": "result", "examples": examples, "metrics": metrics}, list(update)
        loss, examples, metrics = result
        self._log(op, where, _did("evaluate", metrics))
        return {"kind": "result", "loss": loss, "examples": examples, "metrics": metrics}, []

    def _config(self, header: dict[str, Any]):
        from mmfed.federation.config import FederationConfig

        if str(Path(str(header.get("site_dir", ""))).resolve()) != str(self.site_dir):
            raise ConfigError(
                "site-dir", f"this worker serves {self.site_dir}; the SuperNode's node config names "
                f"{header.get('site_dir')!r}; give both the same site directory",
            )  # fmt: skip
        if not isinstance(header.get("run_config"), dict):
            raise ConfigError("run-config", "the ClientApp sent no run config")
        return FederationConfig.from_mapping(header["run_config"], where="the run config")

    def _log(self, op: str, where: dict[str, Any], did: str, epsilon: float | None = None) -> None:
        """One line per message, on the console and in the site's log: round, what it did, ε after."""
        if epsilon is not None:
            self.summary["epsilon"] = epsilon
        after = self.summary.get("epsilon")
        cap = self.summary.get("max_epsilon")
        eps = "ε ?" if after is None else f"ε {after:.3f}" + (f"/{cap:g}" if cap is not None else "")
        log.info("site %s: round %s %s: %s; %s", self.name, where["round"], op, did, eps)
        try:
            sitelog.record(self.home, "worker", op=op, **where, result=did, epsilon_prv=after)
        except OSError as exc:
            log.error("site %s: could not write the site log: %s", self.name, exc)

    # -- what changed since the last message ---------------------------------------------------------
    def _runtimes(self) -> list:
        from mmfed.site import loading

        return [r for r in loading._SITES.values() if r.home == self.home and r.deployed]

    def _watched(self) -> dict[str, list[int] | None]:
        paths = [self.site_dir / n for n in WATCHED] + [self.home / n for n in WATCHED_HOME]
        return {str(p): file_identity.identity(p) for p in paths}

    def _identities(self, watched: dict[str, list[int] | None]) -> dict[str, list[int] | None]:
        """The site's files as the runtimes hold them: the watched files as they were before the message,
        each data file as it was when last read (the file identity cache), else as it is now."""
        seen = dict(watched)
        for runtime in self._runtimes():
            for sample in [*runtime.all_train, *runtime.test.samples]:
                for path in (p for p in (sample.image, sample.audio, sample.video) if p):
                    known = self.files.files.get(str(path), {}).get("id")
                    seen[str(path)] = known if known is not None else file_identity.identity(Path(path))
        return seen

    def _refresh(self) -> None:
        """Forget the site's runtimes when any of its files changed since the last message."""
        from mmfed.site import loading

        if self._seen is None:
            return
        if any(file_identity.identity(Path(p)) != ident for p, ident in self._seen.items()):
            log.info("site %s: its files changed; reading them again", self.name)
            for key in [k for k, r in loading._SITES.items() if r.home == self.home]:
                del loading._SITES[key]
            self._seen = None

    def _summary(self) -> dict[str, Any]:
        return site_summary(self.site_dir, self.home, self.files)


def _round(config: dict[str, Any]) -> int:
    try:
        return int(config.get("server-round", 0))
    except (TypeError, ValueError):
        return 0


def _did(op: str, metrics: dict[str, Any]) -> str:
    if "outcome" in metrics:
        return f"{metrics['outcome']} ({metrics.get('code')})"
    if op == "evaluate":
        return "evaluated"
    return "released (DP)" if "epsilon_prv" in metrics else "trained (no DP)"


def site_summary(site_dir: Path, home: Path, files: file_identity.FileIdentityCache | None = None) -> dict:
    """The site's data (records, training records, modalities) and budget (ε spent, cap), as `mmfed site
    status` shows them; `problem` says what could not be read."""
    from mmfed.data.site_files import load_site_manifest
    from mmfed.privacy.budget import SiteBudget
    from mmfed.privacy.fingerprint import data_fingerprint
    from mmfed.privacy.round_plan import plan_cap

    out: dict[str, Any] = {}
    try:
        with file_identity.using(files or Path(home) / file_identity.STATE_FILE):
            manifest = load_site_manifest(Path(site_dir))
            train = manifest.split("train")
            held = [m for m, n in manifest.modality_counts().items() if n]
            out.update(records=len(manifest.samples), train=len(train), modalities=held)
            budget = SiteBudget(home, data_fingerprint(train), site=Path(site_dir).name)
            policy = budget.policy
            out.update(epsilon=budget.spent()[0], max_epsilon=plan_cap(policy), delta=policy.delta)
    except (MMFedError, OSError) as exc:
        out["problem"] = str(exc)
    return out


def ping(home: Path) -> dict[str, Any] | None:
    """The worker's status, or None when no worker serves this home."""
    try:
        reply = wire.request(wire.socket_path(home), {"op": "status"})
    except (wire.WorkerLost, wire.WireError):
        return None
    if reply is None or reply[0].get("kind") != "status":
        return None
    return reply[0]

"""A loopback federation for the deployment scripts (loopback.py, faults.py): a TLS SuperLink with SuperNode
authentication on 127.0.0.1, and per site a warm worker (`mmfed site serve`) and an authenticated SuperNode,
each process in its own process group so that a script can kill, freeze or restart any one of them. Every
process started here (and every process those start) is stopped by `stop_all`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
PROCS: list[subprocess.Popen] = []  # every long-running process started
PORTS: list[int] = []  # every port used (for the final sweep of orphaned Flower processes)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        FLWR_HOME=str(flwr_home),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        NO_COLOR="1",
        COLUMNS="200",
    )
    return env


def run(cmd: list[str], env: dict, cwd: Path, timeout: float = 300, check: bool = True) -> str:
    """Run a short command; return stdout; raise with its output on failure."""
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> exit {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res.stdout


def flwr_json(args: list[str], env: dict, cwd: Path) -> dict:
    return json.loads(run(["flwr", *args, "--format", "json"], env, cwd, timeout=120))


def start(cmd: list[str], env: dict, cwd: Path, logfile: Path) -> subprocess.Popen:
    """Start a long-running process in its own process group, output appended to logfile."""
    with open(logfile, "a") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    PROCS.append(proc)
    return proc


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    PORTS.extend(ports)
    return ports


def wait_for(pred, timeout: float, what: str, interval: float = 1.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := pred():
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, cmdline) for every process we can read."""
    table = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(d.name)] = (int(fields[1]), int(fields[2]), cmd)
        except (OSError, ValueError):
            continue
    return table


def _ours(table: dict, procs: list[subprocess.Popen], ports: list[int]) -> set[int]:
    """The given processes, their descendants (the SuperLink's SuperExec runs in its own session),
    and any Flower process using one of the given ports (orphans whose parent already exited)."""
    pids = {p.pid for p in procs if p.poll() is None}
    pids |= {
        pid
        for pid, (_, _, cmd) in table.items()
        if ("flwr" in cmd or "flower" in cmd) and any(f"127.0.0.1:{port} " in cmd + " " for port in ports)
    }
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _, _) in table.items() if ppid in pids} - pids
        pids |= kids
        grew = bool(kids)
    return pids - {os.getpid()}


def signal_all(procs: list[subprocess.Popen], ports: list[int], sig: int) -> int:
    """Send `sig` to these processes' groups and to every descendant; return how many processes."""
    own_group = os.getpgid(0)
    table = _proc_table()
    pids = _ours(table, procs, ports)
    for pgid in {table[p][1] for p in pids if p in table} - {own_group}:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
    for pid in pids:  # descendants in other groups; never our own group as a whole
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return len(pids)


def stop(procs: list[subprocess.Popen], ports: list[int], grace: float = 10.0) -> None:
    """SIGTERM the process groups of these processes (and their orphans), then SIGKILL what is left."""
    for sig in (signal.SIGCONT, signal.SIGTERM, signal.SIGKILL):  # SIGCONT: a frozen one cannot exit
        if not signal_all(procs, ports, sig):
            break
        end = time.monotonic() + (0 if sig == signal.SIGCONT else grace)
        while time.monotonic() < end and _ours(_proc_table(), procs, ports):
            time.sleep(0.5)
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    if left := _ours(_proc_table(), procs, ports):
        log(f"WARNING: processes still alive after SIGKILL: {sorted(left)}")


def stop_all() -> None:
    stop(PROCS, PORTS)


def run_script(main) -> None:
    """Run a script's `main` (its exit code), reporting a failure, and stop every process it started,
    also on SIGTERM and Ctrl-C."""
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops everything
    code = 1
    try:
        code = main()
    except Exception as exc:  # report, then clean up
        log(f"FAILED: {exc}")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        stop_all()
    sys.exit(code)


class Federation:
    """The certificates, sites, SuperLink, workers and SuperNodes of one loopback federation in `work`."""

    def __init__(self, work: Path, data_dir: str, scenario: str, sites: int, database: bool = False):
        self.work = work
        self.certs, self.keys, self.logs = work / "certs", work / "keys", work / "logs"
        self.flwr_home = work / ".flwr"
        for d in (self.keys, work / "sites", self.logs, self.flwr_home):
            d.mkdir(parents=True, exist_ok=True)
        self.env = make_env(self.flwr_home)
        self.data_dir, self.scenario, self.n = data_dir, scenario, sites
        self.database = work / "superlink.db" if database else None  # persisted: survives a restart
        self.link_port, *self.node_ports = free_ports(1 + sites + 4)
        self.link = f"127.0.0.1:{self.link_port}"
        self.ca = self.certs / "ca.crt"
        self.sites: list[Path] = []
        self.superlink: subprocess.Popen | None = None
        self.workers: dict[int, subprocess.Popen] = {}
        self.supernodes: dict[int, subprocess.Popen] = {}
        self.node_ids: dict[str, int] = {}  # site -> its SuperNode's id (the SuperLink's, by its key)
        self._ready: dict[int, int] = {}  # site -> "worker ready" lines in its log before its last start

    def mmfed(self, *args: str) -> str:
        return run(["mmfed", *args], self.env, self.work)

    # -- certificates, node keys, sites --------------------------------------------------------------
    def setup(self) -> None:
        self.mmfed("certs", "server", "--out", str(self.certs), "--host", "localhost", "--host", "127.0.0.1")
        prepare = ["data", "prepare", "--scenario", self.scenario]
        out = self.mmfed(*prepare, *(["--data-dir", self.data_dir] if self.scenario != "digits-av" else []))
        sources = [Path(ln.strip()) for ln in out.splitlines() if ln.strip().startswith("/")]
        sources = [p for p in sources if (p / "manifest.csv").exists()][: self.n]
        if len(sources) < self.n:
            raise RuntimeError(f"data prepare printed {len(sources)} site directories:\n{out}")
        for src in sources:
            dst = self.work / "sites" / src.name
            if not dst.exists():
                shutil.copytree(src, dst)
            if not (dst / "site.toml").exists():
                self.mmfed("site", "init", "--dir", str(dst))
            if not (self.keys / src.name).exists():
                self.mmfed("certs", "node", "--out", str(self.keys), "--name", src.name)
            self.sites.append(dst)
        if not (self.keys / "rogue").exists():
            self.mmfed("certs", "node", "--out", str(self.keys), "--name", "rogue")
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "{self.link}"\n'
            f'root-certificates = "{self.ca}"\n'
        )

    # -- the SuperLink -----------------------------------------------------------------------------------
    def start_superlink(self) -> None:
        """TLS (our CA + server cert), node auth, no runtime dependency installation."""
        cmd = ["flower-superlink", "--ssl-ca-certfile", str(self.ca), "--ssl-certfile",
               str(self.certs / "server.pem"), "--ssl-keyfile", str(self.certs / "server.key"),
               "--enable-supernode-auth", "--disable-runtime-dependency-installation",
               "--host", "127.0.0.1", "--port", str(self.link_port)]  # fmt: skip
        cmd += ["--database", str(self.database)] if self.database else []
        self.superlink = link = start(cmd, self.env, self.work, self.logs / "superlink.log")

        def up() -> bool:
            if link.poll() is not None:
                raise RuntimeError(f"SuperLink exited {link.returncode}: see {self.logs / 'superlink.log'}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.link_port)) == 0

        wait_for(up, 60, "the SuperLink port", 0.5)

    def kill_superlink(self) -> int:
        """SIGKILL the SuperLink and what it started (SuperExec, the ServerApp): a crash, mid-run."""
        # its tree only: the SuperNodes name its port too
        count = signal_all([self.superlink], [], signal.SIGKILL)
        self.superlink.wait(timeout=30)
        return count

    # -- the sites' workers and SuperNodes ---------------------------------------------------------------
    def start_worker(self, i: int) -> None:
        logfile = self.logs / f"worker_{self.sites[i].name}.log"
        self._ready[i] = logfile.read_text(errors="replace").count("worker ready") if logfile.exists() else 0
        cmd = ["mmfed", "site", "serve", "--dir", str(self.sites[i])]
        self.workers[i] = start(cmd, self.env, self.work, logfile)

    def wait_worker(self, i: int) -> None:
        """Until the worker started last for site i says it is ready (the log is appended to)."""
        site, proc = self.sites[i], self.workers[i]
        logfile = self.logs / f"worker_{site.name}.log"

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker of {site.name} exited {proc.returncode}: see {logfile}")
            return logfile.read_text(errors="replace").count("worker ready") > self._ready[i]

        wait_for(ready, 180, f"the worker of {site.name}", 0.5)

    def worker_busy(self, i: int) -> bool:
        from mmfed.site.worker import ping

        status = ping(self.sites[i])
        return bool(status and status.get("busy"))

    def kill_worker(self, i: int) -> None:
        signal_all([self.workers[i]], [], signal.SIGKILL)
        self.workers[i].wait(timeout=30)

    def register(self) -> None:
        for site in self.sites:
            res = flwr_json(["supernode", "register", str(self.keys / f"{site.name}.pub"), "loopback",
                             "--name", site.name], self.env, self.work)  # fmt: skip
            self.node_ids[site.name] = int(res["node-id"])
            log(f"registered {site.name}: node {res['node-id']}")

    def supernode_cmd(
        self, port: int, site: Path, key: Path | None, ca: Path | None, insecure=False, extra=()
    ):
        cmd = ["flower-supernode", "--superlink", self.link, "--host", "127.0.0.1", "--port", str(port),
               "--node-config", f"site-dir='{site}'", *extra]  # fmt: skip
        cmd += ["--insecure"] if insecure else []
        cmd += ["--root-certificates", str(ca)] if ca else []
        cmd += ["--auth-supernode-private-key", str(key)] if key else []
        return cmd

    def start_supernode(self, i: int) -> None:
        site = self.sites[i]
        cmd = self.supernode_cmd(self.node_ports[i], site, self.keys / site.name, self.ca)
        self.supernodes[i] = start(cmd, self.env, self.work, self.logs / f"supernode_{site.name}.log")

    def restart_supernode(self, i: int, timeout: float = 300) -> int:
        """Start site i's SuperNode again until it stays up, as a service manager would (systemd:
        Restart=always, RestartSec=5): the SuperLink refuses to activate a node it still holds online
        (exit 305) until 2 heartbeats are missed. Returns the number of starts."""
        end, starts = time.monotonic() + timeout, 0
        while time.monotonic() < end:
            time.sleep(5)
            self.start_supernode(i)
            starts += 1
            try:
                self.supernodes[i].wait(timeout=20)  # exited within 20 s: refused, try again
            except subprocess.TimeoutExpired:
                return starts
        raise TimeoutError(f"the SuperNode of {self.sites[i].name} did not stay up within {timeout:.0f} s")

    def signal_supernode(self, i: int, sig: int) -> None:
        """The SuperNode and its ClientApp processes: SIGKILL (a crash), SIGSTOP/SIGCONT (a frozen node)."""
        signal_all([self.supernodes[i]], [self.node_ports[i]], sig)
        if sig == signal.SIGKILL:
            self.supernodes[i].wait(timeout=30)

    def online(self) -> int:
        nodes = flwr_json(["supernode", "list", "loopback"], self.env, self.work)["nodes"]
        return sum(n["status"] == "online" for n in nodes)

    def wait_online(self, count: int, timeout: float = 180) -> None:
        def enough() -> bool:
            for i, p in self.supernodes.items():
                if p.poll() is not None:
                    name = self.sites[i].name
                    raise RuntimeError(f"the SuperNode of {name} exited {p.returncode}: see {self.logs}")
            return self.online() >= count

        wait_for(enough, timeout, f"{count} SuperNodes online", 2)

    def up(self, workers: bool = True) -> None:
        """SuperLink, the workers (warm before any message arrives), registered keys, SuperNodes online."""
        self.start_superlink()
        if workers:
            for i in range(self.n):
                self.start_worker(i)
            for i in range(self.n):
                self.wait_worker(i)
        self.register()
        for i in range(self.n):
            self.start_supernode(i)
        self.wait_online(self.n)

    # -- runs ------------------------------------------------------------------------------------------
    def submit(self, overrides: str) -> str:
        res = flwr_json(["run", str(REPO), "loopback", "--run-config", overrides], self.env, self.work)
        log(f"started run {res['run-id']}: {overrides}")
        return str(res["run-id"])

    def status(self, run_id: str) -> str | None:
        try:
            return flwr_json(["ls", "loopback", "--run-id", run_id], self.env, self.work)["runs"][0]["status"]
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError, IndexError) as err:
            log(f"flwr ls failed, retrying: {str(err)[:200]}")
            return None

    def wait_run(self, run_id: str, timeout: float) -> str:
        t0 = time.monotonic()

        def finished() -> str | None:
            status = self.status(run_id)
            return status if status and status.startswith("finished") else None

        try:
            status = wait_for(finished, timeout, f"run {run_id} to finish", 5)
        except TimeoutError as err:
            status = f"timeout ({err})"
        log(f"run {run_id}: {status} after {time.monotonic() - t0:.0f} s")
        (self.logs / f"run_{run_id}.log").write_text(
            run(["flwr", "log", run_id, "loopback", "--show"], self.env, self.work, timeout=120, check=False)
        )
        return status

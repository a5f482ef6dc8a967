"""Ray's processes end with the `mmfed simulate` that started them, even when it is killed (kill -9).

A local Ray (ray.init in the driver) runs gcs_server, the raylet, the dashboard, a log monitor and, under
the raylet, the dashboard and runtime-env agents and the site workers. When the driver is killed, the
first ones follow it, but the agents keep running. `watch()` starts this module beside the driver, in a
session of its own (a Ctrl-C or a kill of the driver's process group does not reach it): it keeps the
list of the driver's Ray descendants (pid and start time, so a reused pid is never touched) and, once the
driver is gone or done (its end of a pipe closes), ends those still running: SIGTERM, then SIGKILL.
Linux only (it reads /proc); elsewhere it does nothing.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

PROC = Path("/proc")
GRACE_S = 3.0


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state) of a process, None if it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (name) "
    return int(fields[1]), int(fields[19]), fields[0]


def _is_ray(pid: int) -> bool:
    try:
        command = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    return b"/ray/" in command or command.startswith(b"ray::")


def ray_descendants(root: int) -> dict[int, int]:
    """{pid: start time} of the Ray processes under `root` and everything under them."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            starts[int(entry.name)] = stat[1]
    found: dict[int, int] = {}
    todo = [(child, False) for child in children.get(root, [])]
    while todo:
        pid, inside = todo.pop()
        inside = inside or _is_ray(pid)
        if inside and pid != os.getpid():
            found[pid] = starts[pid]
        todo += [(child, inside) for child in children.get(pid, [])]
    return found


def _alive(processes: dict[int, int]) -> dict[int, int]:
    out = {}
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == start and stat[2] != "Z":  # a zombie has ended already
            out[pid] = start
    return out


def end(processes: dict[int, int]) -> None:
    """SIGTERM to each process still running, SIGKILL to those left after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _alive(processes):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + GRACE_S
        while _alive(processes) and time.monotonic() < deadline:
            time.sleep(0.1)


def main(driver: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seen: dict[int, int] = {}
    while True:
        ready, _, _ = select.select([0], [], [], 0.5)
        if ready and not os.read(0, 1):
            break  # the driver closed the pipe: done, or gone
        seen = {**_alive(seen), **ray_descendants(driver)}
    end(seen)


def watch() -> subprocess.Popen | None:
    """Start the watcher of this process's Ray descendants; stop() it when the simulation is over."""
    if not PROC.is_dir():
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "mmfed.server.reaper", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        return None  # no watcher: a killed simulation may leave Ray's agents behind, as without it


def stop(watcher: subprocess.Popen | None) -> None:
    """The simulation is over: the watcher ends what Ray left running, then exits."""
    if watcher is None:
        return
    try:
        watcher.stdin.close()
        watcher.wait(timeout=2 * GRACE_S + 2)
    except (OSError, subprocess.TimeoutExpired):
        pass


if __name__ == "__main__":
    main(int(sys.argv[1]))

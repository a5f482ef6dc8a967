"""The site worker's socket and wire format: how a site's ClientApp hands a message to its warm worker
(mmfed.site.worker) on the same machine, and gets the reply.

Where: a Unix domain socket in the site's home, `state/worker/worker.sock` (mode 0600, in a 0700
directory, both owned by the site's account). Each side checks the other's account (SO_PEERCRED): only
the site's own account talks to its worker.

What: a message is frames, each an 8-byte big-endian length and its bytes. The first frame is a JSON object
(the header: what to do, the run config, the server's config, the reply's numbers); it says how many
frames follow, each one numpy array in `.npy` format, read with allow_pickle=False and only of plain
numeric dtypes. Nothing is pickled: a frame is data, never code. Bytes values inside the JSON travel as
{"$bytes": base64}.

Requests: {"op": "fit" | "evaluate", "run_config", "config", "site_dir", "masked"} with the parameters;
{"op": "status"} (a ping). Replies: {"kind": "result", "examples", "metrics", "loss"} with the update;
{"kind": "outcome", "outcome": {site, status, code, message}} (the site's refusal or failure, as the server
may see it; the full story stays in the site's log); {"kind": "status", ...}; {"kind": "error", "message"}
(a request the worker could not read).
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

import numpy as np

from mmfed.errors import MMFedError

SOCKET = "state/worker/worker.sock"
VERSION = 1
MAX_HEADER = 16 << 20  # the run config, the task and the ledger heads: far below this
MAX_FRAME = 8 << 30
MAX_ARRAYS = 100_000
_LENGTH = struct.Struct(">Q")
_PLAIN_DTYPES = "biuf"  # bool, int, uint, float: no object, void, structured or string arrays


class WireError(MMFedError):
    """A message that does not follow the wire format (the worker answers with an error, drops it)."""


class WorkerLost(MMFedError):
    """The worker closed the connection before its reply was complete (it died, or was stopped)."""


def socket_path(home: Path) -> Path:
    return Path(home) / SOCKET


# -- addresses: a socket path is limited to 107 bytes; a long one is reached through its folder's fd ---------
class Address:
    """`with Address(path) as addr`: a path the socket calls accept; deep homes go via /proc/self/fd."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def __enter__(self) -> str:
        text = str(self.path)
        if len(os.fsencode(text)) < 100:
            return text
        self.fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        return f"/proc/self/fd/{self.fd}/{self.path.name}"

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def peer_uid(sock: socket.socket) -> int | None:
    """The account on the other end of a Unix socket (Linux), or None where the OS does not tell."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    return uid


def own_socket(path: Path) -> bool:
    """True when `path` is a socket and it and its folder belong to this account, the folder 0700."""
    try:
        folder, sock = os.stat(path.parent), os.stat(path)
    except OSError:
        return False
    uid = os.getuid()
    return (
        stat.S_ISSOCK(sock.st_mode)
        and sock.st_uid == uid
        and folder.st_uid == uid
        and not folder.st_mode & 0o077
    )


def connect(path: Path, timeout: float = 5.0) -> socket.socket | None:
    """A connection to the worker serving `path`, or None when none does (no socket, a stale one, one
    that is not this account's)."""
    if not own_socket(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        with Address(path) as address:
            sock.connect(address)
        uid = peer_uid(sock)
        if uid is not None and uid != os.getuid():
            sock.close()
            return None
        sock.settimeout(None)  # a fit takes as long as it takes; a dead worker closes the socket
        return sock
    except OSError:
        sock.close()
        return None


def request(
    path: Path, header: dict[str, Any], arrays: list[np.ndarray] = ()
) -> tuple[dict[str, Any], list[np.ndarray]] | None:
    """Send one request to the worker serving `path` and wait for its reply; None when no worker serves it
    (nothing was sent). WorkerLost when the worker goes away before its reply is complete."""
    sock = connect(path)
    if sock is None:
        return None
    with sock:
        try:
            send(sock, header, arrays)
            reply = receive(sock)
        except OSError as exc:
            raise WorkerLost(f"the site worker on {path} went away ({exc})") from None
        except WorkerLost:
            raise WorkerLost(f"the site worker on {path} went away before its reply was complete") from None
    if reply is None:
        raise WorkerLost(f"the site worker on {path} closed the connection without replying")
    return reply


# -- frames and messages ------------------------------------------------------------------------------
def send(sock: socket.socket, header: dict[str, Any], arrays: list[np.ndarray] = ()) -> None:
    body = json.dumps({"v": VERSION, **header, "arrays": len(arrays)}, default=_json_default).encode()
    _send_frame(sock, body)
    for array in arrays:
        out = io.BytesIO()
        np.save(out, np.ascontiguousarray(_plain(np.asarray(array))), allow_pickle=False)
        _send_frame(sock, out.getbuffer())


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[np.ndarray]] | None:
    """The next message, or None when the other side closed the connection cleanly before one began.
    WorkerLost when it closes in the middle of one; WireError when it does not follow the format."""
    first = _receive_exact(sock, _LENGTH.size, start=True)
    if first is None:
        return None
    header = _header(_receive_exact(sock, _frame_length(first, MAX_HEADER)))
    count = header.get("arrays", 0)
    if not isinstance(count, int) or not 0 <= count <= MAX_ARRAYS:
        raise WireError(f"a message announces {count!r} arrays")
    arrays = []
    for _ in range(count):
        length = _frame_length(_receive_exact(sock, _LENGTH.size), MAX_FRAME)
        arrays.append(_array(_receive_exact(sock, length)))
    return header, arrays


def _send_frame(sock: socket.socket, body: bytes | memoryview) -> None:
    sock.sendall(_LENGTH.pack(len(body)))
    sock.sendall(body)


def _receive_exact(sock: socket.socket, size: int, start: bool = False) -> bytes | None:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        try:
            n = sock.recv_into(view[got:], min(size - got, 1 << 22))
        except ConnectionError:
            n = 0
        if n == 0:
            if start and got == 0:
                return None
            raise WorkerLost("the connection closed in the middle of a message")
        got += n
    return bytes(buffer)


def _frame_length(raw: bytes | None, limit: int) -> int:
    (length,) = _LENGTH.unpack(raw)
    if length > limit:
        raise WireError(f"a frame of {length} bytes is over the limit of {limit}")
    return length


def _header(raw: bytes | None) -> dict[str, Any]:
    try:
        header = json.loads(raw, object_hook=_json_hook)
    except (ValueError, TypeError) as exc:
        raise WireError(f"the header is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise WireError("the header is not a version-1 object")
    return header


def _array(raw: bytes | None) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise WireError(f"an array frame is not .npy data ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise WireError("an array frame holds more than one array")
    return _plain(array)


def _plain(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in _PLAIN_DTYPES or array.dtype.fields is not None:
        raise WireError(f"arrays of dtype {array.dtype} do not travel (only bool, int, uint, float)")
    return array


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} does not travel to the worker")


def _json_hook(obj: dict[str, Any]) -> Any:
    if set(obj) == {"$bytes"} and isinstance(obj["$bytes"], str):
        return base64.b64decode(obj["$bytes"], validate=True)
    return obj

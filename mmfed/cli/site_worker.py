"""`mmfed site serve` and `mmfed site status`: the site's warm worker (mmfed.site.worker) and how it is."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from mmfed.cli.common import console
from mmfed.cli.site import site_app
from mmfed.errors import MMFedError
from mmfed.screens import fail

StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir", help="the site's home when apart from its data (the node config's state-dir)"
    ),
]


@site_app.command("serve")
def site_serve(
    dir: Annotated[Path, typer.Option("--dir", help="the site directory (manifest.csv, site.toml)")],
    state_dir: StateDirOpt = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="where features are cached (the node config's cache-dir)"),
    ] = None,
) -> None:
    """Run the site's worker: keeps torch, the model, the decoded data and the privacy state warm between
    messages; the SuperNode's ClientApp hands it fit and evaluate over a socket in the site's home. Every
    privacy check runs here as in-process. Stop it with Ctrl-C or SIGTERM."""
    from mmfed.site.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    worker = Worker(dir, state_dir, cache_dir)
    try:
        worker.open()
    except MMFedError as exc:
        fail(exc)
    except OSError as exc:
        fail(MMFedError(f"{worker.socket}: cannot serve there ({exc.strerror or exc})"))
    console.print(f"site worker for {worker.site_dir} on {worker.socket}; loading torch and the site's data",
                  markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    worker.run()


@site_app.command("status")
def site_status(
    dir: Annotated[Path, typer.Option("--dir", help="the site directory")],
    state_dir: StateDirOpt = None,
) -> None:
    """Whether the site's worker is up (a ping over its socket), the site's data and its budget."""
    from mmfed.site.worker import ping, site_summary

    home = (state_dir or dir).resolve()
    status = ping(home)
    if status is not None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.get("since", 0)))
        busy = ", busy" if status.get("busy") else ""
        console.print(f"worker: up (pid {status.get('pid')}, since {since}, {status.get('messages')} messages"
                      f"{busy})", markup=False, highlight=False)  # fmt: skip
    else:
        console.print(f"worker: not running (start it: mmfed site serve --dir {dir})", markup=False,
                      highlight=False, soft_wrap=True)  # fmt: skip
        try:
            status = site_summary(dir.resolve(), home)
        except OSError as exc:
            fail(MMFedError(f"{dir}: cannot be read ({exc.strerror or exc})"))
    if status.get("problem"):
        fail(MMFedError(status["problem"]))
    console.print(f"data: {status['records']} records ({status['train']} for training), modalities "
                  f"{', '.join(status['modalities'])}", markup=False, highlight=False)  # fmt: skip
    cap = status.get("max_epsilon")
    console.print(f"budget: ε spent {status['epsilon']:.3f} / {'no cap' if cap is None else f'{cap:g}'} "
                  f"(PRV, δ {status['delta']:g})", markup=False, highlight=False)  # fmt: skip

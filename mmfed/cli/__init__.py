"""`mmfed` command line (typer + rich), one module per command group. Commands only parse options and
print; the work is in the library. Every command is guarded by mmfed.screens.App (one line on screen,
never a traceback with data)."""

from __future__ import annotations

from mmfed.cli.audit import audit_app
from mmfed.cli.certs import certs_app
from mmfed.cli.data import data_app
from mmfed.cli.export import export
from mmfed.cli.settings import settings
from mmfed.cli.simulate import simulate
from mmfed.cli.site import site_app
from mmfed.cli.site_worker import site_serve, site_status  # noqa: F401 - site serve, site status
from mmfed.cli.task import task_app
from mmfed.cli.train import train
from mmfed.cli.use import evaluate, predict
from mmfed.screens import App

__all__ = ["app", "certs_app", "data_app", "site_app", "task_app"]

app = App(help="Federated, privacy-preserving multimodal learning.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(site_app, name="site")
app.add_typer(certs_app, name="certs")
app.add_typer(task_app, name="task")
app.command()(train)
app.command()(simulate)
app.add_typer(audit_app, name="audit")
app.command()(settings)
app.command()(evaluate)
app.command()(predict)
app.command()(export)

"""`mmfed certs ...`: deployment certificates and keys (CA, SuperLink TLS, SuperNode auth keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmfed.cli.common import console
from mmfed.errors import MMFedError
from mmfed.protected import refuse_protected
from mmfed.screens import App, fail

certs_app = App(help="Deployment certificates and keys: CA, SuperLink TLS, SuperNode auth keys.")


@certs_app.command("server")
def certs_server(
    out: Annotated[Path, typer.Option("--out", help="folder for ca.key/ca.crt and server.key/server.pem")],
    host: Annotated[list[str], typer.Option("--host", help="DNS name or IP the SuperLink is reached by")],
    days: Annotated[int, typer.Option(help="server certificate validity")] = 365,
    force: Annotated[bool, typer.Option(help="replace an existing server key")] = False,
) -> None:
    """A CA (created once, then reused) and the SuperLink's TLS certificate for the given hosts."""
    from mmfed.pki import certs

    writes = (certs.CA_KEY, certs.CA_CERT, certs.SERVER_KEY, certs.SERVER_CERT)
    refuse_protected("--out", out, folder=True, writes=writes, instead="choose another --out folder")
    try:
        cert = certs.server_certificate(out, host, days=days, force=force)
    except MMFedError as exc:
        fail(exc)
    console.print(
        f"CA: {out / certs.CA_CERT} (give this to every site; keep {out / certs.CA_KEY} offline)\n"
        f"SuperLink: --ssl-ca-certfile {out / certs.CA_CERT} --ssl-certfile {cert} "
        f"--ssl-keyfile {out / certs.SERVER_KEY}",
        highlight=False,
        markup=False,
    )


@certs_app.command("node")
def certs_node(
    out: Annotated[Path, typer.Option("--out", help="folder for the key pair")],
    name: Annotated[str, typer.Option("--name", help="file name, e.g. the site's name")],
    force: Annotated[bool, typer.Option(help="replace an existing key")] = False,
) -> None:
    """An EC P-384 key pair (OpenSSH format) that authenticates a SuperNode to the SuperLink."""
    from mmfed.pki import certs

    refuse_protected(
        "--out", out, folder=True, writes=(name, f"{name}.pub"), instead="choose another --out folder"
    )
    try:
        private, public = certs.node_key(out, name, force=force)
    except MMFedError as exc:
        fail(exc)
    console.print(
        f"private key {private} (mode 0600, stays at the site); public key {public} (register it)",
        markup=False,
    )

"""`mmfed site ...`: a data-holding site's privacy policy, signing key and budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mmfed.cli.common import console
from mmfed.data.site_files import load_site_manifest
from mmfed.errors import MMFedError
from mmfed.protected import refuse_protected
from mmfed.screens import App, fail

site_app = App(help="A data-holding site: its privacy policy, signing key and budget.")


@site_app.command("init")
def site_init(
    dir: Annotated[Path, typer.Option("--dir", help="the site directory (manifest.csv, labels.txt)")],
    max_epsilon: Annotated[float, typer.Option(help="ε cap written into site.toml")] = 8.0,
    delta: Annotated[float, typer.Option(help="δ written into site.toml")] = 1e-5,
    public_examples: Annotated[
        int,
        typer.Option(
            help="the training-set size the site discloses (site.toml public_examples); "
            "0: the manifest's count rounded to two significant digits"
        ),
    ] = 0,
) -> None:
    """Create the site's policy (site.toml) and ledger signing key; validate its manifest; say what next.
    Never overwrites: an existing policy or key is kept."""
    from mmfed.privacy import site_keys
    from mmfed.privacy.policy import POLICY_FILE

    if not (dir / "manifest.csv").exists():
        fail(
            MMFedError(
                f"{dir}: no manifest.csv; a site directory holds manifest.csv (see README, 'Site data')"
            )
        )
    policy_path = dir / POLICY_FILE
    # its own policy and key it creates (never replaces); not through links into another site, nor in one
    refuse_protected(
        "--dir",
        dir,
        [dir / "manifest.csv", dir / "labels.txt"],
        folder=True,
        writes=(POLICY_FILE, site_keys.PRIVATE_KEY, site_keys.PUBLIC_KEY),
        own=dir,
        instead="nothing was written",
    )
    try:
        manifest = load_site_manifest(dir)  # first: a bad manifest leaves nothing half written
        train = len(manifest.split("train"))
        policy = _policy(policy_path, manifest, train, max_epsilon, delta, public_examples)
        key = _signing_key(dir)
    except MMFedError as exc:
        fail(exc)
    console.print(
        f"manifest OK: {len(manifest.samples)} records, {train} for training, labels {manifest.labels}",
        markup=False,
    )
    _warn_about_policy(policy, policy_path, train)
    _print_next_steps(dir, policy_path, key)


def _policy(policy_path: Path, manifest, train: int, max_epsilon: float, delta: float, public_examples: int):
    """The site's existing policy, or a new one written from the options (the officer reviews it)."""
    from mmfed.config import MODALITIES
    from mmfed.privacy.geometry import rounded_size
    from mmfed.privacy.policy import SitePolicy, load_policy

    if policy_path.exists():
        console.print(f"kept existing {policy_path}", markup=False)
        return load_policy(policy_path)
    public = public_examples or rounded_size(train)
    # the site's schema: the modalities any record has (declared once, not recounted each round)
    held = tuple(m for m in MODALITIES if any(getattr(s, m) is not None for s in manifest.samples))
    policy = SitePolicy(
        max_epsilon=max_epsilon,
        delta=delta,
        public_examples=public,
        held_modalities=held,
        source=str(policy_path),
    )
    policy.validate()
    policy_path.write_text(policy.template())
    console.print(
        f"wrote {policy_path} (max_epsilon {max_epsilon:g}, δ {delta:g}, public_examples {public}): "
        "review it",
        markup=False,
    )
    return policy


def _signing_key(dir: Path):
    from mmfed.privacy import site_keys

    if (dir / site_keys.PRIVATE_KEY).exists():
        key = site_keys.load_private_key(dir)
        console.print(f"kept existing key {dir / site_keys.PRIVATE_KEY}", markup=False)
        return key
    key = site_keys.create_key(dir)
    console.print(f"created ledger signing key {dir / site_keys.PRIVATE_KEY} (mode 0600)", markup=False)
    return key


def _warn_about_policy(policy, policy_path: Path, train: int) -> None:
    size = policy.public_examples or train
    if size and policy.delta >= 1 / size:
        console.print(
            f"[yellow]δ={policy.delta:g} is not below 1/{size} (the public size): the site will refuse DP "
            f"rounds; set a smaller delta in {escape(str(policy_path))} "
            f"(e.g. {10 ** -len(str(size * 10)):g})[/]"
        )
    if not policy.public_examples:
        console.print(
            f"[yellow]{escape(str(policy_path))} declares no public_examples: the site will refuse DP rounds "
            "until it does[/]"
        )


def _print_next_steps(dir: Path, policy_path: Path, key) -> None:
    from mmfed.privacy import site_keys

    console.print(
        "\nnext:\n"
        f"  1. review {policy_path} (the ε cap, δ and the limits on what a run may propose)\n"
        f"  2. give your privacy officer the public key {dir / site_keys.PUBLIC_KEY}\n"
        f"     (fingerprint {site_keys.key_id(key.public_key())});"
        f" keep {dir / site_keys.PRIVATE_KEY} private\n"
        f"  3. mmfed site check --dir {dir}   (policy, key, manifest, budget spent so far)\n"
        "  4. get from the server operator: the SuperLink address, its CA certificate (ca.crt), and an\n"
        "     authentication key pair (`mmfed certs node --out keys --name SITE`; send them keys/SITE.pub)\n"
        "  5. start the site worker (keeps the model, data and budget warm between messages; as a service:\n"
        "     docs/how-to/deploy-a-site.md, 'Run the site worker'), and check it with `mmfed site status`:\n"
        f"     mmfed site serve --dir {dir.resolve()}\n"
        "  6. connect (TLS and node authentication; plain text only with an explicit --insecure):\n"
        f"     flower-supernode --superlink SUPERLINK_HOST:PORT --root-certificates ca.crt \\\n"
        f"       --auth-supernode-private-key keys/SITE \\\n"
        f"       --node-config \"site-dir='{dir.resolve()}'\" --host 127.0.0.1 --port 9094",
        highlight=False,
        markup=False,
        soft_wrap=True,  # commands to copy: never break a path
    )


@site_app.command("check")
def site_check(dir: Annotated[Path, typer.Option("--dir", help="the site directory")]) -> None:
    """Validate the site's policy, key and manifest, and show the privacy budget spent so far."""
    from mmfed.privacy import site_keys
    from mmfed.privacy.budget import SiteBudget
    from mmfed.privacy.fingerprint import data_fingerprint

    try:
        manifest = load_site_manifest(dir)
        fingerprint = data_fingerprint(manifest.split("train"))
        budget = SiteBudget(dir, fingerprint, site=dir.name)
        prv, rdp = budget.spent()
    except MMFedError as exc:
        fail(exc)
    policy = budget.policy
    console.print(
        f"policy {policy.source}: max ε {policy.max_epsilon:g}, δ {policy.delta:g}, "
        f"σ ≥ {policy.min_noise_multiplier:g}, C ≤ {policy.max_clipping_norm:g}, "
        f"q ≤ {policy.max_sample_rate:g}, modalities {list(policy.allowed_modalities)}, "
        f"public size {policy.public_examples or 'not declared'}, "
        f"holds {list(policy.held_modalities) or 'not declared'}",
        highlight=False,
        markup=False,
    )
    console.print(f"key {site_keys.key_id(budget.key.public_key())}", highlight=False)
    console.print(
        f"ε spent {prv:.3f} (PRV), {rdp:.3f} (RDP), over every release (data now {fingerprint[:19]}); "
        f"remaining {policy.max_epsilon - prv:.3f}",
        highlight=False,
    )


@site_app.command("rotate-key")
def site_rotate_key(
    dir: Annotated[Path, typer.Option("--dir", help="the site's home (site directory or state-dir)")],
    lost: Annotated[
        bool,
        typer.Option("--lost", help="the old private key is gone: record its loss (every audit reports it)"),
    ] = False,
) -> None:
    """Replace the ledger signing key: a ledger entry announces the new public key, signed by the old
    key (or, with --lost, by the new one and marked as a loss). The old public key moves to keys/retired/."""
    from mmfed.privacy.key_rotation import RETIRED, rotate_key

    try:
        old, new = rotate_key(dir, lost=lost)
    except MMFedError as exc:
        fail(exc)
    console.print(
        f"rotated {old} -> {new}{' (recorded as a LOST key)' if lost else ''}; the old public key is in "
        f"{dir / RETIRED}. Give your privacy officer the new public key "
        f"{dir / 'keys/ledger-signing.pub.pem'} (fingerprint above) and keep both.",
        markup=False,
        highlight=False,
    )


@site_app.command("approve")
def site_approve(
    dir: Annotated[Path, typer.Option("--dir", help="the site directory (its site.toml)")],
    config: Annotated[
        Path | None, typer.Option("--config", help="the run's configuration (TOML) to review")
    ] = None,
    task_file: Annotated[
        Path | None, typer.Option("--task", help="the task file (task.toml) to review")
    ] = None,
    write: Annotated[
        bool, typer.Option("--write", help="add the task's hash to approved_models in site.toml")
    ] = False,
) -> None:
    """Show what a run (--config) or a task file (--task) would train at this site — task, labels,
    modalities, model, parameters — and its approval hash; with --write, approve it (approved_models)."""
    from mmfed.federation.config import FederationConfig
    from mmfed.federation.run_task import run_task
    from mmfed.models import build_model, count_parameters
    from mmfed.privacy.policy import POLICY_FILE, load_policy
    from mmfed.task import load_task

    try:
        if (config is None) == (task_file is None):
            raise MMFedError("give --config RUN.toml or --task task.toml (one of them)")
        cfg = FederationConfig.from_toml(config) if config else None
        task = run_task(cfg) if cfg else load_task(task_file)
        model_cfg = task.model_config()
        approval = task.approval()
        policy_path = dir / POLICY_FILE
        policy = load_policy(policy_path)
    except MMFedError as exc:
        fail(exc)
    trained = count_parameters(build_model(model_cfg))
    console.print(
        f"task {task.name}: labels {list(task.labels)}\n"
        f"modalities {list(model_cfg.modalities)}, {model_cfg.fusion} fusion, image encoder "
        f"{model_cfg.image_encoder}, text encoder {model_cfg.text_encoder}, hidden {model_cfg.hidden_dim}, "
        f"{trained:,} parameters\n"
        + (
            f"privacy proposed: target ε {cfg.target_epsilon:g}, σ {cfg.noise_multiplier:g}, "
            f"C {cfg.max_grad_norm:g}, "
            f"batch {cfg.batch_size}, {cfg.rounds} rounds x {cfg.local_epochs} local epoch(s)\n"
            if cfg
            else ""
        )
        + f"approval hash {approval}",
        highlight=False,
        markup=False,
    )
    if approval in policy.approved_models:
        console.print(f"already approved in {policy_path}", markup=False)
    elif write:
        from mmfed.privacy.approvals import add_approved_model

        try:
            add_approved_model(policy_path, policy, approval)
        except MMFedError as exc:
            fail(exc)
        console.print(f"approved: {policy_path} approved_models now lists {approval}", markup=False)
    else:
        console.print(f"not approved yet: rerun with --write to add it to {policy_path}", markup=False)

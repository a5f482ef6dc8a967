"""The site side of a run: a NumPyClient that trains on the site's own data and returns a delta.

This module imports no torch: a SuperNode runs every message in a fresh process, and SecAgg+'s key and
unmask stages never train, so only fit and evaluate pay for importing the model code — and none of them
where the site runs its warm worker (`mmfed site serve`, mmfed.site.worker): fit and evaluate are handed
to it over the site's socket, SecAgg+'s masking staying here.

One ClientApp serves plain and SecAgg+ servers: `secaggplus_mod` expects its config record on every
train message and fails (KeyError 'secaggplus_configs') against a plain server, so it is only entered
when the server actually speaks SecAgg+.
"""

from __future__ import annotations

import contextvars
import logging
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from mmfed.errors import MMFedError
from mmfed.federation import masks
from mmfed.federation.config import FederationConfig
from mmfed.federation.encoder_groups import encode_update
from mmfed.federation.outcome import SiteOutcome
from mmfed.federation.secagg import check_range
from mmfed.privacy.budget import REFUSALS, Refusal

log = logging.getLogger("mmfed.site")
# Opacus calls logging.basicConfig() when imported, so the root logger of a site's process prints every
# record that reaches it: Flower's DEBUG lines too (each SecAgg+ stage of every round, on the screen of a
# simulation). Flower's records go to Flower's own console handler (INFO and above) only.
logging.getLogger("flwr").propagate = False

# set while a train message really runs through secaggplus_mod: the site's own knowledge of whether its
# reply is masked (the run config's secure-aggregation flag is only what the server says)
_MASKED = contextvars.ContextVar("mmfed_secaggplus", default=False)


def site_label(node_config: dict[str, Any]) -> str:
    if node_config.get("site-dir"):
        return Path(str(node_config["site-dir"])).name
    return f"partition-{node_config.get('partition-id', '?')}"


# what the server is told when a site fails: a code and a generic sentence; the full message (paths,
# record ids, the site's numbers) and the traceback go to the site's own log (mmfed.site.sitelog)
FAILURES = {
    "data": "the site could not read its data for this run",
    "setup": "the site's setup or this run's settings do not let it train (see the site's log)",
    "training": "local training diverged (loss NaN/inf); lower lr",
    "secagg-range": "the update does not fit SecAgg+'s range; raise secagg-clipping-range (or lower lr)",
    "secagg-weight": "the site's FedAvg weight is above secagg-max-examples; raise that setting",
    "worker": "the site's worker stopped during this message (see the site's log)",
    "unreachable": "the site's node stopped answering the SuperLink this round (killed, frozen or cut off)",
    "timeout": "the site did not answer within the server's round-timeout-s",
    "internal": "internal error at the site",
    "secagg-generator": "the server's SecAgg+ mask generator is not the site's; run the same mmfed on both",
}
_NO_WORKER: set[str] = set()  # the sockets this process already said no worker serves


def failure_code(exc: BaseException) -> str:
    from mmfed.errors import ConfigError, DataError, ManifestError
    from mmfed.federation.secagg import SecAggRangeError
    from mmfed.site.wire import WireError, WorkerLost

    if isinstance(exc, WorkerLost | WireError):
        return "worker"
    if isinstance(exc, SecAggRangeError):
        return exc.code
    if isinstance(exc, DataError | ManifestError | FileNotFoundError):
        return "data"
    if isinstance(exc, ConfigError):
        return "setup"
    if isinstance(exc, FloatingPointError):
        return "training"
    if isinstance(exc, MMFedError):  # our own checks of the site's files (key, ledger, state)
        return "setup"
    return "internal"


class SiteClient(NumPyClient):
    def __init__(self, cfg: FederationConfig, node_config: dict[str, Any], *, local: bool = False):
        """`local`: run here, never hand the message to the site's worker (the worker's own client)."""
        self.cfg = cfg
        self.node_config = node_config
        self.local = local

    def _home(self, runtime) -> Path | None:
        if runtime is not None:
            return runtime.home
        if self.node_config.get("site-dir"):  # a deployed site that could not load: its own directory
            return Path(str(self.node_config.get("state-dir") or self.node_config["site-dir"])).resolve()
        return None

    def _report(self, runtime, name: str, exc: BaseException, **where: Any) -> SiteOutcome:
        """What the server is told (a code and its generic sentence); the whole story goes to the site's
        log, none of it on screen beyond our own messages (which name files and rows, never record
        content)."""
        from mmfed.site import sitelog

        refused = isinstance(exc, Refusal)
        code = exc.code if refused else failure_code(exc)
        sentence = (REFUSALS.get(code) or FAILURES[code]) if refused else FAILURES[code]
        outcome = SiteOutcome.report(name, "refused" if refused else "failed", code, sentence)
        home = self._home(runtime)
        detail = "".join(traceback.format_exception(exc)) if code == "internal" else str(exc)
        if home is not None:
            try:
                sitelog.record(home, "refused" if refused else "failed", code=code, message=detail, **where)
            except OSError as problem:  # a full disk must not turn into an error text with paths
                log.error("site %s: could not write the site log: %s", name, problem)
                home = None
        own = str(exc) if isinstance(exc, MMFedError) else f"{type(exc).__name__} (details in the site log)"
        where_log = f" [{home / sitelog.LOG}]" if home is not None else ""
        (log.warning if refused else log.error)("site %s: %s (%s): %s%s", name,
            "refused" if refused else "failed", code, own, where_log)  # fmt: skip
        return outcome

    def fit(self, parameters, config):
        forwarded = self._forward("fit", parameters, config)
        if forwarded is not None:
            return forwarded
        with self._files():
            return self._fit_here(parameters, config)

    def evaluate(self, parameters, config):
        forwarded = self._forward("evaluate", parameters, config)
        if forwarded is not None:
            return forwarded
        with self._files():
            return self._evaluate_here(parameters, config)

    def _fit_here(self, parameters, config):
        server_round = int(config.get("server-round", 0))
        run_id = str(config.get("run-id", ""))
        name = site_label(self.node_config)
        from mmfed.site.loading import load_site, message_task  # torch: only in the messages that train

        secure = _MASKED.get()
        runtime = None
        try:
            if self.cfg.secure_aggregation and not secure:
                # the server announced SecAgg+ but sent a plain message: a reply would not be masked
                raise Refusal(
                    "secure-aggregation",
                    f"site {name}: the run config says secure aggregation but this message is not SecAgg+",
                )
            runtime = load_site(self.cfg, self.node_config, message_task(config))
            name = runtime.name
            runtime.check_secure_aggregation(self.cfg, secure)
            # SecAgg+: the site's evaluation of the model it receives travels in the masked sum
            sums = runtime.evaluation_sums(parameters, self.cfg) if secure else None
            update, examples, metrics = runtime.fit(
                parameters, self.cfg, server_round, run_id=run_id, anchor=own_anchor(config, name)
            )
            # each encoder is averaged over the sites that trained it (mmfed.federation.encoder_groups)
            groups = runtime.release_group_examples(self.cfg, examples)
            update = encode_update(update, runtime.parameter_groups(), groups, examples)
            if secure:
                update.append((np.asarray(sums, dtype=np.float64) / examples).astype(np.float32))
                check_range(update, examples, self.cfg)
            return update, examples, metrics
        except Exception as exc:  # noqa: BLE001 - any failure is reported as this site's, with a code
            outcome = self._report(runtime, name, exc, run_id=run_id, round=server_round)
            if secure:  # SecAgg+ has no "empty update": the site drops out, its outcome in the error text
                raise SiteDropout(outcome.to_text()) from None
            return [], 0, outcome.to_metrics()

    def _evaluate_here(self, parameters, config):
        from mmfed.site.loading import load_site, message_task

        name = site_label(self.node_config)
        runtime = None
        try:
            runtime = load_site(self.cfg, self.node_config, message_task(config))
            name = runtime.name
            return runtime.evaluate(parameters, self.cfg, config)
        except Exception as exc:  # noqa: BLE001 - reported as this site's, with a code
            outcome = self._report(runtime, name, exc, run_id=str(config.get("run-id", "")), stage="evaluate")
            return 0.0, 0, outcome.to_metrics()

    # -- a deployed site's warm worker (mmfed.site.worker, `mmfed site serve`) ----------------------------
    def _forward(self, op: str, parameters, config):
        """The reply of the site's worker, when one serves this site; None: none does, run here. Only
        training and evaluation go there; SecAgg+'s masking stays in this process."""
        home = None if self.local else self._home(None)
        if home is None:
            return None
        from mmfed.site import wire

        masked, name = _MASKED.get(), site_label(self.node_config)
        request = {"op": op, "run_config": self.cfg.to_run_config(), "config": dict(config),
                   "site_dir": str(self.node_config["site-dir"]), "masked": masked}  # fmt: skip
        try:
            reply = wire.request(wire.socket_path(home), request, list(parameters))
            if reply is None:
                if str(home) not in _NO_WORKER:
                    _NO_WORKER.add(str(home))
                    log.info("site %s: no site worker (mmfed site serve); training in this process", name)
                return None
            (header, arrays), metrics = reply, reply[0].get("metrics") or {}
            if header.get("kind") == "result" and op == "fit":
                return arrays, int(header["examples"]), metrics
            if header.get("kind") == "result":
                return float(header["loss"]), int(header["examples"]), metrics
            if header.get("kind") != "outcome":
                kind = str(header.get("kind"))[:40]
                raise wire.WireError(f"the worker replied {kind!r}: {header.get('message')}")
            outcome = SiteOutcome(**header["outcome"])
        except (wire.WorkerLost, wire.WireError, KeyError, TypeError, ValueError) as exc:
            if not isinstance(exc, wire.WorkerLost | wire.WireError):  # a reply without its fields
                exc = wire.WireError(f"the site worker's reply is malformed ({type(exc).__name__}: {exc})")
            where = {"round": config.get("server-round")} if op == "fit" else {"stage": "evaluate"}
            outcome = self._report(None, name, exc, run_id=str(config.get("run-id", "")), **where)
        if op == "fit" and masked:  # as in-process: SecAgg+ has no empty update, the site drops out
            raise SiteDropout(outcome.to_text())
        return ([], 0, outcome.to_metrics()) if op == "fit" else (0.0, 0, outcome.to_metrics())

    def _files(self):
        """Deployed, in this process: the site's file identity cache (in its home), so that unchanged files
        are not read again (mmfed.data.file_identity); the worker keeps its own in memory."""
        import contextlib

        from mmfed.data import file_identity

        home = None if self.local else self._home(None)
        if home is None:
            return contextlib.nullcontext()
        return file_identity.using(home / file_identity.STATE_FILE)


def own_anchor(config: dict[str, Any], site: str) -> str:
    """This site's ledger head as the server last recorded it ("INDEX:HASH"), or "" (none yet)."""
    import json

    try:
        heads = json.loads(str(config.get("ledger-heads", "{}")))
    except ValueError:
        return "malformed"  # refused by the budget's check, as any bad anchor
    return str(heads.get(site, "")) if isinstance(heads, dict) else "malformed"


class SiteDropout(MMFedError):
    """A site refused or failed a SecAgg+ round: the message is the public sentence and the encoded
    SiteOutcome (mmfed.federation.outcome), all the server may see."""


class MaskGeneratorRefusal(Refusal):
    """The server announced a SecAgg+ mask generator that is not this site's (or none): masks from two
    generators do not cancel, and the sum would be garbage that no one could tell from a model."""

    def __init__(self, message: str):
        super().__init__("secagg-generator", message)


def check_mask_generator(configs, name: str) -> None:
    announced = configs.get(masks.ANNOUNCE_KEY)
    if announced != masks.GENERATOR:
        said = f"announces {str(announced)[:60]!r}" if announced is not None else "announces none"
        raise MaskGeneratorRefusal(
            f"site {name}: refused the SecAgg+ round: the server {said} as its mask generator, this site "
            f"uses {masks.GENERATOR!r}; masks from different generators would not cancel in the sum. Run "
            "the same mmfed at the server and the sites"
        )


def maybe_secaggplus_mod(msg: Message, context: Context, call_next):
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        configs = msg.content.config_records[RECORD_KEY_CONFIGS]
        if configs.get(Key.STAGE) == Stage.SETUP:  # before any key is made
            node_config = dict(context.node_config)
            try:
                check_mask_generator(configs, site_label(node_config))
            except MaskGeneratorRefusal as exc:
                client = SiteClient(None, node_config)  # type: ignore[arg-type] # reports need no config
                outcome = client._report(None, site_label(node_config), exc, stage="secagg-setup")
                raise SiteDropout(outcome.to_text()) from None
        masks.install()  # in whichever process serves the message (a Ray actor, flwr-clientapp)
        token = _MASKED.set(True)
        try:
            with masks.using():
                return secaggplus_mod(msg, context, call_next)
        finally:
            _MASKED.reset(token)
    return call_next(msg, context)


def make_client_app(cfg: FederationConfig | None = None) -> ClientApp:
    """With `cfg`, a simulation app (config by closure); without, config comes from the run config."""

    def client_fn(context: Context):
        run_cfg = cfg or FederationConfig.from_mapping(dict(context.run_config))
        return SiteClient(run_cfg, dict(context.node_config)).to_client()

    return ClientApp(client_fn=client_fn, mods=[maybe_secaggplus_mod])

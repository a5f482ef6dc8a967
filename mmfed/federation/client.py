"""The site side of a run: a NumPyClient that trains on the site's own data and returns a delta.

This module imports no torch: a SuperNode runs every message in a fresh process, and SecAgg+'s key and
unmask stages never train, so only fit and evaluate pay for importing the model code.

One ClientApp serves plain and SecAgg+ servers: `secaggplus_mod` expects its config record on every
train message and fails (KeyError 'secaggplus_configs') against a plain server, so it is only entered
when the server actually speaks SecAgg+.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from mmfed.errors import MMFedError
from mmfed.federation.config import FederationConfig
from mmfed.federation.coverage import encode_update
from mmfed.federation.secure import check_range
from mmfed.privacy.budget import Refusal

log = logging.getLogger("mmfed.site")


def site_label(node_config: dict[str, Any]) -> str:
    from pathlib import Path

    if node_config.get("site-dir"):
        return Path(str(node_config["site-dir"])).name
    return f"partition-{node_config.get('partition-id', '?')}"


class SiteClient(NumPyClient):
    def __init__(self, cfg: FederationConfig, node_config: dict[str, Any]):
        self.cfg = cfg
        self.node_config = node_config

    def fit(self, parameters, config):
        server_round = int(config.get("server-round", 0))
        name = site_label(self.node_config)
        from mmfed.federation.site import load_site  # torch: only in the messages that train

        secure = self.cfg.secure_aggregation
        try:
            runtime = load_site(self.cfg, self.node_config)
            name = runtime.name
            update, examples, metrics = runtime.fit(
                parameters, self.cfg, server_round, run_id=str(config.get("run-id", ""))
            )
            # each encoder is averaged over the sites that trained it (mmfed.federation.coverage)
            update = encode_update(update, runtime.parameter_groups(), runtime.group_examples(), examples)
            if secure:
                check_range(update, examples, self.cfg)
            return update, examples, metrics
        except Refusal as exc:
            log.warning("round %d: %s", server_round, exc)
            if secure:  # SecAgg+ has no "empty update": the site drops out, the reason goes with it
                raise
            return [], 0, {"site": name, "refused": str(exc)}
        except Exception as exc:  # noqa: BLE001 - any failure is reported to the server as this site's failure
            log.error("site %s: training failed:\n%s", name, traceback.format_exc())
            if secure:
                raise MMFedError(f"site {name}: {type(exc).__name__}: {exc}") from exc
            return [], 0, {"site": name, "error": f"{type(exc).__name__}: {exc}"}

    def evaluate(self, parameters, config):
        from mmfed.federation.site import load_site

        runtime = load_site(self.cfg, self.node_config)
        return runtime.evaluate(parameters)


def maybe_secaggplus_mod(msg: Message, context: Context, call_next):
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def make_client_app(cfg: FederationConfig | None = None) -> ClientApp:
    """With `cfg`, a simulation app (config by closure); without, config comes from the run config."""

    def client_fn(context: Context):
        run_cfg = cfg or FederationConfig.from_mapping(dict(context.run_config))
        return SiteClient(run_cfg, dict(context.node_config)).to_client()

    return ClientApp(client_fn=client_fn, mods=[maybe_secaggplus_mod])

"""Input (black-box) canaries: mislabelled copies of public inputs planted in one site's training data,
scored by how much the federation's global model learned them (for mmfed.audit.empirical_bound).

The canaries are records the auditor makes and keeps secret: m distinct inputs of the embedded public
scenario `digits-public` (typeset digits and synthetic speech, no site's record in it), each given a label
other than its own, drawn at random. Each is in the audited site's training data by an independent fair
coin; the site then trains exactly as configured (Poisson sampling, clipping, noise), the canaries being
ordinary records of it. The score of a canary is its loss drop: its cross-entropy (with its wrong label)
under the initial global model minus that under the final one. A canary the site trained on is pulled
towards its wrong label; one it never saw is not. The auditor sees only the two global models (what the
server releases), never the site's steps: a black-box audit, much weaker than the white-box one.

`planted` is the only way in: a context manager that, in this process, adds the included canaries to the
audited partition's samples while the audit's own in-process federation runs. No setting or message
reaches it. Built for the digits tasks (their labels are the public scenario's); other tasks are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmfed.errors import MMFedError

PUBLIC_SCENARIO = "digits-public"
LOSS_BATCH = 256


def public_pool(cfg, task) -> list:
    """The public inputs canaries are made from (all of `digits-public`, labelled in the task's classes)."""
    from mmfed.data.scenarios import prepare_scenario

    missing = [m for m in task.modalities if m not in ("image", "audio")]
    if missing:
        raise MMFedError(
            f"--mode input: the public canary inputs ({PUBLIC_SCENARIO}) have images and audio only, and the "
            f"run trains {', '.join(missing)} too; use --mode gradient"
        )
    public = prepare_scenario(PUBLIC_SCENARIO, cache_dir=cfg.cache_dir or None, modalities=task.modalities)
    if sorted(public.labels) != sorted(task.labels):
        raise MMFedError(
            f"--mode input: the public canary inputs ({PUBLIC_SCENARIO}) are digits 0-9 and the run's task "
            f"({task.name}) has classes {list(task.labels)}; input canaries are built for the digits tasks "
            "(digits-av, fsdd-mnist): use --mode gradient"
        )
    index = {name: task.labels.index(name) for name in public.labels}
    pool = [s for site in public.load_sites() for s in site.samples]
    return [dataclasses.replace(s, label=index[public.labels[s.label]]) for s in pool]


class InputCanaries:
    """m mislabelled public inputs, their secret coins, and (after the run) their scores."""

    def __init__(self, m: int, pool: list, classes: int, *, seed: int | None = None):
        if m > len(pool):
            raise MMFedError(
                f"--canaries {m}: the public scenario {PUBLIC_SCENARIO} has {len(pool)} inputs to make input "
                f"canaries from; give at most {len(pool)}"
            )
        self.rng = np.random.default_rng(seed)  # the auditor's own secret: which inputs, labels, coins
        chosen = self.rng.choice(len(pool), size=m, replace=False)
        self.samples = []
        for i, j in enumerate(chosen):
            s = pool[int(j)]
            wrong = (s.label + int(self.rng.integers(1, classes))) % classes  # any class but its own
            self.samples.append(
                dataclasses.replace(s, id=f"canary-{i:05d}", label=wrong, split="train", row=0, extra={})
            )
        self.m = m
        self.included = self.rng.random(m) < 0.5
        self.scores = np.zeros(m)

    @property
    def planted(self) -> list:
        return [s for s, keep in zip(self.samples, self.included, strict=True) if keep]


@contextlib.contextmanager
def planted(canaries: InputCanaries, partition: int):
    """While the block runs, partition `partition` of this process's simulated federation holds its own
    samples plus the included canaries (its training split); restored on the way out, whatever happens."""
    from mmfed.site import loading

    original = loading.site_samples
    if getattr(original, "_audit_canaries", None) is not None:
        raise MMFedError("an empirical audit is already running in this process")

    def with_canaries(cfg, scenario, partition_id, num_partitions):
        name, samples = original(cfg, scenario, partition_id, num_partitions)
        if partition_id == partition:
            samples = list(samples) + canaries.planted
        return name, samples

    with_canaries._audit_canaries = canaries
    loading._SITES.clear()  # no site built before (without the canaries) is reused, nor kept after
    loading.site_samples = with_canaries
    try:
        yield canaries
    finally:
        loading.site_samples = original
        loading._SITES.clear()


def initial_model(cfg, task):
    """The global model the run starts from, as the server builds it (seeded init, or the initial model)."""
    from mmfed.checkpoint import load_checkpoint
    from mmfed.models import build_model
    from mmfed.train.loop import seed_everything

    seed_everything(cfg.seed)
    model = build_model(task.model_config())
    if cfg.initial_model:
        load_checkpoint(model, Path(cfg.initial_model))
    return model.eval()


@torch.no_grad()
def label_log_probs(model, samples: list, task, cache_dir: Path | None = None) -> np.ndarray:
    """Each sample's log-probability of its own label under `model` (CPU, evaluation mode, no augmentation):
    minus its cross-entropy."""
    from mmfed.data.dataset import Collate, MultimodalDataset, Processors
    from mmfed.models import forward_batch

    model = model.cpu().eval()
    data = MultimodalDataset(samples, Processors(task.data, task.modalities, cache_dir=cache_dir))
    collate = Collate(task.data, task.modalities)
    out = []
    for start in range(0, len(data), LOSS_BATCH):
        batch = collate([data[i] for i in range(start, min(start + LOSS_BATCH, len(data)))])
        logp = F.log_softmax(forward_batch(model, batch).double(), dim=-1)
        out.append(logp.gather(1, batch["label"].view(-1, 1)).squeeze(1).numpy())
    return np.concatenate(out) if out else np.zeros(0)

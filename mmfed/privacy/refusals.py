"""Why a site declines a round: the exception it raises, and the generic sentence the server is told."""

from __future__ import annotations

from mmfed.errors import MMFedError


class Refusal(MMFedError):
    """The site declines this round. The message (which may name the site's own numbers) goes to the site's
    log; the server gets only `code` and its generic sentence (REFUSALS)."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class LedgerRefusal(Refusal):
    """The site's ledger and accountant state do not add up: it trains no more until its operator acts."""

    def __init__(self, message: str):
        super().__init__("ledger", message)


# what the server is told, per refusal code: which setting of the proposal to change, no site numbers
REFUSALS = {
    "no-dp": "the run proposes no differential privacy and this site's policy requires it",
    "modality": "the run trains a modality this site's policy does not allow",
    "clipping": "the proposed max-grad-norm is above this site's max_clipping_norm",
    "sample-rate": "the proposed batch size samples more than this site's max_sample_rate per step",
    "noise": "the proposed noise multiplier is below this site's min_noise_multiplier",
    "budget": "this round would take the site past its privacy budget (max_epsilon)",
    "delta": "this site's delta is not below 1 / its public size",
    "setting": "a proposed privacy setting is not a finite positive number",
    "model": "the run's model is not one this site approved (approved_models in its site.toml)",
    "secure-aggregation": "this train message is not SecAgg+ (the run announced it, or the site requires it)",
    "held-modalities": "this site declares no held_modalities in its site.toml",
    "public-size": "this site declares no public size (privacy.public_examples in its site.toml)",
    "ledger": "the site's ledger and accountant state do not add up; it trains no more until resolved",
    "evaluation": "this site does not evaluate this model (site policy)",
}

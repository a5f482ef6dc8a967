"""A site approves a model by listing its approval hash in site.toml's `approved_models` (`mmfed site
approve --write`): the line is edited in place, so the officer's comments and layout stay."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from mmfed.errors import MMFedError
from mmfed.files import write_atomic
from mmfed.privacy.policy import SitePolicy, load_policy


def add_approved_model(policy_path: Path, policy: SitePolicy, approval: str) -> None:
    """Add `approval` to approved_models (the line is created under [privacy] when there is none)."""
    text = policy_path.read_text()
    listed = ", ".join(f'"{h}"' for h in (*policy.approved_models, approval))
    line = f"approved_models = [{listed}]"
    pattern = re.compile(r"^approved_models\s*=.*$", re.M)
    updated = (
        pattern.sub(line, text, count=1)
        if pattern.search(text)
        else re.sub(r"^\[privacy\]\s*$", f"[privacy]\n{line}", text, count=1, flags=re.M)
    )
    try:
        tomllib.loads(updated)  # never write a policy that does not read back
    except tomllib.TOMLDecodeError as exc:
        raise MMFedError(f"{policy_path}: could not add the hash ({exc}); add it by hand") from None
    write_atomic(policy_path, updated)
    load_policy(policy_path)

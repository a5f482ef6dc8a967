"""Site-side privacy: accounting, policy, the site's own keys, ledger, and the per-round budget guard."""

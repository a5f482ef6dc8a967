"""Site-side privacy: accounting, policy, keys, ledger, and the per-round budget guard."""

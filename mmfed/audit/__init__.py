"""Privacy audit: ledger verification, independent ε recomputation, reports."""

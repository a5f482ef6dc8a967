"""What both sides of a run share: the run config, weight deltas and update checks, the per-encoder
averaging codec (encoder_groups) and SecAgg+ numerics (secagg)."""

"""Federation: run config, site loading, update validation, FedAvg strategy, run directory, simulation."""

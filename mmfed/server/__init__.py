"""The server side of a run: strategy, SecAgg+ workflow, run directory, simulation."""

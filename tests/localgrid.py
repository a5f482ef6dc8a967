"""The in-process grid the tests run federations on: mmfed.server.local_grid."""

from mmfed.server.local_grid import LocalGrid, run_federation, server_context

__all__ = ["LocalGrid", "run_federation", "server_context"]

"""The ``shapprune`` command line: rank, train, prune, tune-lrp, compare, oracle, demo.

The entry point; the commands live in ``shapprune.commands`` (one module per job), which
no library module imports.
"""

from shapprune.commands import app, main, progress, progress_fields, status_progress

__all__ = ["app", "main", "progress", "progress_fields", "status_progress"]

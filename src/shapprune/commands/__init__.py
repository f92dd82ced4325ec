"""The commands of the ``shapprune`` command line (``shapprune.cli`` is its entry point).

``app`` holds the commands; each command module registers its own on import, and the order
of registration is the order ``--help`` lists them.
"""

from importlib import import_module

from shapprune.commands.app import app, main
from shapprune.commands.progress import progress_fields, status_progress

COMMAND_MODULES = ("rank", "prune", "tune", "compare", "export")
for _name in COMMAND_MODULES:
    import_module(f"shapprune.commands.{_name}")

__all__ = ["app", "main", "progress_fields", "status_progress"]

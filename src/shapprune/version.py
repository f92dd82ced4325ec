"""The package version, in one place (the checkpoint files record it)."""

__version__ = "0.1.0"

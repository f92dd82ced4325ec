"""shapprune: structured pruning by Shapley values, with physical removal."""

from .estimators import METHODS, Estimate, estimate
from .game import METRICS, PruningGame

__version__ = "0.1.0"

__all__ = ["METHODS", "METRICS", "Estimate", "PruningGame", "__version__", "estimate"]

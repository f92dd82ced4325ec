"""shapprune: structured pruning by Shapley values, with physical removal."""

__version__ = "0.1.0"

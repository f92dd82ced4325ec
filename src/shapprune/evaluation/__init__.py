"""Evaluation: what a pruned model costs and does, how close a ranking comes to the oracle,
the papers' experiments, resumable comparisons, reports and plots."""

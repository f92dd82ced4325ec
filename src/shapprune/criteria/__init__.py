"""Criteria: every way to score units, behind one contract (``Criterion.score``) and one
registry (``get_criterion``): the game family, LRP and the classic heuristics."""

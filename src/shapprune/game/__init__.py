"""The game: the prunable units of a layer (players) and the value of any coalition of them.

``units`` finds the players and where they are masked, ``tracing`` and ``split`` cut the
traced model so the prefix runs once, ``pruning_game`` answers masks with values, and
``synthetic`` holds games whose values are known (for testing estimators).
"""

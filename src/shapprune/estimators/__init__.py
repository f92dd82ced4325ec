"""Shapley-value estimators: one verb, ``estimate(game, method, budget, seed, **options)``.

``registry`` holds the verb and the estimators by name; ``base`` says what an estimator is
(``Estimator``) and what it answers (``Estimate``); one module per method (``exact``,
``permutation``, ``kernel``, ``partial``, ``loo``), each with its declaration beside it.
"""

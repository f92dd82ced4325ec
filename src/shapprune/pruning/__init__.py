"""Pruning: plans (per layer, global, params/MACs targets), physical removal, model files,
and the whole job (``prune_model``)."""

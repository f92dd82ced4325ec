"""shapprune: structured pruning by Shapley values, with physical removal.

Everything a user's script needs is re-exported here (the subpackages' ``__init__`` files
stay empty, so no import runs in circles); the subpackages follow the flow
``game`` -> ``estimators`` -> ``criteria`` -> ``pruning`` -> ``evaluation`` (``zoo``: models,
data, training).
"""

from shapprune.criteria.base import Criterion
from shapprune.criteria.registry import CRITERIA, get_criterion, score_layers
from shapprune.devices import available_devices, resolve_device
from shapprune.estimators import METHODS, Estimate, estimate
from shapprune.evaluation.measure import evaluate, measure
from shapprune.evaluation.oracle import oracle_rank, oracle_sets
from shapprune.game.pruning_game import METRICS, PruningGame
from shapprune.game.spec import GameSpec
from shapprune.game.units import find_units
from shapprune.pruning.checkpoint import load_checkpoint, save_pruned
from shapprune.pruning.compress import prune_model
from shapprune.pruning.plan import Target, make_plan, prunable_layers
from shapprune.pruning.removal import apply_removals
from shapprune.version import __version__
from shapprune.zoo.cache import load_model, pretrained
from shapprune.zoo.data import load_dataset, reference_set
from shapprune.zoo.models import build_model

__all__ = [
    "CRITERIA",
    "METHODS",
    "METRICS",
    "Criterion",
    "Estimate",
    "GameSpec",
    "PruningGame",
    "Target",
    "__version__",
    "apply_removals",
    "available_devices",
    "build_model",
    "estimate",
    "evaluate",
    "find_units",
    "get_criterion",
    "load_checkpoint",
    "load_dataset",
    "load_model",
    "make_plan",
    "measure",
    "oracle_rank",
    "oracle_sets",
    "prunable_layers",
    "prune_model",
    "pretrained",
    "reference_set",
    "resolve_device",
    "save_pruned",
    "score_layers",
]

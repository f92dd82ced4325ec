"""shapprune: structured pruning by Shapley values, with physical removal.

Everything a user's script needs is re-exported here (the subpackages' ``__init__`` files
stay empty, so no import runs in circles); the subpackages follow the flow
``game`` -> ``estimators`` -> ``criteria`` -> ``pruning`` -> ``evaluation`` (``zoo``: models,
data, training; ``sources``: where models and data come from; ``data``: the data records
and streaming every stage shares).
"""

from shapprune.compat import refuse_unsupported

refuse_unsupported()  # torch, zennit, ... outside the supported range: one line, not a traceback

from shapprune.criteria.base import Criterion
from shapprune.criteria.lrp_spec import CompositeSpec, RuleSpec, load_spec
from shapprune.criteria.registry import (
    CRITERIA,
    criterion,
    get_criterion,
    register_criterion,
    score_layers,
)
from shapprune.data import DatasetSplits, Split, as_splits, reference_set
from shapprune.devices import available_devices, resolve_device
from shapprune.estimators.base import Answer, Estimate, Estimator
from shapprune.estimators.executors import (
    EXECUTORS,
    Executor,
    ExecutorOptions,
    make_executor,
    register_executor,
    using_executor,
)
from shapprune.estimators.registry import (
    ESTIMATORS,
    default_budget,
    estimate,
    get_estimator,
    register_estimator,
    using_progress,
)
from shapprune.estimators.resume import Checkpoint, using_checkpoint
from shapprune.evaluation.measure import evaluate, measure
from shapprune.evaluation.oracle import oracle_rank, oracle_sets
from shapprune.game.network_game import NetworkGame
from shapprune.game.pruning_game import METRICS, PruningGame
from shapprune.game.spec import GameSpec
from shapprune.game.units import find_units
from shapprune.options import option
from shapprune.pruning.compress import prune_model
from shapprune.pruning.defaults import PRUNE_DEFAULTS, PruneDefaults
from shapprune.pruning.plan import Target, make_plan, prunable_layers
from shapprune.pruning.removal import apply_removals
from shapprune.sources.checkpoint import save_pruned
from shapprune.sources.data import DATA_SOURCES, load_data, register_data_source
from shapprune.sources.models import (
    MODEL_SOURCES,
    load_checkpoint,
    load_model,
    register_model_source,
)
from shapprune.sources.preprocessing import Preprocessing
from shapprune.sources.weights import load_weights
from shapprune.version import __version__
from shapprune.zoo.cache import pretrained
from shapprune.zoo.data import load_dataset
from shapprune.zoo.models import build_model

__all__ = [
    "CRITERIA",
    "DATA_SOURCES",
    "ESTIMATORS",
    "EXECUTORS",
    "METHODS",
    "METRICS",
    "MODEL_SOURCES",
    "Answer",
    "Checkpoint",
    "CompositeSpec",
    "Criterion",
    "DatasetSplits",
    "Estimate",
    "Estimator",
    "Executor",
    "ExecutorOptions",
    "GameSpec",
    "NetworkGame",
    "Preprocessing",
    "PruningGame",
    "RuleSpec",
    "Split",
    "Target",
    "__version__",
    "apply_removals",
    "as_splits",
    "available_devices",
    "build_model",
    "criterion",
    "default_budget",
    "estimate",
    "evaluate",
    "find_units",
    "get_criterion",
    "get_estimator",
    "load_checkpoint",
    "load_data",
    "load_dataset",
    "load_model",
    "load_spec",
    "load_weights",
    "make_executor",
    "make_plan",
    "measure",
    "oracle_rank",
    "option",
    "oracle_sets",
    "prunable_layers",
    "prune_model",
    "PRUNE_DEFAULTS",
    "PruneDefaults",
    "pretrained",
    "reference_set",
    "register_criterion",
    "register_data_source",
    "register_estimator",
    "register_executor",
    "register_model_source",
    "resolve_device",
    "save_pruned",
    "score_layers",
    "tune_lrp",
    "using_checkpoint",
    "using_executor",
    "using_progress",
]


def __getattr__(name: str):
    # METHODS: the registered estimators' names, read when asked (later ones included)
    if name == "METHODS":
        return tuple(ESTIMATORS)
    if name == "tune_lrp":  # imports zennit and optuna: only when asked for
        from shapprune.criteria.lrp_tune import tune_lrp

        return tune_lrp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Acting on a plan: masking units, or removing them physically with torch-pruning.

Physical removal goes through torch-pruning's dependency graph, which removes every
coupled producer and consumer of a unit (residual additions, concatenations, flattening).
Attention heads are cut from the fused ``qkv`` projection and the output projection, and
the module's ``num_heads`` is updated; ``nn.MultiheadAttention`` is first swapped for an
equivalent ``SlimMultiheadAttention``, whose heads can be cut. Every removal is recorded
in the model's pruning history, which replays on a freshly built model: the way a pruned
model is saved.
Masking keeps the model's shape and zeroes each removed unit's input columns in every
consumer, which computes exactly what removal computes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from shapprune.game.attention import (
    SlimMultiheadAttention,
    head_count,
    head_rows,
    separate_projections,
    set_head_count,
)
from shapprune.game.compensation import fold_means
from shapprune.game.coupling import copy_with_graph, prune_players, release
from shapprune.game.units import (
    MaskPoint,
    Units,
    build_graph,
    find_units,
    is_attention,
    out_channel_pruner,
    output_projection,
)

MODES = ("remove", "mask")
HISTORY_ATTR = "shapprune_history"


def history(model: nn.Module) -> list[dict]:
    """The removals applied to ``model`` so far, in order: [{"layer", "units"}, ...]."""
    return list(getattr(model, HISTORY_ATTR, []))


def remove_units(
    model: nn.Module, layer: str, units: Sequence[int], example_inputs: torch.Tensor
) -> nn.Module:
    """A copy of ``model`` with the given units of ``layer`` physically removed."""
    return apply_removals(model, {layer: list(units)}, example_inputs, mode="remove")


def apply_removals(
    model: nn.Module,
    removals: Mapping[str, Sequence[int]],
    example_inputs: torch.Tensor,
    mode: str = "remove",
    *,
    units: Mapping[str, Units] | None = None,
    compensate: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    graph: tp.DependencyGraph | None = None,
) -> nn.Module:
    """A copy of ``model`` with ``removals`` (layer -> unit indices) masked or removed.

    ``units``: layers' units already found on ``model`` (as ``prunable_layers`` gives
    them), so that they are not found again; a layer coupled to one removed before it in
    this call is found anew (its width has changed).
    ``compensate``: reference inputs (or their ``consumer_means`` on ``model``, read once for
    many removals); each removed unit's mean over them is folded into its
    consumers' biases first (``shapprune.game.compensation``), as the games compute with
    ``compensate`` set.
    ``graph``: ``model``'s dependency graph (``build_graph`` on its current shape), copied
    with it (``copy_with_graph``) instead of built anew on the copy; it is not changed.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if graph is not None and mode == "remove":
        model, graph = copy_with_graph(model, graph)  # the copy's graph, while its shape holds
        model.eval()
    else:
        model, graph = copy.deepcopy(model).eval(), None
    done = history(model)
    known = dict(units or {})
    changed: set[str] = set()  # layers whose width a removal in this call has changed
    if compensate is not None:
        folds = []
        for layer, which in removals.items():
            if layer not in known:
                known[layer], graph = _find(model, layer, example_inputs, graph)
            folds += [(p, sorted({int(u) for u in which})) for p in known[layer].mask_points]
        fold_means(model, folds, compensate)  # biases given to consumers: the graph holds
    modules = dict(model.named_modules())

    # heads last: an attention module swapped for a slim one leaves the graph behind, and
    # every layer after it would build one anew (12 builds a copy on ViT-B/16, 1.6 s each);
    # removals in different layers do not depend on their order
    def heads_last(item: tuple) -> bool:
        return item[0] in modules and is_attention(modules[item[0]])

    for layer, which in sorted(removals.items(), key=heads_last):
        idxs = sorted({int(u) for u in which})
        if not idxs:
            continue
        spec = known.get(layer)
        if spec is None or layer in changed:
            spec, graph = _find(model, layer, example_inputs, graph)
        if idxs[0] < 0 or idxs[-1] >= spec.n_players:
            raise ValueError(f"{layer!r} has units 0..{spec.n_players - 1}; got {idxs}")
        if len(idxs) == spec.n_players:
            raise ValueError(f"removing all {spec.n_players} units would empty {layer!r}")
        if mode == "mask":
            _zero_inputs(model, spec.mask_points, idxs)
        else:
            # torch-pruning's graph follows the widths it pruned (its index mappings are
            # updated per group), so it serves the next removals; after an attention swap or
            # grouped convolutions cut by hand it is built anew
            graph = _remove(model, layer, spec.kind, idxs, example_inputs, graph)
            changed.update((layer, *spec.coupled))
            done.append({"layer": layer, "units": idxs})
    release(graph)
    if mode == "remove":
        setattr(model, HISTORY_ATTR, done)
    return model


def replay(model: nn.Module, steps: Sequence[Mapping], example_inputs: torch.Tensor) -> nn.Module:
    """Apply a recorded pruning history to ``model`` (in place), rebuilding its shape."""
    graph = None
    for step in steps:
        spec, graph = _find(model, step["layer"], example_inputs, graph)
        graph = _remove(model, step["layer"], spec.kind, list(step["units"]), example_inputs, graph)
    release(graph)
    setattr(model, HISTORY_ATTR, [dict(s) for s in steps])
    return model


def _find(
    model: nn.Module, layer: str, example, graph: tp.DependencyGraph | None
) -> tuple[Units, tp.DependencyGraph | None]:
    """``layer``'s units, and the model's dependency graph, built here if finding them
    needs it (not for attention heads) and not given: one graph serves finding the units
    and removing them."""
    module = dict(model.named_modules()).get(layer)
    if graph is None and module is not None and not is_attention(module):
        graph = build_graph(model, example)
    return find_units(model, layer, example, graph), graph


def _zero_inputs(model: nn.Module, points: tuple[MaskPoint, ...], idxs: list[int]) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for point in points:
            consumer = modules[point.module]
            weight = consumer.weight if hasattr(consumer, "weight") else None
            if weight is None:
                raise NotImplementedError(f"cannot mask the inputs of {point.module!r}")
            weight.index_fill_(1, point.channels(idxs, weight.device), 0.0)


def _remove(
    model: nn.Module,
    layer: str,
    kind: str,
    idxs: list[int],
    example,
    graph: tp.DependencyGraph | None = None,
) -> tp.DependencyGraph | None:
    """Remove units ``idxs`` of ``layer`` (``graph``: the model's dependency graph, if
    already built on its current shape); return the graph where it still describes the
    model (pruned through it alone), else None."""
    module = dict(model.named_modules())[layer]
    if isinstance(module, nn.MultiheadAttention):  # heads tied to the width: swap it first
        module = SlimMultiheadAttention.from_torch(module)
        parent, _, child = layer.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module)
    if isinstance(module, SlimMultiheadAttention):
        module.remove_heads(idxs)
        release(graph)
        return None
    apart = separate_projections(module) if kind == "heads" else None
    if apart is not None and not isinstance(getattr(module, "qkv", None), nn.Linear):
        _remove_separate_heads(module, apart, idxs)
        return graph  # layers of this module alone, cut as the graph would: it still holds
    dg = graph or build_graph(model, example)
    if kind == "heads":
        if _remove_heads(dg, module, idxs):  # the fused projection was cut through the graph
            return dg
        release(dg)
        return None
    is_conv = isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
    n = module.out_channels if is_conv else module.out_features
    if prune_players(dg, module, n, layer, idxs):  # groups of a grouped conv, if any
        release(dg)
        return None
    if _prune_group(dg.get_pruning_group(module, out_channel_pruner(module), idxs=idxs)):
        return dg
    release(dg)
    return None


# torch-pruning's operations whose channel offsets are read from the shapes at tracing: a
# graph holding one no longer describes the model once a width before it has changed
_OFFSET_OPS = ("CONCAT", "SPLIT", "UNBIND", "SLICE", "EXPAND")


def _prune_group(group) -> bool:
    """Prune a group of torch-pruning's graph; return whether the graph still describes its
    model: yes unless the group went through a concatenation, split or slice (their
    offsets were read at tracing). One the group did not reach kept its inputs' widths: a
    ViT's class-token concatenation and slice are never reached by its neurons' groups."""
    kinds = {getattr(tp.ops.OPTYPE, name, None) for name in _OFFSET_OPS} - {None}
    reached = {dep.target.type for dep, _ in group} | {dep.source.type for dep, _ in group}
    group.prune()
    return not (reached & kinds)


def _remove_heads(dg: tp.DependencyGraph, attn: nn.Module, heads: list[int]) -> bool:
    """Cut ``heads`` of ``attn``; return whether ``dg`` still describes the model."""
    qkv = getattr(attn, "qkv", None)
    apart = separate_projections(attn)
    if apart is not None and not isinstance(qkv, nn.Linear):
        _remove_separate_heads(attn, apart, heads)
        return True
    if not isinstance(qkv, nn.Linear):
        raise NotImplementedError(
            f"physical head removal needs a fused 'qkv' projection or separate q/k/v ones; "
            f"{type(attn).__name__} has neither: use mode='mask'"
        )
    n_heads = int(attn.num_heads)
    width = qkv.out_features // 3
    head_dim = width // n_heads
    rows = head_rows(heads, head_dim, parts=3, width=width)
    table = getattr(attn, "relative_position_bias_table", None)  # timm's Swin: (pairs, heads)
    holds = _prune_group(dg.get_pruning_group(qkv, out_channel_pruner(qkv), idxs=rows))
    if isinstance(table, torch.Tensor):  # torch-pruning maps rows onto its heads wrongly
        kept = [h for h in range(n_heads) if h not in set(heads)]
        attn.relative_position_bias_table = nn.Parameter(table.detach()[..., kept])
    attn.num_heads = n_heads - len(heads)
    if hasattr(attn, "attn_dim"):  # timm keeps the concatenated heads' width
        attn.attn_dim = attn.num_heads * head_dim
    return holds


def _remove_separate_heads(attn: nn.Module, qkv: tuple[nn.Linear, ...], heads: list[int]) -> None:
    """Heads cut out of separate q/k/v projections (Hugging Face's attention): their rows
    of each projection and their columns of the output projection. Layers of the same
    module alone change (the residual width is kept), so no dependency graph is needed; the
    module's head count follows (its forward infers the heads from the width, or reads it)."""
    n_heads = int(head_count(attn))
    out = output_projection(attn)
    head_dim = out.in_features // n_heads
    rows = head_rows(heads, head_dim)
    for proj in qkv:
        if proj.out_features != n_heads * head_dim:
            raise NotImplementedError(
                f"{type(attn).__name__}: a projection of width {proj.out_features} does not hold "
                f"{n_heads} heads of {head_dim} (grouped keys/values): use mode='mask'"
            )
        tp.prune_linear_out_channels(proj, rows)
    tp.prune_linear_in_channels(out, rows)
    set_head_count(attn, n_heads - len(heads))

"""How a layer's channels couple, searched on torch-pruning's dependency graph.

Three things torch-pruning's own ``get_pruning_group`` does not do for us:

- It recomputes every index mapping of the model on each call (about 1.4 s on swin_t)
  and follows the group through modules that mix the channels (LayerNorm), into a
  transformer's attention, whose reshapes it maps as flattenings: the index lists grow
  32-fold per pass (minutes and gigabytes on swin_t). Here the mappings are computed once,
  when the graph is built, and the search stops at a mixing module: a group that reaches
  one is refused anyway.
- A channel shuffle (a view that splits the channels into groups, a transpose, a view
  back) permutes channels in a way its graph cannot map: on ShuffleNet its shape inference
  divides by zero. Such views are marked when the graph is built, left out of the index
  mappings, and a group that reaches one is refused.
- A grouped (not depthwise) convolution can only lose whole groups: its units are its
  groups, each removed with its input channels, its output channels and everything coupled
  to either (``channel_parts``, ``prune_players``).

And one thing it does not offer: a copy of a model together with its graph
(``copy_with_graph``), so that a run builds one graph per model it prunes copies of, not
one per copy (a graph of ViT-B/16 takes 1.6 s to build, a copy of it a few milliseconds).
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers, ops
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.group import Group

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
MIXING = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.MultiheadAttention)
"""Modules that mix a unit with the other units: a group is not searched beyond them."""


class DependencyGraph(tp.DependencyGraph):
    """torch-pruning's graph, with the views of a channel shuffle marked (``shuffles``)
    and kept out of its index mappings."""

    def _trace(self, *args, **kwargs):
        module2node = super()._trace(*args, **kwargs)
        self.shuffles = _shuffle_views(module2node.values())
        for node in self.shuffles:  # index mapping skips it (it would divide by zero)
            node.type = ops.OPTYPE.ELEMENTWISE
        return module2node


def release(graph: tp.DependencyGraph | None) -> None:
    """Break the reference cycles of a graph no longer used: its nodes refer to each other
    and to the model's modules, so that a pruned copy stayed in memory until the next full
    garbage collection (about 10 GB during the bisection of an EfficientNet-V2-S plan,
    which prunes about 30 copies; DenseNet-121's prune was killed for memory)."""
    if graph is None:
        return
    for node in list(getattr(graph, "module2node", {}).values()):
        node.__dict__.clear()
    graph.__dict__.clear()


def copy_with_graph(
    model: nn.Module, graph: tp.DependencyGraph
) -> tuple[nn.Module, tp.DependencyGraph]:
    """A deep copy of ``model`` and of ``graph`` (built on ``model`` in its current shape)
    that describes the copy: its nodes, dependencies and index mappings are new and point
    to the copy's modules; the autograd records of the tracing and the pruning functions
    are shared (neither is changed by pruning). ``copy.deepcopy`` of a graph recurses
    through its chain of nodes (past Python's limit on a ResNet-50), so it is copied node
    by node."""
    memo: dict[int, object] = {}
    clone = copy.deepcopy(model, memo)
    shared = {id(graph.ops): graph.ops}
    for pruner in (*graph.REGISTERED_PRUNERS.values(), *graph.CUSTOMIZED_PRUNERS.values()):
        shared[id(pruner)] = pruner
    nodes = list(graph.module2node.values())
    for node in nodes:
        for value in (node.grad_fn, *vars(node.module).values()):
            if hasattr(value, "next_functions"):  # an autograd record of the tracing
                shared[id(value)] = value
    memo.update(shared)
    new = {}
    for node in nodes:  # in the model: its copy; an operation's record (cat, add): copied
        twin = copy.copy(node)
        twin.module = memo.get(id(node.module))
        if twin.module is None:
            twin.module = copy.deepcopy(node.module, memo)
        new[id(node)] = twin
    for node in nodes:
        twin = new[id(node)]
        twin.inputs = [new[id(n)] for n in node.inputs]
        twin.outputs = [new[id(n)] for n in node.outputs]
        twin.dependencies = []
        for dep in node.dependencies:
            twin_dep = copy.copy(dep)
            twin_dep.source, twin_dep.target = new[id(dep.source)], new[id(dep.target)]
            twin_dep.index_mapping = copy.deepcopy(dep.index_mapping, memo)
            twin.dependencies.append(twin_dep)
    out = copy.copy(graph)
    out.model = clone
    out.module2node = {new[id(n)].module: new[id(n)] for n in nodes}
    out._module2name = {memo.get(id(m), m): name for m, name in graph._module2name.items()}
    out._param_to_name = {memo.get(id(p), p): name for p, name in graph._param_to_name.items()}
    out.ignored_params = [memo.get(id(p), p) for p in graph.ignored_params]
    out.IGNORED_LAYERS_IN_TRACING = [memo.get(id(m), m) for m in graph.IGNORED_LAYERS_IN_TRACING]
    out.unwrapped_parameters = copy.deepcopy(graph.unwrapped_parameters, memo)
    out._pruning_history = copy.deepcopy(graph._pruning_history)
    out.shuffles = {new[id(n)] for n in getattr(graph, "shuffles", ())}
    for name in ("_in_channel_pruning_fn", "_out_channel_pruning_fn"):
        setattr(out, name, set(getattr(graph, name)))
    return clone, out


def _shuffle_views(nodes) -> set:
    """The two views of ``x.view(b, g, c // g, h, w).transpose(1, 2).view(b, c, h, w)``:
    a view of a tensor of more than 4 dimensions, and the view whose output reaches one
    through transposes and copies only. (torch-pruning maps reshapes of 2-D and 4-D
    tensors; a patch embedding's ``flatten(2).transpose(1, 2)`` is not marked.)"""

    def is_view(node) -> bool:
        return node.type == ops.OPTYPE.RESHAPE and node.grad_fn is not None

    def rank(node) -> int:
        return len(getattr(node.grad_fn, "_saved_self_sym_sizes", ()))

    marked = {n for n in nodes if is_view(n) and rank(n) > 4}
    for node in [n for n in nodes if is_view(n) and n not in marked]:
        frontier = list(node.outputs)
        for _ in range(3):  # transpose, contiguous: a few steps at most
            if any(n in marked for n in frontier):
                marked.add(node)
                break
            frontier = [
                o
                for n in frontier
                if n.grad_fn is not None
                and any(w in n.grad_fn.name().lower() for w in ("transpose", "permute", "clone"))
                for o in n.outputs
            ]
    return marked


def is_grouped(module: nn.Module) -> bool:
    """A grouped convolution that is not depthwise (its groups hold several channels)."""
    return isinstance(module, CONV) and module.groups > 1 and module.groups != module.in_channels


def pruning_group(
    dg: tp.DependencyGraph, module: nn.Module, fn, idxs: list[int], layer: str
) -> Group:
    """What ``dg.get_pruning_group(module, fn, idxs)`` returns, searched on the index
    mappings computed when ``dg`` was built and not beyond a ``MIXING`` module (which is
    kept in the group, for the caller to refuse); refused if it reaches a channel shuffle."""
    if module not in dg.module2node:
        raise ValueError(f"{layer!r} is not called as a module in the model's forward pass")
    if isinstance(module, CONV) and module.groups == module.out_channels > 1:
        fn = tp.prune_depthwise_conv_out_channels  # as torch-pruning does
    root = dg.module2node[module]
    start = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
    found = [(Dependency(fn, fn, source=root, target=root), start)]
    stack, visited, shuffled = [found[0]], set(), False
    shuffles = getattr(dg, "shuffles", set())
    while stack:
        dep, current = stack.pop()
        node = dep.target
        visited.add(node)
        shuffled = shuffled or node in shuffles
        if node in shuffles or (isinstance(node.module, MIXING) and node is not root):
            continue
        for new in node.dependencies:
            if not new.is_triggered_by(dep.handler):
                continue
            mapped = current
            for mapping in new.index_mapping:
                if mapping is not None:
                    mapped = mapping(mapped)
            if not mapped:
                continue
            if new.target in visited and any(
                d.target == new.target and d.handler == new.handler and i == mapped
                for d, i in found
            ):
                continue
            found.append((new, mapped))
            stack.append((new, mapped))
    if shuffled and not any(isinstance(d.target.module, MIXING) for d, _ in found):
        raise ValueError(  # (a mixing module is the reason given first, by find_units)
            f"the units of {layer!r} go through a channel shuffle (a view that moves "
            "channels across dimensions), which the dependency graph cannot follow, so "
            "their removal cannot be computed"
        )
    group = Group()
    for dep, current in found:
        group.add_and_merge(dep, current)
    group._DG = dg
    for i, item in enumerate(group.items):
        plain = _helpers.GroupItem(item.dep, _helpers.to_plain_idxs(item.idxs))
        plain.root_idxs = _helpers.to_root_idxs(item.idxs)
        group[i] = plain
    return group


def channel_parts(
    dg: tp.DependencyGraph, module: nn.Module, n: int, layer: str
) -> tuple[list[tuple[Group, torch.Tensor]], int]:
    """The groups that removing ``module``'s output units touches, each with the player of
    every root index, and the number of players.

    Usually one group, rooted at the module's ``n`` outputs, one player per output. Where
    the group reaches a grouped convolution (its input or output channels), the players are
    that convolution's groups, and a second group, rooted at its other side, joins: a group
    of channels is removed from both sides at once.
    """
    fn = tp.prune_conv_out_channels if isinstance(module, CONV) else tp.prune_linear_out_channels
    group = pruning_group(dg, module, fn, list(range(n)), layer)
    grouped = [item for item in group.items if is_grouped(item.dep.target.module)]
    if not grouped:
        return [(group, torch.arange(n, device="cpu"))], n
    counts = {item.dep.target.module.groups for item in grouped}
    if len(counts) > 1:
        raise ValueError(
            f"the units of {layer!r} reach grouped convolutions with different numbers of "
            f"groups ({sorted(counts)}), so no grouping of them can be removed"
        )
    k = counts.pop()
    player = torch.full((n,), -1, dtype=torch.long, device="cpu")  # records: CPU
    parts: list[tuple[Group, torch.Tensor]] = []
    others: dict[nn.Module, bool] = {}  # grouped conv -> reached on its input side
    for item in grouped:
        conv = item.dep.target.module
        into = dg.is_in_channel_pruning_fn(item.dep.handler)
        width = conv.in_channels if into else conv.out_channels
        groups = torch.as_tensor(item.idxs, device="cpu") // (width // k)
        roots = torch.as_tensor(item.root_idxs, device="cpu")
        if bool(((player[roots] >= 0) & (player[roots] != groups)).any()):
            raise ValueError(f"the units of {layer!r} fall into different groups of {k}")
        player[roots] = groups
        others.setdefault(conv, into)
    if bool((player < 0).any()):
        raise ValueError(
            f"some units of {layer!r} bypass the grouped convolution they are coupled to, "
            "so they cannot be removed a group at a time"
        )
    parts.append((group, player))
    for conv, into in others.items():
        fn = tp.prune_conv_out_channels if into else tp.prune_conv_in_channels
        width = conv.out_channels if into else conv.in_channels
        other = pruning_group(dg, conv, fn, list(range(width)), layer)
        if any(
            is_grouped(i.dep.target.module) and i.dep.target.module is not conv for i in other.items
        ):
            raise ValueError(f"the units of {layer!r} chain grouped convolutions")
        parts.append((other, torch.arange(width, device="cpu") // (width // k)))
    return parts, k


def prune_players(
    dg: tp.DependencyGraph, module: nn.Module, n: int, layer: str, players: list[int]
) -> bool:
    """Remove ``players`` of ``module`` (``n`` outputs) where they are groups of grouped
    convolutions: every coupled item, then each grouped convolution's groups by hand
    (torch-pruning keeps a grouped convolution's group count). False, with nothing
    done, where no grouped convolution is involved."""
    parts, _ = channel_parts(dg, module, n, layer)
    if len(parts) == 1:
        return False
    removed = torch.as_tensor(players, device="cpu")
    merged: dict[tuple, tuple[Dependency, set[int]]] = {}
    convs: dict[nn.Module, None] = {}
    for group, player in parts:
        for item in group.items:
            target = item.dep.target.module
            keep = torch.isin(player[torch.as_tensor(item.root_idxs, device="cpu")], removed)
            idxs = torch.as_tensor(item.idxs, device="cpu")[keep].tolist()
            if is_grouped(target):
                convs[target] = None
                continue
            key = (item.dep.target, item.dep.handler)
            merged.setdefault(key, (item.dep, set()))[1].update(idxs)
    group = Group()
    group._DG = dg
    for dep, idxs in merged.values():
        if idxs:
            group.add_dep(dep, sorted(idxs))
    group.prune(record_history=False)
    for conv in convs:
        _remove_groups(conv, players)
    return True


def _remove_groups(conv: nn.Module, groups: list[int]) -> None:
    """Cut whole groups from a grouped convolution: their output rows, and their share of
    the input channels (its weight's per-group input width is unchanged)."""
    per_out = conv.out_channels // conv.groups
    drop = {g * per_out + j for g in groups for j in range(per_out)}
    keep = torch.tensor(
        [o for o in range(conv.out_channels) if o not in drop], device=conv.weight.device
    )
    with torch.no_grad():
        conv.weight = nn.Parameter(conv.weight.index_select(0, keep))
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.index_select(0, keep))
    conv.in_channels -= len(groups) * (conv.in_channels // conv.groups)
    conv.out_channels = len(keep)
    conv.groups -= len(groups)

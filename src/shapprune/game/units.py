"""The players of a pruning game: the prunable units of one layer, and where to mask them.

A unit is removed, in effect, by zeroing it where it enters every layer that consumes it
(each consumer's input columns for that unit). That is exactly what the physically pruned
network computes: channel-wise operations between the producer and its consumers (its
BatchNorm, activation, pooling, residual additions) touch the unit only, and the
consumers are the only way it reaches the output. torch-pruning's dependency graph tells
which producers are coupled (a residual stream) and which consumers read the unit, with
the index mapping through flattening and concatenation.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from shapprune.devices import as_float64, to_device
from shapprune.game.attention import head_count
from shapprune.game.coupling import DependencyGraph, channel_parts, is_grouped

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS_ACROSS_CHANNELS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
UNOWNED = -1  # a mask point's channel that no player owns


@dataclass(frozen=True)
class MaskPoint:
    """Where a layer's units are zeroed: the input of one consuming module.

    ``player_of_channel[c]`` is the player that channel ``c`` of that input belongs to,
    or ``UNOWNED`` (-1) for channels no player owns; channels lie along ``channel_dim``.
    """

    module: str
    channel_dim: int
    player_of_channel: torch.Tensor

    @functools.cached_property
    def _one_to_one(self) -> bool:
        """Whether channel c is player c's for every channel (worked out once per point)."""
        owner = self.player_of_channel
        return bool((owner == torch.arange(len(owner), device=owner.device)).all())

    def _owner_on(self, device: torch.device) -> torch.Tensor:
        """``player_of_channel`` (a CPU record) on ``device``, copied there once."""
        copies = self.__dict__.setdefault("_owner_copies", {})  # frozen: not a field
        if device not in copies:
            copies[device] = self.player_of_channel.to(device)
        return copies[device]

    def channel_mask(self, masks: torch.Tensor) -> torch.Tensor:
        """(m, n) player masks -> (m, C) float channel masks on the masks' device; unowned
        channels (-1) are kept.

        Where channel c is player c's (the common case) the channel mask is the player mask,
        with no indexing: this runs once per stacked pass of coalitions.
        """
        if masks.shape[1] == len(self.player_of_channel) and self._one_to_one:
            return masks.float()
        keep_all = torch.ones(masks.shape[0], 1, dtype=torch.bool, device=masks.device)
        return torch.cat([masks, keep_all], dim=1)[:, self._owner_on(masks.device)].float()

    def channels(
        self, players: int | Sequence[int], device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Indices (along ``channel_dim``, on ``device``) of the channels owned by any of
        ``players``; ``UNOWNED`` gives the channels no player owns."""
        owner = self.player_of_channel
        found = torch.isin(owner, torch.as_tensor(players, device=owner.device))
        return found.nonzero().flatten().to(device)

    def per_player(
        self, t: torch.Tensor, n_players: int, keep: int = 0, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``t`` (shaped like this point's input) summed per player, in float64: over every
        dimension but the first ``keep`` (e.g. examples) and the channels, then the channels
        into their players (unowned ones dropped). Shape ``(*t.shape[:keep], n_players)``, on
        t's device (the CPU for MPS, which has no float64); added into ``out`` if given."""
        cd = self.channel_dim % t.dim()
        lead = t.shape[:keep]
        per_channel = as_float64(t.movedim(cd, -1).reshape(*lead, -1, t.shape[cd]).sum(keep))
        owner = self._owner_on(per_channel.device)
        owned = owner >= 0
        if out is None:
            out = torch.zeros(*lead, n_players, dtype=torch.float64, device=per_channel.device)
        return out.index_add_(keep, owner[owned], per_channel[..., owned])


@dataclass(frozen=True)
class Units:
    """The players of one layer: their kind, names, and mask points."""

    layer: str
    kind: str  # "channels", "neurons", "heads" or "groups" (of a grouped convolution)
    n_players: int
    mask_points: tuple[MaskPoint, ...]
    coupled: tuple[str, ...]  # producers removed together with the layer's units

    @property
    def names(self) -> list[str]:
        unit = {"channels": "ch", "neurons": "n", "heads": "head", "groups": "group"}[self.kind]
        return [f"{self.layer}:{unit}{i}" for i in range(self.n_players)]


def is_attention(module: nn.Module) -> bool:
    """Multi-head attention: torch's, timm-style (``num_heads`` and an output projection) or
    Hugging Face's (``num_attention_heads``, separate q/k/v projections and ``o_proj``)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    return head_count(module) is not None and isinstance(output_projection(module), nn.Linear)


def output_projection(module: nn.Module) -> nn.Module | None:
    for name in ("proj", "out_proj", "o_proj"):
        sub = getattr(module, name, None)
        if isinstance(sub, nn.Linear):
            return sub
    return None


def candidate_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose units can be players: convs, linears, attention modules."""
    names = []
    for name, module in model.named_modules():
        if name and (isinstance(module, _CONV + (nn.Linear,)) or is_attention(module)):
            names.append(name)
    return names


def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model`` (its parameter warnings silenced; the
    train/eval flags of the modules, which its tracing sets to eval, restored). The example
    inputs are moved to the model's device."""
    example_inputs = to_device(example_inputs, model)
    flags = {m: m.training for m in model.modules()}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            warnings.filterwarnings("ignore", message="Maximum recursive depth reached")  # Swin
            return DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    finally:
        for m, flag in flags.items():
            m.training = flag


def find_units(
    model: nn.Module,
    layer: str,
    example_inputs: torch.Tensor,
    graph: tp.DependencyGraph | None = None,
) -> Units:
    """The players of ``layer`` in ``model`` and where each is masked (``graph``: the
    model's dependency graph, if already built)."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(
            f"no layer named {layer!r} in the model; prunable layers: "
            + ", ".join(candidate_layers(model))
        )
    module = modules[layer]
    if is_attention(module):
        return _head_units(layer, module)
    if not isinstance(module, _CONV + (nn.Linear,)):
        raise ValueError(
            f"layer {layer!r} ({type(module).__name__}) has no prunable units; choose a "
            "convolution, linear or attention layer: " + ", ".join(candidate_layers(model))
        )
    return _channel_units(model, layer, module, graph or build_graph(model, example_inputs))


def layer_units(
    model: nn.Module,
    layers: Sequence[str],
    example_inputs: torch.Tensor,
    graph: tp.DependencyGraph | None = None,
) -> dict[str, Units]:
    """The units of each of ``layers``, found with one dependency graph (``graph``, if
    built): once per model, then passed on (to planning, removal, the games)."""
    graph = graph or build_graph(model, example_inputs)
    return {name: find_units(model, name, example_inputs, graph) for name in layers}


def prunable_units(
    model: nn.Module, example_inputs: torch.Tensor, graph: tp.DependencyGraph | None = None
) -> dict[str, Units]:
    """The layers whose units can be removed, with their units: one representative per
    coupled group (a residual stream is one set of players, whichever layer names it).

    Convolutions (channels), linear layers (neurons; not the classifier's outputs and not
    the projections inside attention modules) and attention modules (heads).
    """
    attention = [n for n, m in model.named_modules() if n and is_attention(m)]
    out: dict[str, Units] = {}
    seen: set[frozenset[str]] = set()
    graph = graph or build_graph(model, example_inputs)  # built once, shared by every layer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in candidate_layers(model):
            if any(name.startswith(a + ".") for a in attention):
                continue
            try:
                units = find_units(model, name, example_inputs, graph)
            except ValueError:  # the classifier, or units mixed by a LayerNorm
                continue
            key = coupling_key(units)
            if key in seen:
                continue
            seen.add(key)
            out[name] = units
    return out


def coupling_key(units: Units) -> frozenset[str]:
    """What identifies a set of players: the producers removed together (two layers of one
    residual stream have the same players), or the attention module for heads."""
    return frozenset(units.coupled) if units.kind != "heads" else frozenset([units.layer])


def _head_units(layer: str, module: nn.Module) -> Units:
    cls = type(module)
    if cls.__module__.startswith("torchvision") and "ShiftedWindow" in cls.__name__:
        raise ValueError(
            f"the heads of {layer!r} ({type(module).__name__}) cannot be players: torchvision's "
            "shifted_window_attention applies its projections as functions, not modules, and "
            "takes a head's width to be the input width / num_heads, so a head can be neither "
            "masked nor removed; choose its MLP neurons instead"
        )
    proj = module.out_proj if isinstance(module, nn.MultiheadAttention) else None
    proj = proj or output_projection(module)
    n_heads = int(head_count(module))
    width = proj.in_features
    if width % n_heads:
        raise ValueError(f"{layer}: projection width {width} is not a multiple of {n_heads} heads")
    proj_name = layer + "." + next(n for n, m in module.named_children() if m is proj)
    owner = torch.arange(width, device="cpu") // (width // n_heads)
    point = MaskPoint(proj_name, -1, owner)
    return Units(layer, "heads", n_heads, (point,), (layer,))


def out_channel_pruner(module: nn.Module) -> Callable:
    """torch-pruning's function that removes output channels of a convolution or linear layer."""
    return tp.prune_conv_out_channels if isinstance(module, _CONV) else tp.prune_linear_out_channels


def _channel_units(
    model: nn.Module, layer: str, module: nn.Module, dg: tp.DependencyGraph
) -> Units:
    is_conv = isinstance(module, _CONV)
    outputs = module.out_channels if is_conv else module.out_features
    parts, n = channel_parts(dg, module, outputs, layer)  # n < outputs: a grouped conv's groups
    names = {m: k for k, m in model.named_modules()}
    points, coupled = [], []
    for item, player in ((item, player) for group, player in parts for item in group.items):
        target, handler = item.dep.target.module, item.dep.handler
        if not isinstance(target, nn.Module) or target not in names:
            continue
        if isinstance(target, _NORMS_ACROSS_CHANNELS + (nn.MultiheadAttention,)):
            raise ValueError(
                f"the units of {layer!r} are coupled to {names[target]!r} "
                f"({type(target).__name__}), which mixes them with other units, so masking "
                "cannot reproduce their removal; choose attention heads or MLP neurons instead"
            )
        if not isinstance(target, _CONV + (nn.Linear,)):
            continue
        if dg.is_out_channel_pruning_fn(handler):
            coupled.append(names[target])
        elif dg.is_in_channel_pruning_fn(handler) and not (
            _is_depthwise(target) or is_grouped(target)
        ):
            width = target.in_channels if isinstance(target, _CONV) else target.in_features
            owner = torch.full((width,), UNOWNED, dtype=torch.long, device="cpu")  # records: CPU
            idxs, roots = (torch.as_tensor(i, device="cpu") for i in (item.idxs, item.root_idxs))
            owner[idxs] = player[roots]
            dim = 1 if isinstance(target, _CONV) else -1
            points.append(MaskPoint(names[target], dim, owner))
    if not points:
        raise ValueError(
            f"layer {layer!r} produces the model's output (nothing consumes its units); "
            "the classifier's outputs are not prunable"
        )
    kind = "groups" if len(parts) > 1 else "channels" if is_conv else "neurons"
    return Units(layer, kind, n, tuple(points), tuple(dict.fromkeys(coupled)))


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, _CONV) and module.groups > 1 and module.groups == module.in_channels


def batch_dim(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> int | None:
    """The examples' dimension of a tensor whose shapes at two numbers of examples are ``a``
    and ``b``: the first dimension in which they differ (None if there is none, or if the
    tensor is not one, None, at either)."""
    if a is None or b is None or len(a) != len(b):
        return None
    diff = [d for d, (p, q) in enumerate(zip(a, b, strict=True)) if p != q]
    return diff[0] if diff else None


def input_batch_dims(
    model: nn.Module,
    modules: Iterable[str],
    x: torch.Tensor,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, int]:
    """The examples' dimension in the first input of each of ``modules`` when ``model`` runs
    on inputs like ``x``: 0, or 1 inside a sequence-first transformer (sequence, batch,
    features). Found by ``batch_dim`` from runs on 2 and 3 copies of ``x[0]`` (each inside
    a fresh ``context()``); 0 for a module that is not called."""
    names = list(dict.fromkeys(modules))
    found = dict(model.named_modules())
    shapes: dict[int, dict[str, tuple[int, ...]]] = {2: {}, 3: {}}  # copies -> first input's
    run = [2]

    def record(name: str):
        def hook(_module, args) -> None:
            if args and isinstance(args[0], torch.Tensor):
                shapes[run[0]].setdefault(name, tuple(args[0].shape))

        return hook

    handles = [found[n].register_forward_pre_hook(record(n)) for n in names]
    try:
        for copies in shapes:
            run[0] = copies
            with context(), torch.no_grad():
                model(x[:1].repeat(copies, *[1] * (x.dim() - 1)))
    finally:
        for h in handles:
            h.remove()
    dims = {n: batch_dim(shapes[2].get(n), shapes[3].get(n)) for n in names}
    return {n: 0 if d is None else d for n, d in dims.items()}

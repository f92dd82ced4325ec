"""Prefix caching: split a traced model at the units being masked.

Everything the masks cannot change (the *prefix*) is computed once per data batch and
kept; only the *suffix*, from the masked consumers on, runs per coalition. The suffix
takes many coalitions at once, stacked along the batch dimension: coalition j's copy of
example b is row ``j * B + b``.

The mask points may belong to several layers (a network-wide game): each point reads its
own slice of the coalition mask, and a consumer fed by several points (a concatenation of
several layers' units) is masked by all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.fx.interpreter import Interpreter

from shapprune.game.units import UNOWNED, MaskPoint, batch_dim


@dataclass
class _Edge:
    """A masked input: ``consumer``'s first argument, zeroed per each of its mask points."""

    consumer: fx.Node
    points: tuple[int, ...]  # indices into the split's mask points (several: a concatenation)
    frontier: bool  # its source is computed in the prefix (then masked outside the graph)
    kind: str = "input"  # how it is masked: "input", "table" or "weights" (see SplitModel)
    source: int = -1  # index of the source among the prefix outputs (frontier edges)
    batch_dim: int = 0  # of the masked tensor
    channel_dim: int = 1
    ndim: int = 0
    module: torch.nn.Module | None = None  # the consumer
    compensation: torch.Tensor | None = None  # (in, out): see shapprune.game.compensation
    out_dims: tuple[int, int, int] = (0, 1, 2)  # the consumer output's batch, channel dims, ndim


class _Recorder(Interpreter):
    """Runs a graph and records each node's shape (or None if it is not a tensor)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[str, tuple[int, ...] | None] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        self.shapes[n.name] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return out


def _probe(gm: fx.GraphModule, x: torch.Tensor) -> tuple[dict, dict]:
    """Node shapes at batch sizes 2 and 3: telling which dimension is the batch."""
    x2, x3 = x[:1].repeat(2, *[1] * (x.dim() - 1)), x[:1].repeat(3, *[1] * (x.dim() - 1))
    out = []
    with torch.inference_mode():
        for xb in (x2, x3):
            rec = _Recorder(gm)
            rec.run(xb)
            out.append(rec.shapes)
    return out[0], out[1]


class SplitModel:
    """A traced model cut into a cached prefix and a coalition-stacked suffix."""

    def __init__(
        self,
        gm: fx.GraphModule,
        points: tuple[MaskPoint, ...],
        example: torch.Tensor,
        n_players: int,
        table_bytes: float = 0.0,
        mask_weights: bool = True,
        slices: Sequence[slice] | None = None,
        compensation: dict[str, torch.Tensor] | None = None,
    ):
        """Split ``gm`` at ``points``. How each masked consumer fed by the prefix is run:
        from per-player output tables (``_table``) if its table fits in ``table_bytes``
        per example; else, if it is a linear layer and ``mask_weights``, with the mask
        applied to its weight's columns (``_masked_linear``); else on masked copies of
        its input. ``slices``: per point, the columns of the (m, n_players) coalition mask
        that are its players (default: all of them, the players of one layer).
        ``compensation``: per consumer, the matrix whose rows its removed input channels
        add to its output (``shapprune.game.compensation``); none: removed means zero."""
        graph = gm.graph
        self.points = points
        self.n_players = n_players
        self.slices = tuple(slices) if slices is not None else (slice(0, n_players),) * len(points)
        if len(self.slices) != len(points):
            raise ValueError(f"{len(self.slices)} slices given for {len(points)} mask points")
        modules = dict(gm.named_modules())
        consumers: dict[fx.Node, tuple[int, ...]] = {}  # consumer -> its mask points
        for j, point in enumerate(points):
            calls = [n for n in graph.nodes if n.op == "call_module" and n.target == point.module]
            if not calls:
                raise ValueError(f"module {point.module!r} is never called in the traced model")
            for c in calls:
                consumers[c] = consumers.get(c, ()) + (j,)
        for c in consumers:
            if not isinstance(c.args[0], fx.Node):
                raise ValueError(f"cannot mask the input of {c.target!r}: it is not a tensor")

        dependent: set[fx.Node] = set()
        for node in graph.nodes:  # topological order: descendants of any consumer
            if node in consumers or any(a in dependent for a in _inputs(node)):
                dependent.add(node)
        s2, s3 = _probe(gm, example)
        self.out_batch_dim = batch_dim(s2[_output(graph).name], s3[_output(graph).name])

        # What the suffix needs from outside: tensors become inputs, the rest is recomputed.
        recompute: set[fx.Node] = set()
        frontier: list[fx.Node] = []
        plain_use: set[fx.Node] = set()

        def need(n: fx.Node, plain: bool) -> None:
            if n in dependent or n in recompute:
                return
            if n.op == "get_attr" or (n.op != "placeholder" and s2[n.name] is None):
                recompute.add(n)
                for a in _inputs(n):
                    need(a, True)
                return
            if n not in frontier:
                frontier.append(n)
            if plain:
                plain_use.add(n)

        edges: list[_Edge] = []
        for node in graph.nodes:
            if node not in dependent:
                continue
            masked = consumers.get(node)
            for i, a in enumerate(_inputs(node)):
                is_edge = masked is not None and i == 0 and a is node.args[0]
                need(a, plain=not is_edge)
            if masked is not None:
                frontier_source = node.args[0] not in dependent
                module = modules[node.target]
                kind = "input"
                n = _width(self.slices[masked[0]])  # a table is one point's players'
                if (
                    frontier_source
                    and len(masked) == 1
                    and _decomposable(module, node, s2, s3, n, table_bytes)
                ):
                    kind = "table"
                elif mask_weights and frontier_source and _weight_maskable(module, node, s2, s3):
                    kind = "weights"
                edges.append(_Edge(node, masked, frontier_source, kind))

        self.frontier = [n for n in graph.nodes if n in set(frontier)]
        self.plain = [n for n in self.frontier if n in plain_use]
        # (index among the prefix outputs, batch dim) of each plain suffix input
        self.plain_inputs = [
            (self.frontier.index(n), batch_dim(s2[n.name], s3[n.name])) for n in self.plain
        ]
        for e in edges:
            src = e.consumer.args[0]
            shape = s2[src.name]
            bd = batch_dim(shape, s3[src.name])
            if bd is None:
                raise ValueError(f"the input of {e.consumer.target!r} has no batch dimension")
            e.batch_dim, e.channel_dim, e.ndim = (
                bd,
                points[e.points[0]].channel_dim % len(shape),  # one consumer: one channel dim
                len(shape),
            )
            e.source = self.frontier.index(src) if e.frontier else -1
            e.module = modules[e.consumer.target]
            if compensation is not None:
                e.compensation = compensation[e.consumer.target]
                out = s2[e.consumer.name]
                obd = batch_dim(out, s3[e.consumer.name])
                if out is None or obd is None:
                    raise ValueError(f"the output of {e.consumer.target!r} has no batch dimension")
                ocd = 1 if not isinstance(e.module, torch.nn.Linear) else len(out) - 1
                e.out_dims = (obd, ocd, len(out))
        self.edges = edges
        self.prefix = _prefix_module(gm, self.frontier)
        # on a CPU, non-overlapping max pooling runs as strided maximums (see _max_pool)
        pools = example.device.type == "cpu"
        self.suffix = _suffix_module(gm, dependent, recompute, self.plain, edges, pools)
        self.bytes_per_example = _bytes_per_example(s2, s3, dependent)

    @property
    def tables_read_alone(self) -> bool:
        """Whether a decomposed consumer reads its per-player table even in passes of one
        coalition: each pass then reads the whole table for its examples, a cost that
        only more coalitions per pass share out."""
        return any(
            e.kind == "table" and _table_pays(e.module, _width(self.slices[e.points[0]]), 1)
            for e in self.edges
        )

    def prepare(self, x: torch.Tensor) -> Cache:
        """The prefix's outputs for one batch of examples (computed once, then reused)."""
        with torch.inference_mode():
            out = list(self.prefix(x))
        return Cache(out, x.shape[0], [None] * len(self.edges))  # tables: built when used

    def run(self, cache: Cache, masks: torch.Tensor) -> torch.Tensor:
        """Logits (m, B, K) of the m coalitions in the bool matrix ``masks`` (m, n)."""
        with torch.inference_mode():
            logits = self.suffix(*self._suffix_inputs(cache, masks))
        if self.out_batch_dim != 0 or logits.dim() != 2:
            raise ValueError("the model must return logits of shape (batch, classes)")
        return logits.reshape(masks.shape[0], cache.batch, logits.shape[-1])

    def _suffix_inputs(self, cache: Cache, masks: torch.Tensor) -> list[torch.Tensor]:
        """The suffix's arguments for the m coalitions of ``masks``: plain inputs tiled m
        times, then per edge its masked input, mask, or the consumer's output."""
        m = masks.shape[0]
        channel: dict[int, torch.Tensor] = {}  # per mask point, built only if an edge needs it
        # of the per-player tables, per players' slice: the players, and 1 for the rest
        weights: dict[tuple[int, int], torch.Tensor] = {}
        args = [
            value if bd is None else tile(value, bd, m)
            for value, bd in ((cache.tensors[i], bd) for i, bd in self.plain_inputs)
        ]
        extra = []  # per compensated edge, what its removed channels add to its output
        for j, e in enumerate(self.edges):
            sl = self.slices[e.points[0]]
            if e.kind == "table" and _table_pays(e.module, _width(sl), m):
                # the consumer's output: a weighted sum of per-player outputs
                key = (sl.start, sl.stop)
                if key not in weights:
                    ones = torch.ones(m, 1, device=masks.device)
                    weights[key] = torch.cat([masks[:, sl].float(), ones], dim=1)
                table = self._table(cache, j)
                out = weights[key] @ table.reshape(table.shape[0], -1)
                args.append(out.reshape(m * table.shape[1], *table.shape[2:]))
                if e.compensation is not None:
                    extra.append(self._compensation(e, self._edge_mask(e, masks, channel), cache))
                continue
            mask = self._edge_mask(e, masks, channel)
            if e.compensation is not None:
                extra.append(self._compensation(e, mask, cache))
            if e.kind != "input":  # "weights", or a table too costly for m coalitions
                args.append(_masked_consumer(e, cache.tensors[e.source], mask))
            elif e.source >= 0:  # mask and stack the cached tensor in one broadcast multiply
                args.append(
                    _masked_stack(cache.tensors[e.source], mask, e.batch_dim, e.channel_dim)
                )
            else:
                args.append(_graph_mask(mask, cache.batch, e.batch_dim, e.channel_dim, e.ndim))
        return args + extra

    def _edge_mask(self, e: _Edge, masks: torch.Tensor, channel: dict) -> torch.Tensor:
        """Edge e's (m, C) float channel mask: the product of its points' (several layers'
        units may enter one consumer); each point's is built once per pass, in ``channel``."""
        for p in e.points:
            if p not in channel:
                channel[p] = self.points[p].channel_mask(masks[:, self.slices[p]])
        mask = channel[e.points[0]]
        for p in e.points[1:]:
            mask = mask * channel[p]
        return mask

    @staticmethod
    def _compensation(e: _Edge, mask: torch.Tensor, cache: Cache) -> torch.Tensor:
        """What the removed channels of ``mask`` add to edge e's consumer output, shaped to
        broadcast over its stacked output."""
        added = (1 - mask) @ e.compensation  # (m, out channels)
        return _graph_mask(added, cache.batch, *e.out_dims)

    def _table(self, cache: Cache, j: int) -> torch.Tensor:
        """Edge j's per-player output table for the cached batch, built on first use."""
        if cache.tables[j] is None:
            e = self.edges[j]
            point, x = self.points[e.points[0]], cache.tensors[e.source]
            n = _width(self.slices[e.points[0]])
            cache.tables[j] = _table(x, e.module, point, e.channel_dim, n)
        return cache.tables[j]


DECOMPOSE_GAIN = 2
"""A consumer is decomposed only if its fan-in is at least this many times n + 1: reading
the (n + 1)-row table costs about as much per output as a fan-in of n + 1, and more in
memory traffic, so a linear layer fed one channel per player gains nothing from it."""

TABLE_READ_COST = 10
"""A pass of m coalitions reads the whole (n + 1)-row table once, at memory speed; on a CPU
a float read from memory costs about as much time as this many multiply-adds in the
consumer's own (compute-bound) pass. The table is used for a pass only if
``m * fan-in >= TABLE_READ_COST * (n + 1)``: with one coalition per pass, the 3x3
convolutions of a ResNet (fan-in 9 C, C = n channels) run faster than their table."""


def _width(sl: slice) -> int:
    """How many players a slice of the coalition mask holds."""
    return sl.stop - sl.start


def _table_pays(module, n: int, m: int) -> bool:
    return m * module.weight[0].numel() >= TABLE_READ_COST * (n + 1)


_LINEAR_CONSUMERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _decomposable(module, node: fx.Node, s2: dict, s3: dict, n: int, table_bytes: float) -> bool:
    """Whether the consumer is linear in its input, its per-player table is affordable, and
    summing n + 1 table rows per output is cheaper than the consumer's own fan-in."""
    if not isinstance(module, _LINEAR_CONSUMERS) or len(node.args) != 1 or node.kwargs:
        return False
    if getattr(module, "groups", 1) != 1:
        return False
    if module.weight[0].numel() < DECOMPOSE_GAIN * (n + 1):  # the table would not pay
        return False
    if batch_dim(s2[node.name], s3[node.name]) != 0:
        return False
    per_example = _numel(s3[node.name]) - _numel(s2[node.name])
    return 4 * (n + 1) * per_example <= table_bytes


def _weight_maskable(module, node: fx.Node, s2: dict, s3: dict) -> bool:
    """Whether the consumer is a plain ``nn.Linear`` call on an input whose batch is its
    first dimension (its channels are then the last, as ``nn.Linear`` reads them)."""
    if not isinstance(module, torch.nn.Linear) or len(node.args) != 1 or node.kwargs:
        return False
    src = node.args[0].name
    return batch_dim(s2[src], s3[src]) == 0


def _masked_consumer(e: _Edge, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Edge e's consumer on m masked copies of its cached input ``x``, stacked along the
    batch: a linear layer with the mask on its weight's columns, any other on the copies."""
    if isinstance(e.module, torch.nn.Linear):
        return _masked_linear(x, mask, e.module)
    return e.module(_masked_stack(x, mask, e.batch_dim, e.channel_dim))


def _masked_linear(x: torch.Tensor, mask: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """``linear`` on m masked copies of ``x`` (batch first), stacked along the batch: the
    (m, C) mask is applied to the weight's columns, so the input is read once and never
    copied m times. Equal to ``linear(_masked_stack(x, mask, 0, -1))``."""
    m, rows = mask.shape[0], x.reshape(-1, x.shape[-1])
    weight = linear.weight.unsqueeze(0) * mask.unsqueeze(1)  # (m, out, in)
    stacked = rows.unsqueeze(0).expand(m, *rows.shape)
    if linear.bias is None:
        out = torch.bmm(stacked, weight.transpose(1, 2))
    else:
        out = torch.baddbmm(linear.bias.view(1, 1, -1), stacked, weight.transpose(1, 2))
    return out.reshape(m * x.shape[0], *x.shape[1:-1], out.shape[-1])


def _table(x: torch.Tensor, module, point: MaskPoint, cd: int, n: int) -> torch.Tensor:
    """Per-player outputs of a linear consumer: row p is its output from player p's
    channels alone (no bias); the last row is the output from the unowned channels plus
    the bias. For any coalition, the consumer's output is the sum of its players' rows
    and the last row: the layer is linear in its input channels."""

    def part(channels: torch.Tensor) -> torch.Tensor:
        if len(channels) == 0:
            channels = torch.zeros(
                1, dtype=torch.long, device=x.device
            )  # an empty part: its output times 0
            return 0 * part(channels)
        xs = x.index_select(cd, channels)
        w = module.weight.index_select(1, channels)
        if isinstance(module, torch.nn.Linear):
            return torch.nn.functional.linear(xs, w)
        return module._conv_forward(xs, w, None)

    last = part(point.channels(UNOWNED, x.device))
    if module.bias is not None:
        shape = [1] * last.dim()
        shape[1 if not isinstance(module, torch.nn.Linear) else -1] = -1
        last = last + module.bias.reshape(shape)
    table = torch.empty(
        (n + 1, *last.shape), dtype=last.dtype, device=last.device
    )  # filled in place: no copies
    table[n] = last
    for p in range(n):
        table[p] = part(point.channels(p, x.device))
    return table


@dataclass
class Cache:
    """The prefix's outputs for one batch of ``batch`` examples, and the per-player
    output tables of decomposed consumers (None for the others, and until first used)."""

    tensors: list[torch.Tensor]
    batch: int
    tables: list[torch.Tensor | None]


def _inputs(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _output(graph: fx.Graph) -> fx.Node:
    out = next(n for n in graph.nodes if n.op == "output")
    return out.args[0]


def tile(value: torch.Tensor, dim: int, m: int) -> torch.Tensor:
    """``m`` copies of ``value`` stacked along its batch dimension ``dim``."""
    reps = [1] * value.dim()
    reps[dim] = m
    return value.repeat(*reps)


def _masked_stack(value: torch.Tensor, mask: torch.Tensor, bd: int, cd: int) -> torch.Tensor:
    """m masked copies of ``value`` stacked along its batch dim ``bd`` (channels at ``cd``)."""
    stacked = value.unsqueeze(bd)  # new coalition axis at bd, the batch moves to bd + 1
    shape = [1] * stacked.dim()
    shape[bd] = mask.shape[0]
    shape[cd + 1 if cd >= bd else cd] = mask.shape[1]
    return (stacked * mask.reshape(shape)).flatten(bd, bd + 1)


def _graph_mask(mask: torch.Tensor, batch: int, bd: int, cd: int, ndim: int) -> torch.Tensor:
    """The (m, C) mask, repeated per example, shaped to broadcast over a stacked tensor."""
    full = mask.repeat_interleave(batch, dim=0)  # (m * B, C)
    if cd < bd:
        full = full.t()
    shape = [1] * ndim
    shape[bd], shape[cd] = mask.shape[0] * batch, mask.shape[1]
    return full.reshape(shape)


def _bytes_per_example(s2: dict, s3: dict, nodes: set[fx.Node]) -> int:
    """Upper bound on the suffix's activation memory per example and coalition."""
    total = 0
    for n in nodes:
        a, b = s2.get(n.name), s3.get(n.name)
        if a is not None and b is not None:
            total += 4 * max(_numel(b) - _numel(a), 0)
    return max(total, 4)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _prefix_module(gm: fx.GraphModule, frontier: list[fx.Node]) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            break
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(tuple(env[n] for n in frontier))
    prefix = fx.GraphModule(gm, graph, class_name="Prefix")
    prefix.graph.eliminate_dead_code()
    prefix.recompile()
    return prefix


def _suffix_module(
    gm: fx.GraphModule,
    dependent: set[fx.Node],
    recompute: set[fx.Node],
    plain: list[fx.Node],
    edges: list[_Edge],
    pools: bool = False,
) -> fx.GraphModule:
    """The suffix: the nodes that depend on the masks (and those recomputed), fed by the
    plain and edge inputs. With ``pools``, each non-overlapping ``nn.MaxPool2d`` call
    becomes a ``_max_pool`` call (the same values, several times faster on a CPU)."""
    graph = fx.Graph()
    modules = dict(gm.named_modules())
    env: dict[fx.Node, fx.Node] = {n: graph.placeholder(f"plain_{i}") for i, n in enumerate(plain)}
    edge_inputs = [graph.placeholder(f"edge_{j}") for j in range(len(edges))]
    compensated = {
        j: graph.placeholder(f"compensation_{j}")
        for j, e in enumerate(edges)
        if e.compensation is not None
    }
    edge_of = {e.consumer: j for j, e in enumerate(edges)}
    for node in gm.graph.nodes:
        if node.op == "output":
            graph.output(fx.map_arg(node.args[0], lambda a: env[a]))
        elif node in recompute or node in dependent:
            j = edge_of.get(node)
            if j is None:
                window = _pool_window(node, modules) if pools else None
                if window is not None:
                    env[node] = graph.call_function(_max_pool, (env[node.args[0]], window))
                else:
                    env[node] = graph.node_copy(node, lambda a: env[a])
                continue
            if edges[j].kind != "input":
                env[node] = edge_inputs[j]  # the consumer's output itself
            else:
                if edges[j].frontier:
                    masked = edge_inputs[j]  # already masked and stacked
                else:
                    masked = graph.call_function(torch.mul, (env[node.args[0]], edge_inputs[j]))
                args = (masked,) + fx.map_arg(node.args[1:], lambda a: env[a])
                kwargs = fx.map_arg(node.kwargs, lambda a: env[a])
                env[node] = graph.create_node(node.op, node.target, args, kwargs, name=node.name)
            if j in compensated:
                env[node] = graph.call_function(torch.add, (env[node], compensated[j]))
    return fx.GraphModule(gm, graph, class_name="Suffix")


def _pool_window(node: fx.Node, modules: dict[str, torch.nn.Module]) -> tuple[int, int] | None:
    """The (height, width) window of a call of a non-overlapping ``nn.MaxPool2d`` (stride
    equal to the window, no padding, dilation or ceil mode, no indices), else None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    pool = modules.get(node.target)
    if type(pool) is not torch.nn.MaxPool2d or pool.return_indices or pool.ceil_mode:
        return None

    def pair(v) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    kernel, stride = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size)
    if kernel != stride or pair(pool.padding) != (0, 0) or pair(pool.dilation) != (1, 1):
        return None
    return kernel


def _max_pool(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Non-overlapping max pooling of the last two dimensions of ``x`` as the elementwise
    maximum of its strided slices, one per position in the window: the same values as
    ``max_pool2d(x, window)``, and several times faster on a CPU (for 2x2 windows on
    LeNet-5's and VGG's activations, 2-8x in one thread)."""
    kh, kw = window
    h, w = (x.shape[-2] // kh) * kh, (x.shape[-1] // kw) * kw  # the rows a window covers
    parts = [x[..., i:h:kh, j:w:kw] for i in range(kh) for j in range(kw)]
    if len(parts) == 1:
        return parts[0].contiguous()
    out = torch.maximum(parts[0], parts[1])
    for part in parts[2:]:
        torch.maximum(out, part, out=out)
    return out

"""The training loop: training zoo models and fine-tuning pruned ones (``prune
--finetune-epochs``), on tensors in memory or streamed from a Dataset.

Here, not in the zoo, because pruning fine-tunes any model a source gives it."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from shapprune.data import DatasetSplits, Split, split_size
from shapprune.devices import device_of
from shapprune.evaluation.measure import evaluate

__all__ = ["train_model"]


# --- training --------------------------------------------------------------------------------


def _parse_augment(augment: Sequence[str]) -> dict[str, int]:
    """Validate augmentation names: "crop" (pad 4), "crop:<pad>" and "flip"."""
    out: dict[str, int] = {}
    for item in augment:
        kind, _, arg = item.partition(":")
        if kind == "crop" and (not arg or arg.isdigit()):
            out["crop"] = int(arg or 4)
        elif item == "flip":
            out["flip"] = 1
        else:
            raise ValueError(
                f"unknown augmentation {item!r}; expected 'crop', 'crop:<pad>', 'flip'"
            )
    return out


def _augment(x: torch.Tensor, kinds: Mapping[str, int], gen: torch.Generator) -> torch.Tensor:
    """Random padded crops (random shifts) and/or horizontal flips, drawn from ``gen``."""
    b, c, h, w = x.shape
    pad = kinds.get("crop", 0)
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        # drawn on the CPU generator (the same draws on every device), used on x's device
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device="cpu").to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device="cpu").to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        bi, ci = torch.arange(b, device=x.device), torch.arange(c, device=x.device)
        x = xp[bi[:, None, None, None], ci[:, None, None], rows, cols]
    if "flip" in kinds:
        flip = (torch.rand(b, generator=gen, device="cpu") < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def _optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    raise ValueError(f"unknown optimizer {name!r}; expected 'adamw', 'adam' or 'sgd'")


def _scheduler(
    opt: torch.optim.Optimizer, name: str, lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if name == "constant":
        return None
    raise ValueError(f"unknown schedule {name!r}; expected 'onecycle', 'cosine' or 'constant'")


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def train_model(
    model: nn.Module,
    data: DatasetSplits,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    seed: int = 0,
    weight_decay: float = 5e-4,
    optimizer: str = "adamw",
    schedule: str = "onecycle",
    augment: Sequence[str] = (),
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``data.train``; return loss/accuracy metrics.

    Shuffling and augmentation come from a generator seeded by ``seed``; the global RNG
    state is restored afterwards. ``augment`` may hold "crop" (4-pixel padded random crop),
    "crop:<pad>" and "flip". A training split of tensors is indexed in memory; a Dataset
    (an image folder) is read batch by batch in the same seeded order, through ``workers``
    loader processes (None: ``data.workers``), so fine-tuning never holds the split whole.
    """
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ValueError(
            f"need epochs >= 1, lr > 0, batch_size >= 1; got {epochs}, {lr}, {batch_size}"
        )
    aug = _parse_augment(augment)
    train = data.train
    n = split_size(train)
    # drop a trailing batch of a single example: BatchNorm cannot train on it
    steps = n // batch_size + (1 if n % batch_size > 1 else 0)
    if steps == 0:
        raise ValueError(f"training split has {n} examples; need at least 2")
    device = device_of(model)
    workers = getattr(data, "workers", 0) if workers is None else workers
    loading = {"batch_size": getattr(data, "batch_size", None), "workers": workers}
    start = time.perf_counter()
    history: list[dict[str, float]] = []
    epoch_loss = float("nan")
    with torch.random.fork_rng(devices=[]), _progress(progress) as bar:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        opt = _optimizer(model, optimizer, lr, weight_decay)
        sched = _scheduler(opt, schedule, lr, epochs * steps)
        task = bar.add_task(f"epoch 1/{epochs}", total=epochs * steps, loss=float("nan"))
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(n, generator=gen, device="cpu")
            loss_sum, seen = 0.0, 0
            for x, y in _shuffled(train, perm, batch_size, steps, device, workers):
                if aug:
                    x = _augment(x, aug, gen)
                loss = F.cross_entropy(model(x), y)
                if not torch.isfinite(loss):
                    raise RuntimeError(
                        f"training diverged at epoch {epoch + 1} (loss {loss.item()}); "
                        f"try a lower learning rate than {lr}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                loss_sum += loss.item() * len(y)
                seen += len(y)
                bar.update(
                    task,
                    advance=1,
                    description=f"epoch {epoch + 1}/{epochs}",
                    loss=loss_sum / seen,
                )
            epoch_loss = loss_sum / seen
            val = evaluate(model, data.val, **loading)
            history.append(
                {"epoch": epoch + 1, "train_loss": epoch_loss, "val_accuracy": val["accuracy"]}
            )
    model.eval()
    test = evaluate(model, data.test, **loading)
    return {
        "train_loss": epoch_loss,
        "val_accuracy": history[-1]["val_accuracy"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "epochs": epochs,
        "seconds": time.perf_counter() - start,
        "history": history,
    }


def _shuffled(
    train: Any,
    order: torch.Tensor,
    batch_size: int,
    steps: int,
    device: torch.device,
    workers: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` training batches of ``train`` in ``order``, on ``device``: indexed tensors
    for a Split (moved to the device once per epoch), else a DataLoader over the order."""
    if isinstance(train, tuple):
        train = Split(*train)
    if isinstance(train, Split):
        x, y = train.x.to(device), train.y.to(device)
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size].to(device)
            yield x[idx], y[idx]
        return
    chunks = [order[i * batch_size : (i + 1) * batch_size].tolist() for i in range(steps)]
    loader = DataLoader(train, batch_sampler=chunks, num_workers=workers)
    for item in loader:
        yield (torch.as_tensor(item[0]).float().to(device),
               torch.as_tensor(item[1]).long().to(device))  # fmt: skip

"""A small model zoo: LeNet-5, a small VGG, CIFAR ResNets and a small ViT.

Every model is a plain, torch.fx-traceable ``nn.Module`` taking ``in_channels``,
``image_size`` and ``num_classes``, so it fits both 1x28x28 and 3x32x32 inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODELS",
    "VGG",
    "Attention",
    "BasicBlock",
    "Block",
    "LeNet5",
    "Mlp",
    "PatchEmbed",
    "ResNetCifar",
    "TinyCNN",
    "VisionTransformer",
    "build_model",
]


class _TwoConvFeatures(nn.Module):
    """conv(5x5) -> ReLU -> max-pool, twice, then flatten: the trunk of LeNet-5 and TinyCNN."""

    def __init__(self, name: str, in_channels: int, image_size: int, widths: tuple[int, int]):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"{name} needs image_size >= 16, got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(widths[0], widths[1], kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flat_features = widths[1] * side * side

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return torch.flatten(x, 1)


class LeNet5(_TwoConvFeatures):
    """LeNet-5 (Caffe variant): conv 20 -> pool -> conv 50 -> pool -> fc 500 -> fc."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__("lenet5", in_channels, image_size, (20, 50))
        self.fc1 = nn.Linear(self.flat_features, 500)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu3(self.fc1(self.features(x))))


class TinyCNN(_TwoConvFeatures):
    """A CNN small enough for exact Shapley values: conv 8 -> pool -> conv 16 -> pool -> fc."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__("tinycnn", in_channels, image_size, (8, 16))
        self.fc = nn.Linear(self.flat_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


VGG_DEFAULT_CFG: tuple[int | str, ...] = (32, "M", 64, "M", 128, 128, "M")


class VGG(nn.Module):
    """Small VGG-style CNN: (conv3x3-BN-ReLU | maxpool)* -> global avg pool -> classifier."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        cfg: Sequence[int | str] = VGG_DEFAULT_CFG,
        hidden: int | None = 128,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for item in cfg:
            if item == "M":
                side //= 2
                if side < 1:
                    raise ValueError(f"vgg cfg {list(cfg)} pools too often for {image_size=}")
                layers.append(nn.MaxPool2d(2))
            elif isinstance(item, int) and item > 0:
                layers += [
                    nn.Conv2d(channels, item, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(item),
                    nn.ReLU(inplace=True),
                ]
                channels = item
            else:
                raise ValueError(f"vgg cfg entries must be positive ints or 'M', got {item!r}")
        if not any(isinstance(m, nn.Conv2d) for m in layers):
            raise ValueError("vgg cfg needs at least one conv layer")
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        if hidden:
            self.classifier = nn.Sequential(
                nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
            )
        else:
            self.classifier = nn.Sequential(nn.Linear(channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """ResNet basic block (torchvision naming) with a 1x1 conv + BN downsample shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetCifar(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): 3 stages of BasicBlocks, widths 16/32/64."""

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        depth: int = 20,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"resnet depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
        if width <= 0:
            raise ValueError(f"resnet width multiplier must be > 0, got {width}")
        del image_size  # global average pooling makes the network size-agnostic
        n = (depth - 2) // 6
        widths = [max(1, round(w * width)) for w in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = widths[0]
        self.layer1 = self._make_layer(widths[0], n, stride=1)
        self.layer2 = self._make_layer(widths[1], n, stride=2)
        self.layer3 = self._make_layer(widths[2], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(BasicBlock(self.in_planes, planes, stride if i == 0 else 1))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))


class PatchEmbed(nn.Module):
    """Image to patch tokens: a Conv2d with kernel = stride = patch size, then flatten."""

    def __init__(self, in_channels: int, image_size: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention (timm layout); still runs after heads are removed."""

    def __init__(self, dim: int, num_heads: int = 4, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x)


class Mlp(nn.Module):
    """Transformer MLP: fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _default_patch_size(image_size: int) -> int:
    for p in (4, 7, 2, 8, 5, 3):
        if image_size % p == 0:
            return p
    return 1


class VisionTransformer(nn.Module):
    """Small ViT (timm naming): patch_embed, cls_token, pos_embed, blocks, norm, head."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        patch_size: int | None = None,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        patch_size = patch_size or _default_patch_size(image_size)
        if image_size % patch_size != 0:
            raise ValueError(f"vit patch_size {patch_size} must divide image_size {image_size}")
        self.patch_embed = PatchEmbed(in_channels, image_size, patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "tinycnn": TinyCNN,  # 8 and 16 filters: exact Shapley values and oracle sets are cheap
    "vgg": VGG,
    "resnet20": ResNetCifar,  # depth 20 by default; depth= and width= change it
    "vit": VisionTransformer,
}


def _torchvision_model(
    name: str, image_size: int, num_classes: int, seed: int, config: dict[str, Any]
) -> nn.Module:
    """A torchvision architecture with random weights (nothing is downloaded)."""
    import torchvision

    if name not in torchvision.models.list_models():
        raise ValueError(f"torchvision has no model {name!r}")
    if name.startswith("vit_"):
        config = {"image_size": image_size, **config}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **config)
    return model.eval()


def build_model(
    name: str,
    *,
    in_channels: int = 1,
    image_size: int = 28,
    num_classes: int = 10,
    seed: int = 0,
    **config: Any,
) -> nn.Module:
    """Build zoo model ``name``; the same name, config and seed give identical weights."""
    if name.startswith("torchvision:"):
        return _torchvision_model(name.split(":", 1)[1], image_size, num_classes, seed, config)
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}, "
            "or torchvision:<name>"
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(
            in_channels=in_channels, image_size=image_size, num_classes=num_classes, **config
        )
    return model.eval()

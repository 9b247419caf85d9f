"""Reference PyTorch architectures of the bundled models (1x28x28 input, 10 classes).

Two families, chosen because they exercise the pruning rules that matter:

* ``resnet(depth)`` / ``resnet20()`` -- the CIFAR-style ResNet of He et al.
  (2016) used by the HRank / channel-pruning papers: three stages of
  ``n = (depth - 2) / 6`` BasicBlocks with widths 16/32/64, stride 2 at the
  start of stages 2 and 3, and an "option B" projection shortcut (1x1 conv +
  BN) wherever the block changes shape.  Residual Adds couple the channels of
  every block in a stage.  Head: global average pool -> flatten -> linear.
* ``vgg(cfg)`` / ``vgg11()`` -- a plain VGG-style CNN with BatchNorm: 8 3x3
  convolutions as in VGG-11 (narrowed for 28x28 grey images) and three 2x2
  max-pools, so the last feature map is 128x3x3.  The classifier reads that
  *flattened* CxHxW map (no global pooling), so the exported ONNX has
  ``Flatten -> Gemm`` whose input features come in blocks of H*W per channel.

All convolutions are bias-free and followed by BatchNorm + ReLU.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

NUM_CLASSES = 10
IN_CHANNELS = 1
INPUT_SIZE = 28

# VGG-11 has 8 conv layers; these widths keep the model < 2 MB as ONNX.
VGG11_CFG: tuple[Union[int, str], ...] = (16, 16, "M", 32, 32, "M", 64, 64, "M", 128, 128)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Bias-free ``kernel x kernel`` convolution ("same" padding) followed by BatchNorm."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_ch)]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus an identity or 1x1 conv-BN ("option B") shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_ch, out_ch, 3, stride)
        self.conv2, self.bn2 = _conv_bn(out_ch, out_ch, 3)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(*_conv_bn(in_ch, out_ch, 1, stride))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (depth 6n+2): stem, 3 stages of n BasicBlocks, GAP, linear."""

    def __init__(self, depth: int = 20, widths: Sequence[int] = (16, 32, 64),
                 num_classes: int = NUM_CLASSES, in_channels: int = IN_CHANNELS) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1 (20, 32, 56, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0], 3), nn.ReLU(inplace=True))
        stages, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(self._make_stage(in_ch, width, blocks_per_stage, stride=1 if i == 0 else 2))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    @staticmethod
    def _make_stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_ch, out_ch, stride)]
        layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.flatten(self.pool(x)))


class VGG(nn.Module):
    """Plain VGG-style CNN: conv3x3-BN-ReLU layers and 'M' max-pools, then a 2-layer MLP
    on the flattened CxHxW feature map (Flatten -> Linear -> ReLU -> Dropout -> Linear)."""

    def __init__(self, cfg: Sequence[Union[int, str]] = VGG11_CFG, hidden: int = 128,
                 dropout: float = 0.3, num_classes: int = NUM_CLASSES,
                 in_channels: int = IN_CHANNELS, input_size: int = INPUT_SIZE) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch, size = in_channels, input_size
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            else:
                layers += [*_conv_bn(ch, int(item), 3), nn.ReLU(inplace=True)]
                ch = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(ch * size * size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit-gamma BNs, small-normal linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def resnet(depth: int) -> ResNet:
    """CIFAR-style ResNet of the given depth (6n+2: 20, 32, 44, 56, 110, ...)."""
    return ResNet(depth)


def resnet20() -> ResNet:
    """ResNet-20: 3 stages x 3 BasicBlocks, widths 16/32/64 (~0.27M parameters)."""
    return ResNet(20)


def resnet56() -> ResNet:
    """ResNet-56: 3 stages x 9 BasicBlocks, widths 16/32/64 (~0.86M parameters)."""
    return ResNet(56)


def vgg(cfg: Sequence[Union[int, str]] = VGG11_CFG, hidden: int = 128) -> VGG:
    """VGG-style CNN from a config list of conv widths and 'M' (2x2 max-pool)."""
    return VGG(cfg, hidden=hidden)


def vgg11() -> VGG:
    """VGG-11-style: 8 BN convs 16,16,M,32,32,M,64,64,M,128,128; 1152->128->10 MLP."""
    return VGG(VGG11_CFG)


ARCHITECTURES = {"resnet20": resnet20, "resnet56": resnet56, "vgg11": vgg11}


def build(arch: str) -> nn.Module:
    """Build a model by name: one of ARCHITECTURES, or ``resnet<depth>`` for any 6n+2 depth."""
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]()
    if arch.startswith("resnet") and arch[len("resnet"):].isdigit():
        return resnet(int(arch[len("resnet"):]))
    raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)} or resnet<6n+2>")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

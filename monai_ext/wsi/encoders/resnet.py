# Copyright (c) monai_ext contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""ResNet-50 truncated after ``layer3`` with global average pooling: the 1024-d patch encoder of CLAM.

ResNet: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385.
Truncation as in CLAM: Lu et al., "Data-efficient and weakly supervised computational pathology on whole-slide
images", Nature Biomedical Engineering 2021, https://doi.org/10.1038/s41551-020-00682-w.

Module names follow timm's (and torchvision's) ``resnet50`` exactly (``conv1``, ``bn1``, ``layer1.0.conv2``,
``layer1.0.downsample.0`` ...), so their ImageNet checkpoints load once ``layer4.*`` and ``fc.*`` are dropped. The
stride sits on the 3x3 convolution (the "v1.5" layout both libraries use).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, with a projection shortcut when the shape changes.

    Args:
        in_channels: input channels.
        width: channels of the 3x3 convolution; the block outputs ``4 * width``.
        stride: stride of the 3x3 convolution and of the shortcut.
    """

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, C_in, H, W] -> [B, 4 * width, H / stride, W / stride]``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act(y + shortcut)


class ResNetTrunk(nn.Module):
    """ResNet stem and the first ``len(blocks)`` stages, then global average pooling.

    Args:
        blocks: bottleneck blocks per stage; ``(3, 4, 6)`` is ResNet-50 up to ``layer3`` (1024-d output).
        base_width: width of the first stage; stage ``i`` has width ``base_width * 2**i``.
    """

    def __init__(self, *, blocks: Sequence[int] = (3, 4, 6), base_width: int = 64) -> None:
        super().__init__()
        if len(blocks) < 1 or min(blocks) < 1:
            raise ValueError(f"blocks must be a non-empty sequence of positive ints, got {blocks}")
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.act = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = base_width
        for stage, n_blocks in enumerate(blocks):
            width = base_width * 2**stage
            stage_blocks = [
                Bottleneck(in_channels if i == 0 else width * EXPANSION, width, stride=2 if stage > 0 and i == 0 else 1)
                for i in range(n_blocks)
            ]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*stage_blocks))
            in_channels = width * EXPANSION
        self.num_stages = len(blocks)
        self.feature_dim = in_channels

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Kaiming-normal convolutions (fan-out, as torchvision and timm), unit BatchNorm, from ``generator`` only."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
                module.reset_running_stats()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode normalised patches.

        Args:
            x: ``[B, 3, H, W]`` normalised images.

        Returns:
            ``[B, feature_dim]`` average-pooled output of the last stage.
        """
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        for stage in range(self.num_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        return x.mean(dim=(2, 3))

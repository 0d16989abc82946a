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

"""A small convolutional trunk with seeded random weights: the encoder that needs no download and runs on a CPU.

Random convolutional features are a weak but honest baseline (Jarrett et al., "What is the best multi-stage
architecture for object recognition?", ICCV 2009, https://doi.org/10.1109/ICCV.2009.5459469): they keep colour and
texture statistics, enough for the synthetic demo cohort and for tests of the whole pipeline, at well over 500
patches per second on one CPU core. Real cohorts use a pretrained encoder from the registry with local weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class BuiltinCNN(nn.Module):
    """Patchify stem then stride-2 3x3 convolutions with ReLU, global average pool.

    Args:
        channels: output channels of each convolution; the last is the feature dimension.
        stem_stride: kernel size and stride of the first (non-overlapping) convolution.
    """

    def __init__(self, *, channels: Sequence[int] = (32, 64, 128), stem_stride: int = 8) -> None:
        super().__init__()
        if len(channels) < 1 or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
        layers: list[nn.Module] = []
        in_channels = 3
        for i, out_channels in enumerate(channels):
            if i == 0:
                conv = nn.Conv2d(in_channels, out_channels, kernel_size=stem_stride, stride=stem_stride)
            else:
                conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
            layers += [conv, nn.ReLU(inplace=True)]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.feature_dim = int(channels[-1])

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Kaiming-normal weights (fan-in, ReLU gain) and zero biases, drawn from ``generator`` only."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode normalised patches.

        Args:
            x: ``[B, 3, H, W]`` normalised images.

        Returns:
            ``[B, feature_dim]`` average-pooled activations of the last convolution.
        """
        return self.features(x).mean(dim=(2, 3))

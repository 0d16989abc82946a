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

"""A small 3D CNN that turns a radiology volume ``[B, C, H, W, D]`` into one embedding ``[B, out_dim]``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ResidualUnit
from torch import Tensor, nn

__all__ = ["Radiology3DEncoder"]


class Radiology3DEncoder(nn.Module):
    """Strided 3D residual units, global average pooling and a linear projection.

    Each stage is a MONAI :class:`~monai.networks.blocks.ResidualUnit` (two ``Conv3d -> InstanceNorm -> PReLU``
    subunits with a residual connection, He et al. 2016, https://arxiv.org/abs/1512.03385, in the form of Kerfoot
    et al. 2018, https://doi.org/10.1007/978-3-030-12029-0_40) that halves every spatial size, so a 64^3 volume
    becomes ``widths[-1]`` maps of 8^3 with the default three stages. Instance normalisation keeps the encoder
    usable with the small (even single-volume) batches that arise when only some patients have a scan, and makes
    each embedding independent of the rest of the batch. Every axis needs at least ``2 ** len(widths)`` voxels and
    one axis more (the last stage must keep two voxels for its instance normalisation).

    Args:
        in_channels: channels ``C`` of the volume (1 for CT or a single MRI sequence).
        out_dim: embedding size.
        widths: channels of the successive stages.
        dropout: dropout before the projection.

    Raises:
        ValueError: non-positive sizes, an empty ``widths`` or a dropout outside ``[0, 1)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_dim: int = 128,
        widths: Sequence[int] = (16, 32, 64),
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = tuple(int(width) for width in widths)
        if not widths or min(in_channels, out_dim, *widths) < 1:
            raise ValueError(
                f"in_channels, out_dim and widths must be positive and widths non-empty, got {in_channels}, "
                f"{out_dim}, {widths}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_dim = out_dim
        channels = (in_channels, *widths)
        self.stages = nn.Sequential(
            *(
                ResidualUnit(
                    spatial_dims=3,
                    in_channels=channels[i],
                    out_channels=channels[i + 1],
                    strides=2,
                    subunits=2,
                    norm=("instance", {"affine": True}),
                    act="PRELU",
                )
                for i in range(len(widths))
            )
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(widths[-1], out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions (fan-out), unit/zero norm affine, Xavier projection with zero bias."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.InstanceNorm3d) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Embed volumes.

        Args:
            x: volumes ``[B, C, H, W, D]``.

        Returns:
            embeddings ``[B, out_dim]``.
        """
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected volumes [B, {self.in_channels}, H, W, D], got shape {list(x.shape)}; add the channel "
                "axis (load_volume returns [1, H, W, D]) and batch them"
            )
        features = self.stages(x)  # [B, widths[-1], H', W', D']
        pooled = torch.flatten(self.pool(features), 1)  # [B, widths[-1]]
        return self.projection(self.dropout(pooled))

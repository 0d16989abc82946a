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

"""Vision Transformer trunks with timm's ``VisionTransformer`` state-dict layout, in plain PyTorch.

ViT: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, https://arxiv.org/abs/2010.11929.
LayerScale: Touvron et al., "Going deeper with Image Transformers", ICCV 2021, https://arxiv.org/abs/2103.17239.
Register tokens: Darcet et al., "Vision Transformers Need Registers", ICLR 2024, https://arxiv.org/abs/2309.16588.
SwiGLU: Shazeer, "GLU Variants Improve Transformer", 2020, https://arxiv.org/abs/2002.05202.

Parameter names match timm (``patch_embed.proj``, ``cls_token``, ``reg_token``, ``pos_embed``,
``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``), so the released
pathology checkpoints (UNI, UNI2-h, Prov-GigaPath, Virchow2, H-optimus-0), which are timm state_dicts, load with
``strict=True`` and no renaming. Two timm conventions matter for correctness:

- ``no_embed_class``: when true, ``pos_embed`` covers the patch tokens only and the class/register tokens are
  concatenated after it is added; when false it also covers the prefix tokens (``1 + reg_tokens`` rows first).
- SwiGLU "packed" MLP (timm ``SwiGLUPacked`` = ``GluMlp(gate_last=False)``): ``fc1`` outputs ``2h`` features, the
  first half goes through SiLU and gates the second half, ``fc2`` maps ``h`` back.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

LAYER_NORM_EPS = 1e-6
INIT_STD = 0.02

MlpKind = Literal["gelu", "swiglu_packed"]
PoolKind = Literal["token", "token_mean"]


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and ``scaled_dot_product_attention``.

    Args:
        dim: token width.
        num_heads: heads; must divide ``dim``.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the embedding width ({dim})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, N, D] -> [B, N, D]``."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, D / H]
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch: ``x * gamma``.

    Args:
        dim: token width.
        init_value: initial value of every entry of ``gamma``.
    """

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, N, D] -> [B, N, D]``."""
        return x * self.gamma


class Mlp(nn.Module):
    """Transformer feed-forward: ``fc2(GELU(fc1(x)))``, or the packed SwiGLU ``fc2(SiLU(a) * b)``, ``[a, b] = fc1(x)``.

    Args:
        dim: token width.
        hidden: output width of ``fc1`` (for SwiGLU, twice the gated width; must be even).
        kind: ``"gelu"`` or ``"swiglu_packed"``.
    """

    def __init__(self, dim: int, hidden: int, kind: MlpKind) -> None:
        super().__init__()
        if kind not in ("gelu", "swiglu_packed"):
            raise ValueError(f"unknown MLP kind {kind!r}; use 'gelu' or 'swiglu_packed'")
        if kind == "swiglu_packed" and hidden % 2:
            raise ValueError(f"a packed SwiGLU needs an even fc1 width, got {hidden}")
        self.kind = kind
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden // 2 if kind == "swiglu_packed" else hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, N, D] -> [B, N, D]``."""
        x = self.fc1(x)
        if self.kind == "swiglu_packed":
            gate, value = x.chunk(2, dim=-1)
            x = F.silu(gate) * value
        else:
            x = F.gelu(x)
        return self.fc2(x)


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_hidden: ``fc1`` output width.
        mlp_kind: ``"gelu"`` or ``"swiglu_packed"``.
        init_value: LayerScale initial value.
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, mlp_kind: MlpKind, init_value: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_value)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, mlp_hidden, mlp_kind)
        self.ls2 = LayerScale(dim, init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, N, D] -> [B, N, D]``."""
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens with one strided convolution.

    Args:
        patch_size: patch side in pixels (kernel and stride).
        dim: token width.
    """

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, 3, H, W] -> [B, (H / p) * (W / p), D]``, row-major over the patch grid."""
        return rearrange(self.proj(x), "b d gh gw -> b (gh gw) d")


class VisionTransformerTrunk(nn.Module):
    """ViT feature extractor: tokens, transformer blocks, final LayerNorm, then pooling. No classifier head.

    Args:
        img_size: input side in pixels (fixed; the position embedding is not resampled).
        patch_size: patch side in pixels; must divide ``img_size``.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: ``fc1`` width is ``int(embed_dim * mlp_ratio)`` (timm's rule, packed SwiGLU included).
        mlp_kind: ``"gelu"`` or ``"swiglu_packed"``.
        init_values: LayerScale initial value.
        reg_tokens: number of register tokens after the class token.
        no_embed_class: position embedding for patch tokens only (see the module docstring).
        pool: ``"token"`` returns the class token ``[B, D]``; ``"token_mean"`` concatenates it with the mean of the
            patch tokens (register tokens excluded), ``[B, 2D]``, as Virchow2 does.
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        mlp_kind: MlpKind = "gelu",
        init_values: float = 1e-5,
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        pool: PoolKind = "token",
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"patch_size ({patch_size}) must divide img_size ({img_size})")
        if pool not in ("token", "token_mean"):
            raise ValueError(f"unknown pool {pool!r}; use 'token' or 'token_mean'")
        self.img_size = img_size
        self.num_prefix_tokens = 1 + reg_tokens
        self.no_embed_class = no_embed_class
        self.pool = pool
        self.feature_dim = embed_dim * (2 if pool == "token_mean" else 1)
        num_patches = (img_size // patch_size) ** 2

        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        embed_len = num_patches if no_embed_class else num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim))
        hidden = int(embed_dim * mlp_ratio)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, hidden, mlp_kind, init_values) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Random init drawn from ``generator`` only, close to timm's default.

        Normal(0, 0.02) weights and embeddings (timm truncates at 2 std; ``trunc_normal_`` is 15x slower on a CPU,
        which matters at a billion parameters), zero biases, unit LayerNorm, LayerScale at its initial value.
        """

        def normal(t: torch.Tensor) -> None:
            nn.init.normal_(t, std=INIT_STD, generator=generator)

        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                normal(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, LayerScale):
                module.gamma.fill_(module.init_value)
        for token in (self.cls_token, self.reg_token, self.pos_embed):
            if token is not None:
                normal(token)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, 3, H, W] -> [B, prefix + patches, D]`` with position embeddings added."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected {self.img_size}x{self.img_size} inputs, got {tuple(x.shape[-2:])}")
        x = self.patch_embed(x)
        B = x.shape[0]
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(B, -1, -1))
        if self.no_embed_class:
            return torch.cat([*prefix, x + self.pos_embed], dim=1)
        return torch.cat([*prefix, x], dim=1) + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode normalised patches.

        Args:
            x: ``[B, 3, img_size, img_size]`` normalised images.

        Returns:
            ``[B, feature_dim]``: the class token, or class token and mean patch token concatenated.
        """
        x = self.norm(self.blocks(self._tokens(x)))  # [B, N, D]
        if self.pool == "token":
            return x[:, 0]
        return torch.cat([x[:, 0], x[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)

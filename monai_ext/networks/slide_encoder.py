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

"""A small slide-level transformer over patch features, shaped like the slide encoders of TITAN and Prov-GigaPath.

``SlideEncoder(in_dim=1024, dim=256, depth=4)`` maps a padded bag of patch features ``[B, N, in_dim]`` (with a
validity mask and, optionally, patch coordinates) to a slide embedding ``[B, dim]`` (the class token) and patch
tokens ``[B, N, dim]``. It is randomly initialised here; :meth:`SlideEncoder.from_pretrained` loads a LOCAL state
dict (never a download) and refuses pickled objects, missing, unexpected or mis-shaped keys with an error naming
the file. The pieces of ``forward`` (:meth:`~SlideEncoder.embed`, ``blocks``, :meth:`~SlideEncoder.readout`) are
public so adapters (:mod:`monai_ext.networks.modaltune`) can act between blocks without copying the encoder.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from monai_ext.networks.fusion.layers import TransformerBlock

__all__ = ["SlideEncoder", "load_state_dict_file", "sincos_2d"]

logger = logging.getLogger(__name__)


def sincos_2d(grid: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2D sine-cosine position embedding of (x, y) grid positions (MAE / Prov-GigaPath style).

    The first half of the channels encodes ``x``, the second half ``y``; each half is
    ``[sin(p * w_0..w_{F-1}), cos(p * w_0..w_{F-1})]`` with ``w_f = temperature ** (-f / F)`` and ``F = dim / 4``
    (He et al. 2022, https://arxiv.org/abs/2111.06377; Xu et al. 2024, https://doi.org/10.1038/s41586-024-07441-w).

    Args:
        grid: positions ``[..., 2]`` in grid units (float; fractional positions are allowed).
        dim: embedding width, a multiple of 4.
        temperature: the frequency base.

    Returns:
        ``[..., dim]``.

    Raises:
        ValueError: when ``dim`` is not a multiple of 4 or ``grid`` does not end in 2.
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    if grid.shape[-1] != 2:
        raise ValueError(f"grid must hold (x, y) positions [..., 2], got shape {tuple(grid.shape)}")
    n_freq = dim // 4
    omega = temperature ** (-torch.arange(n_freq, dtype=torch.float32, device=grid.device) / n_freq)  # [F]
    angles = grid.float()[..., None] * omega  # [..., 2, F]
    x, y = angles[..., 0, :], angles[..., 1, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=-1)


def load_state_dict_file(path: str | Path, *, key: str | None = None) -> dict[str, Tensor]:
    """Read a state dict saved with ``torch.save(module.state_dict(), path)``, refusing anything but tensors.

    ``torch.load(..., weights_only=True)`` unpickles only tensors and plain containers, so a file carrying code (a
    pickled module or arbitrary object) is refused instead of executed.

    Args:
        path: a local file.
        key: when the file holds a checkpoint dict, the entry holding the state dict (e.g. ``"state_dict"``).

    Returns:
        ``{name: tensor}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a plain tensor state dict (pickled objects, corrupt file, missing ``key``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; pass the path of a local state dict (.pt / .pth)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(
            f"{path} is not a plain tensor state dict and was refused ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); save the weights with "
            "torch.save(module.state_dict(), path)"
        ) from error
    if key is not None:
        if not isinstance(loaded, Mapping) or key not in loaded:
            found = sorted(loaded)[:10] if isinstance(loaded, Mapping) else type(loaded).__name__
            raise ValueError(f"{path} has no entry {key!r} (found {found}); pass key=None or the right entry")
        loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(
            f"{path} does not hold a state dict of tensors (got {type(loaded).__name__}); for a checkpoint dict "
            "pass key= the entry that holds the state dict"
        )
    return dict(loaded)


class SlideEncoder(nn.Module):
    """Slide-level transformer: patch projection, class token, pre-norm transformer blocks, final LayerNorm.

    A compact stand-in for the slide encoders of TITAN (Ding et al. 2024, https://arxiv.org/abs/2411.19666) and
    Prov-GigaPath (Xu et al., Nature 2024, https://doi.org/10.1038/s41586-024-07441-w): both run a ViT over the
    patch embeddings of a slide and read a slide embedding from a class token. Here attention is exact over the
    valid patches (``F.scaled_dot_product_attention`` with a key mask; memory ``O(N^2)`` per head unless a fused
    kernel applies, fine for the few thousand region features TITAN uses, not for 100k raw patches). Optional patch
    coordinates add a 2D sine-cosine position embedding (:func:`sincos_2d`) of ``coords / position_scale``.

    Args:
        in_dim: patch feature width ``D_in``.
        dim: token width ``E`` (``out_dim``), divisible by ``n_heads`` (and by 4 when coordinates are used).
        depth: number of transformer blocks.
        n_heads: attention heads.
        mlp_ratio: feed-forward width as a multiple of ``dim``.
        dropout: dropout on attention weights and in the feed-forward.
        position_scale: coordinates are divided by this before the position embedding (e.g. the patch size in
            level-0 pixels, so neighbouring patches are one unit apart).

    Raises:
        ValueError: for non-positive sizes or ``dim`` not divisible by ``n_heads``.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        dim: int = 256,
        depth: int = 4,
        n_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        position_scale: float = 256.0,
    ) -> None:
        super().__init__()
        if in_dim < 1 or dim < 1 or depth < 1:
            raise ValueError(f"in_dim, dim and depth must be positive, got {in_dim}, {dim}, {depth}")
        if n_heads < 1 or dim % n_heads:
            raise ValueError(f"dim={dim} must be a positive multiple of n_heads={n_heads}; change one of them")
        if position_scale <= 0:
            raise ValueError(f"position_scale must be positive, got {position_scale}")
        self.in_dim = in_dim
        self.out_dim = dim
        self.position_scale = position_scale
        self.patch_embed = nn.Linear(in_dim, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, n_heads=n_heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal linear weights (std 0.02), zero biases, as in ViT."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, key: str | None = None, **kwargs: Any) -> SlideEncoder:
        """Build an encoder with the architecture ``kwargs`` and load local weights into it.

        Args:
            path: a state dict saved with ``torch.save(encoder.state_dict(), path)``; nothing is downloaded.
            key: the entry of a checkpoint dict that holds the state dict, if any.
            kwargs: the constructor arguments the weights were trained with (``in_dim``, ``dim``, ``depth``...).

        Raises:
            FileNotFoundError: no such file.
            ValueError: a pickled object instead of tensors, or keys / shapes that do not match the architecture.
        """
        encoder = cls(**kwargs)
        encoder.load_pretrained(path, key=key)
        return encoder

    def load_pretrained(self, path: str | Path, *, key: str | None = None) -> None:
        """Load a local state dict strictly: every key present, none extra, every shape equal.

        Args:
            path: the weights file.
            key: the entry of a checkpoint dict that holds the state dict, if any.

        Raises:
            FileNotFoundError: no such file.
            ValueError: naming the file and the offending keys.
        """
        state = load_state_dict_file(path, key=key)
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        mismatched = [
            f"{name} {tuple(state[name].shape)} vs {tuple(own[name].shape)}"
            for name in sorted(set(own) & set(state))
            if state[name].shape != own[name].shape
        ]
        if missing or unexpected or mismatched:
            raise ValueError(
                f"{path} does not match this SlideEncoder (in_dim={self.in_dim}, dim={self.out_dim}, "
                f"depth={len(self.blocks)}): missing keys {missing[:8]}, unexpected keys {unexpected[:8]}, "
                f"shape mismatches (file vs model) {mismatched[:8]}; build the encoder with the architecture the "
                "weights were trained with"
            )
        self.load_state_dict(state)
        logger.info("loaded slide encoder weights from %s", path)

    def embed(self, x: Tensor, mask: Tensor | None = None, coords: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Project the patches and prepend the class token.

        Args:
            x: patch features ``[B, N, D_in]``.
            mask: bool ``[B, N]``, True for real patches (default all True).
            coords: level-0 ``(x, y)`` of each patch ``[B, N, 2]`` (optional).

        Returns:
            tokens ``[B, 1 + N, E]`` (padded patches zeroed) and their mask ``[B, 1 + N]`` (class token valid).

        Raises:
            ValueError: for wrong shapes or an empty bag.
        """
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"SlideEncoder expects patch features [B, N, {self.in_dim}], got {tuple(x.shape)}")
        batch, n = x.shape[:2]
        if mask is None:
            mask = torch.ones(batch, n, dtype=torch.bool, device=x.device)
        if mask.shape != (batch, n) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool [B, N] = {(batch, n)}, got {mask.dtype} {tuple(mask.shape)}")
        if not bool(mask.any(dim=1).all()):
            empty = (~mask.any(dim=1)).nonzero().squeeze(1).tolist()
            raise ValueError(f"samples {empty} have no valid patch; a slide encoder needs at least one per sample")
        tokens = self.patch_embed(x.masked_fill(~mask[..., None], 0.0))
        if coords is not None:
            if coords.shape != (batch, n, 2):
                raise ValueError(f"coords must be [B, N, 2] = {(batch, n, 2)}, got {tuple(coords.shape)}")
            tokens = tokens + sincos_2d(coords / self.position_scale, self.out_dim).to(tokens.dtype)
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens.masked_fill(~mask[..., None], 0.0)], dim=1)
        return tokens, torch.cat([mask.new_ones(batch, 1), mask], dim=1)

    def readout(self, tokens: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Final LayerNorm, split into the slide embedding and the patch tokens.

        Args:
            tokens: ``[B, 1 + N, E]`` after the blocks.
            mask: ``[B, 1 + N]``.

        Returns:
            ``embedding [B, E]``, ``tokens [B, N, E]`` (padded positions zero) and ``mask [B, N]``.
        """
        tokens = self.norm(tokens)
        patch_mask = mask[:, 1:]
        return {
            "embedding": tokens[:, 0],
            "tokens": tokens[:, 1:].masked_fill(~patch_mask[..., None], 0.0),
            "mask": patch_mask,
        }

    def forward(self, x: Tensor, mask: Tensor | None = None, coords: Tensor | None = None) -> dict[str, Tensor]:
        """Encode a batch of slides.

        Args:
            x: patch features ``[B, N, D_in]``.
            mask: bool ``[B, N]`` of real patches (default all True).
            coords: level-0 patch coordinates ``[B, N, 2]`` (optional).

        Returns:
            ``embedding [B, E]`` (normalised class token), ``tokens [B, N, E]`` and ``mask [B, N]``.
        """
        tokens, token_mask = self.embed(x, mask, coords)
        for block in self.blocks:
            tokens = block(tokens, token_mask)
        return self.readout(tokens, token_mask)

    def extra_repr(self) -> str:
        """Architecture summary for ``print(encoder)``."""
        return f"in_dim={self.in_dim}, dim={self.out_dim}, depth={len(self.blocks)}, scale={self.position_scale}"

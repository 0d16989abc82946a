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

"""The common interface of every fusion module and its input checks.

A fusion is built for a tuple of modality names (e.g. ``("wsi", "omics", "clinical", "text")``) and a shared
token dimension ``D`` (each modality is projected to ``D`` beforehand). ``forward(tokens, masks)`` takes, per
modality present in the batch, tokens ``[B, N_m, D]`` (a vector modality is ``[B, 1, D]``) and a bool mask
``[B, N_m]``; a modality missing for one sample has an all-False mask row, one missing for the whole batch is left
out of both dicts. It returns ``{"embedding": [B, E], "attention": {name: [B, N_m]}}`` (plus extras a fusion
documents). Missing modalities are never zero-filled silently: each fusion either uses a learned "missing"
embedding (:class:`MissingEmbeddings`) or excludes the modality from its combination, and says which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["FusionBase", "MissingEmbeddings", "concat_token_sets"]


def concat_token_sets(
    names: Sequence[str], tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor], extra: Tensor
) -> tuple[Tensor, Tensor, dict[str, slice]]:
    """Concatenate the token sets of several modalities and always-valid extra tokens along the token axis.

    Args:
        names: modalities to take, in order; those not in ``tokens`` are skipped.
        tokens: ``{name: [B, N_m, D]}``.
        masks: ``{name: bool [B, N_m]}``.
        extra: ``[B, K, D]`` tokens appended at the end with a True mask (e.g. a learned register token).

    Returns:
        ``(x [B, sum N_m + K, D], mask [B, sum N_m + K], {name: slice of its tokens})``.
    """
    parts, part_masks, slices, start = [], [], {}, 0
    for name in names:
        if name in tokens:
            parts.append(tokens[name])
            part_masks.append(masks[name])
            slices[name] = slice(start, start + tokens[name].shape[1])
            start = start + tokens[name].shape[1]  # not in place: under tracing sizes are tensors
    parts.append(extra)
    part_masks.append(torch.ones(extra.shape[:2], dtype=torch.bool, device=extra.device))
    return torch.cat(parts, dim=1), torch.cat(part_masks, dim=1), slices


class MissingEmbeddings(nn.Module):
    """One learned ``[D]`` vector per modality that stands in for that modality's pooled vector when it is absent.

    Args:
        modalities: the modality names.
        dim: vector dimension ``D``.
    """

    def __init__(self, modalities: Sequence[str], dim: int) -> None:
        super().__init__()
        self.vectors = nn.ParameterDict({name: nn.Parameter(torch.randn(dim) * 0.02) for name in modalities})

    def fill(self, name: str, vector: Tensor | None, present: Tensor | None, batch_size: int) -> Tensor:
        """Return ``vector`` where the modality is present and the learned embedding elsewhere.

        Args:
            name: the modality.
            vector: pooled ``[B, D]``, or None when the modality is absent for the whole batch.
            present: bool ``[B]``, or None together with ``vector``.
            batch_size: ``B``, used when ``vector`` is None.

        Returns:
            ``[B, D]``.
        """
        missing = self.vectors[name]
        if vector is None or present is None:
            return missing.unsqueeze(0).expand(batch_size, -1)
        return torch.where(present[:, None], vector, missing.to(vector.dtype))


class FusionBase(nn.Module):
    """Base class: stores the modality names, ``dim`` and ``out_dim`` and validates the inputs of ``forward``.

    Args:
        modalities: names of the modalities the fusion is built for, in the order used to combine them.
        dim: shared token dimension ``D``.
        out_dim: dimension ``E`` of the fused embedding (default ``D``).

    Raises:
        ValueError: for an empty or duplicated modality list, a name containing ``"."``, or a non-positive size.
    """

    def __init__(self, modalities: Sequence[str], dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        if isinstance(modalities, str):
            raise ValueError(
                f"modalities must be a sequence of names, got the string {modalities!r}; wrap it: ({modalities!r},)"
            )
        names = tuple(modalities)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"modalities must be a non-empty sequence of distinct names, got {names}")
        bad = [n for n in names if not isinstance(n, str) or not n or "." in n]
        if bad:
            raise ValueError(f"modality names must be non-empty strings without '.', got {bad}")
        if dim < 1 or (out_dim is not None and out_dim < 1):
            raise ValueError(f"dim and out_dim must be positive, got dim={dim}, out_dim={out_dim}")
        self.modalities = names
        self.dim = dim
        self.out_dim = out_dim or dim

    def check_inputs(
        self, tokens: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
        """Validate ``tokens``/``masks`` and return them in construction order with padded tokens set to 0.

        Padding values are meaningless; replacing them by 0 keeps NaN or junk padding from leaking through a
        masked attention (``0 * NaN`` is NaN). Missing modalities are still handled by the masks.

        Args:
            tokens: ``{name: [B, N_m, D]}`` for the modalities in the batch.
            masks: ``{name: bool [B, N_m]}`` with the same keys.

        Returns:
            ``(tokens, masks, B)`` ordered as ``self.modalities``.

        Raises:
            ValueError: for unknown or mismatched names, an empty input, or wrong shapes or dtypes.
        """
        if set(tokens) != set(masks):
            raise ValueError(
                f"tokens and masks must have the same modalities, got tokens {sorted(tokens)} and masks "
                f"{sorted(masks)}; give a bool mask [B, N] for every token tensor"
            )
        unknown = sorted(set(tokens) - set(self.modalities))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; this fusion was built for {list(self.modalities)}")
        if not tokens:
            raise ValueError(f"no modality given; pass at least one of {list(self.modalities)}")
        batch_size: int | None = None
        out_tokens: dict[str, Tensor] = {}
        out_masks: dict[str, Tensor] = {}
        for name in self.modalities:
            if name not in tokens:
                continue
            x, mask = tokens[name], masks[name]
            if x.ndim != 3 or x.shape[-1] != self.dim:
                raise ValueError(
                    f"tokens[{name!r}] must be [B, N, {self.dim}] (a vector modality as [B, 1, {self.dim}]), "
                    f"got {tuple(x.shape)}"
                )
            if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(
                    f"masks[{name!r}] must be a bool tensor of shape {tuple(x.shape[:2])}, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            if batch_size is None:
                batch_size = x.shape[0]
            elif x.shape[0] != batch_size:
                raise ValueError(f"tokens[{name!r}] has batch size {x.shape[0]}, other modalities {batch_size}")
            out_tokens[name] = x.masked_fill(~mask[..., None], 0.0)
            out_masks[name] = mask
        assert batch_size is not None  # at least one modality was checked above
        return out_tokens, out_masks, batch_size

    def extra_repr(self) -> str:
        """Modalities and sizes for ``print(model)``."""
        return f"modalities={self.modalities}, dim={self.dim}, out_dim={self.out_dim}"

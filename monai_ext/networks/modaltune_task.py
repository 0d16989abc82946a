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

"""ModalTune as a single-task network with the outputs of :class:`~monai_ext.networks.multimodal.MultimodalModel`.

The bundles and the methods comparison train, evaluate and export networks that return one task's outputs
(classification ``logits``/``probs``; survival ``logits``/``hazards``/``survival``/``risk``) and ``embedding``.
:class:`ModalTuneTask` gives a :class:`~monai_ext.networks.modaltune.ModalTuneModel` that face, through the shared
head of its one task (no per-cohort routing, so a traced export does not freeze the batch size);
:func:`build_modaltune_task` builds one from a bundle's modalities and data spec (``configs/methods/modaltune.json``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from monai_ext.networks.modaltune import TASK_KINDS, ModalTuneModel, build_modaltune

__all__ = ["ModalTuneTask", "build_modaltune_task"]


class ModalTuneTask(nn.Module):
    """A single-task view of a ModalTune model: the flat outputs of its task's shared head plus ``embedding``.

    Args:
        model: the ModalTune model; it needs shared heads (``shared_heads=True``, the default).
        task: the name of its task.
        modalities: what it reads (``wsi`` first); ``wsi`` is required.

    Raises:
        ValueError: the model has no shared head for ``task``.
    """

    require_wsi = True

    def __init__(self, model: ModalTuneModel, task: str, modalities: Sequence[str]) -> None:
        super().__init__()
        shared = model.heads.shared
        if shared is None or task not in shared:
            raise ValueError(f"the ModalTune model has no shared head for task {task!r}; build it with shared heads")
        self.model = model
        self.task = task
        self.modalities = tuple(modalities)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """``batch``: ``wsi [B, N, D]`` with ``wsi_mask [B, N]`` and the other modalities (see ModalTuneModel)."""
        out = self.model.embed(batch)
        return {**self.model.heads.shared[self.task](out["embedding"]), "embedding": out["embedding"]}


def build_modaltune_task(
    *,
    modalities: Sequence[str],
    input_dims: Mapping[str, int],
    task: str,
    n_outputs: int,
    dim: int = 64,
    depth: int = 2,
    encoder_heads: int = 4,
    encoder_weights: str | Path | None = None,
    encoder_key: str | None = None,
    freeze_encoder: bool = False,
    dropout: float = 0.1,
    **kwargs: Any,
) -> ModalTuneTask:
    """ModalTune for one bundle task: a slide encoder over ``wsi`` with adapters for the other modalities.

    Args:
        modalities: the bundle's modalities; ``wsi`` feeds the slide encoder, the others the adapters.
        input_dims: the width of each modality (the data spec's ``input_dims``).
        task: the bundle's task, ``"survival"`` (``n_outputs`` time bins) or ``"classification"`` (classes).
        n_outputs: time bins or classes.
        dim: slide encoder width.
        depth: slide encoder blocks (one adapter per block).
        encoder_heads: slide encoder attention heads.
        encoder_weights: a LOCAL state dict of a pretrained slide encoder with this architecture (None: random).
        encoder_key: the checkpoint entry holding it, if any.
        freeze_encoder: train adapters, tokenizers and heads only, as ModalTune does on a pretrained encoder; keep
            False with a random encoder (a frozen random encoder is a random feature map).
        dropout: dropout of tokenizers, adapters and heads.
        kwargs: further :class:`~monai_ext.networks.modaltune.ModalTuneModel` arguments (``adapter_blocks``...).

    Raises:
        ValueError: a task other than survival or classification (e.g. the staging bundle's slide-to-patient
            task), or no ``wsi`` among the modalities.
    """
    if task not in TASK_KINDS:
        raise ValueError(
            f"ModalTune fits the survival and subtyping bundles (task survival or classification), not task {task!r}"
        )
    if "wsi" not in modalities:
        raise ValueError(f"ModalTune needs 'wsi' among the modalities, got {list(modalities)}")
    model = build_modaltune(
        wsi_dim=int(input_dims["wsi"]),
        tasks={task: (task, int(n_outputs))},
        modalities={name: int(input_dims[name]) for name in modalities if name != "wsi"},
        dim=dim,
        depth=depth,
        encoder_heads=encoder_heads,
        encoder_weights=encoder_weights,
        encoder_key=encoder_key,
        freeze_encoder=freeze_encoder,
        dropout=dropout,
        **kwargs,
    )
    return ModalTuneTask(model, task, modalities)

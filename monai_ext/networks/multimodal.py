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

"""The assembled multimodal model: per-modality token encoders, a fusion and a task head, all chosen by name.

``MultimodalModel(modalities=("wsi", "omics"), wsi_dim=1024, fusion="coattention", task="survival", ...)`` takes
the batch dict of :func:`monai_ext.data.collate.collate_multimodal` and returns a dict of task outputs, the fused
embedding and the patch attention for heatmaps. See :class:`MultimodalModel` for the batch contract.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from monai_ext.networks.fusion import build_fusion
from monai_ext.networks.fusion.layers import masked_mean
from monai_ext.networks.heads import ClassificationHead, CoxHead, DiscreteHazardHead, ModalityDropout
from monai_ext.networks.mil.registry import AGGREGATORS, build_aggregator
from monai_ext.networks.omics import SNN, GeneFamilyEncoder, PathwayTokenEncoder

__all__ = ["MODALITIES", "OMICS_ENCODERS", "TASKS", "MultimodalModel", "uses_patch_tokens"]

logger = logging.getLogger(__name__)

MODALITIES = ("wsi", "omics", "clinical", "text", "radiology")
OMICS_ENCODERS = ("snn", "pathways", "families")
TASKS = ("classification", "survival", "cox")


def uses_patch_tokens(fusion: nn.Module, patch_modality: str = "wsi") -> bool:
    """Whether a fusion consumes the patch tokens of ``patch_modality`` itself (token-level fusion).

    The rule is the fusion's own ``patch_modality`` attribute: co-attention, pathway cross-attention and bi-cross
    attention declare the modality whose (many) tokens they attend over, and get the projected patches
    ``[B, N, D]``. A fusion without it (concat, Kronecker, low-rank: they pool each modality to a vector) gets the
    MIL aggregator's bag embedding as a single token ``[B, 1, D]`` instead, which beats the plain mean those
    fusions would otherwise take over the patches.

    Args:
        fusion: a fusion module.
        patch_modality: the modality holding the patch bag.

    Returns:
        True when ``fusion.patch_modality == patch_modality``.
    """
    return getattr(fusion, "patch_modality", None) == patch_modality


def _scatter_rows(values: Tensor, rows: Tensor, batch_size: int) -> Tensor:
    """Place ``values [R, ...]`` at rows ``rows [R]`` of a zero tensor ``[B, ...]`` (differentiable)."""
    out = values.new_zeros(batch_size, *values.shape[1:])
    return out.index_copy(0, rows, values)


class MultimodalModel(nn.Module):
    """Multimodal model for computational pathology: token encoders per modality -> fusion -> task head.

    Each modality is encoded to tokens of the shared width ``dim`` with a bool mask:

    - ``wsi`` patch features ``[B, N, wsi_dim]``: for a token-level fusion (see :func:`uses_patch_tokens`) a
      ``Linear -> ReLU -> Dropout`` projection to ``[B, N, dim]`` (the patch projection of MCAT, Chen et al. 2021,
      https://doi.org/10.1109/ICCV48922.2021.00398); for a vector fusion the MIL aggregator ``aggregator``
      (:func:`monai_ext.networks.mil.registry.build_aggregator`) pools the bag and a linear layer maps its
      embedding to one token ``[B, 1, dim]`` (skipped when the aggregator's ``out_dim`` already is ``dim``).
    - ``omics``: ``"snn"`` (Klambauer et al. 2017, https://arxiv.org/abs/1706.02515) maps a gene vector
      ``[B, G]`` to one token ``[B, 1, dim]``, or pre-grouped genes ``[B, P, Gp]`` to one token per group with
      shared weights ``[B, P, dim]`` (then ``omics_dim = Gp``); ``"pathways"`` (SurvPath, Jaume et al. 2024,
      https://arxiv.org/abs/2304.06819) and ``"families"`` (MCAT) map ``[B, G]`` to one token per gene group
      ``[B, P, dim]`` using ``pathway_gene_index``.
    - ``clinical`` ``[B, C]``: ``Linear -> ReLU -> Dropout -> Linear`` to ``[B, 1, dim]``.
    - ``text`` ``[B, T, text_dim]`` (sentence or prompt embeddings): a linear layer to ``[B, T, dim]``.
    - ``radiology`` ``[B, 1, H, W, D]``: the ``radiology_encoder`` module given (e.g. a MONAI 3D CNN with
      ``out_channels=dim``) must return ``[B, dim]`` or ``[B, 1, dim]``; it only sees the present volumes.

    The tokens and masks go to the fusion ``fusion`` (:func:`monai_ext.networks.fusion.build_fusion`), whose
    embedding ``[B, E]`` feeds the task head: ``"classification"`` (:class:`ClassificationHead`), ``"survival"``
    (:class:`DiscreteHazardHead`, discrete-time hazards) or ``"cox"`` (:class:`CoxHead`).

    Batch contract (what the collate produces; every modality key may be absent for the whole batch):
    ``wsi [B, N, wsi_dim]`` with ``wsi_mask`` bool ``[B, N]`` (valid patches; all slides of a patient form one
    bag, ``wsi_slide_index`` is not used here, see :mod:`monai_ext.networks.hierarchical`), ``omics [B, G]`` or
    ``[B, P, Gp]`` with ``omics_mask [B]``, ``clinical [B, C]`` with ``clinical_mask [B]``, ``text [B, T, E]``
    with ``text_mask [B, T]``, ``radiology [B, 1, H, W, D]`` with ``radiology_mask [B]``. A missing ``<name>_mask``
    key means the modality is present for every sample. Missing modalities are masked, never zero-filled: each
    fusion documents how it treats them. Keys of modalities the model was not built for are ignored.

    Args:
        modalities: modalities the model accepts, among ``MODALITIES``; any subset may be present at run time.
        wsi_dim: patch feature width (needed with ``wsi``).
        dim: shared token width ``D``.
        aggregator: MIL aggregator name for vector fusions (mean, max, abmil, clam_sb, clam_mb, transmil, dsmil);
            unused with a token-level fusion.
        aggregator_kwargs: extra aggregator arguments (default ``hidden_dim=dim``, ``dropout=dropout`` and, for
            classification, ``n_classes`` when the aggregator takes it).
        fusion: fusion name (concat, kronecker, lowrank, coattention, pathway_cross, bicross).
        fusion_kwargs: extra fusion arguments (default ``dropout=dropout``).
        omics_encoder: ``"snn"``, ``"pathways"`` or ``"families"``.
        omics_dim: gene vector width ``G`` (``Gp`` for pre-grouped input); required for ``"snn"``, optional for
            the token encoders (used to validate ``pathway_gene_index``).
        pathway_gene_index: for ``"pathways"`` / ``"families"``, the gene column indices of each group.
        clinical_dim: clinical vector width ``C`` (needed with ``clinical``).
        text_dim: text embedding width (needed with ``text``).
        radiology_encoder: the 3D encoder module (needed with ``radiology``).
        task: ``"classification"``, ``"survival"`` or ``"cox"``.
        n_classes: number of classes for classification.
        n_bins: number of time bins for survival.
        modality_dropout: probability of dropping each modality per sample in training
            (:class:`ModalityDropout`); ``wsi`` is never dropped while ``require_wsi`` holds.
        dropout: default dropout of the encoders, aggregator, fusion and head.
        require_wsi: with ``wsi`` among ``modalities``, refuse a batch without ``wsi`` or with an empty bag
            (ValueError): a slide model must not answer from its bias and the other modalities alone. Set False to
            accept samples without slides (their patch tokens are masked).

    Raises:
        ValueError: for an unknown modality, encoder, task or fusion, or a missing size for a listed modality.
    """

    def __init__(
        self,
        *,
        modalities: Sequence[str],
        wsi_dim: int | None = None,
        dim: int = 256,
        aggregator: str = "abmil",
        aggregator_kwargs: dict[str, Any] | None = None,
        fusion: str = "concat",
        fusion_kwargs: dict[str, Any] | None = None,
        omics_encoder: str = "snn",
        omics_dim: int | None = None,
        pathway_gene_index: Sequence[Sequence[int]] | None = None,
        clinical_dim: int | None = None,
        text_dim: int | None = None,
        radiology_encoder: nn.Module | None = None,
        task: str = "classification",
        n_classes: int = 2,
        n_bins: int = 4,
        modality_dropout: float = 0.0,
        dropout: float = 0.25,
        require_wsi: bool = True,
    ) -> None:
        super().__init__()
        names = self._check_modalities(modalities)
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.modalities = names
        self.dim = dim
        self.task = task
        self.require_wsi = require_wsi and "wsi" in names
        self.fusion = build_fusion(fusion, modalities=names, dim=dim, **{"dropout": dropout, **(fusion_kwargs or {})})
        self.embedding_dim = self.fusion.out_dim
        self.patch_tokens = "wsi" in names and uses_patch_tokens(self.fusion)
        self.encoders = nn.ModuleDict()
        self.aggregator: nn.Module | None = None
        if "wsi" in names:
            self._build_wsi(wsi_dim, aggregator, aggregator_kwargs, task, n_classes, dropout)
        if "omics" in names:
            self.encoders["omics"] = self._build_omics(omics_encoder, omics_dim, pathway_gene_index, dropout)
        self.omics_encoder = omics_encoder
        if "clinical" in names:
            self._require("clinical_dim", clinical_dim, "clinical")
            self.encoders["clinical"] = nn.Sequential(
                nn.Linear(clinical_dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim)
            )
        if "text" in names:
            self._require("text_dim", text_dim, "text")
            self.encoders["text"] = nn.Linear(text_dim, dim)
        if "radiology" in names:
            if radiology_encoder is None:
                raise ValueError(
                    "modality 'radiology' needs radiology_encoder: pass a 3D network mapping [B, 1, H, W, D] to "
                    f"[B, {dim}] (e.g. a MONAI DenseNet121 with spatial_dims=3, out_channels={dim}), or drop it"
                )
            self.encoders["radiology"] = radiology_encoder
        self.head = self._build_head(task, n_classes, n_bins, dropout)
        droppable = [name for name in names if not (name == "wsi" and self.require_wsi)]
        self.modality_dropout: ModalityDropout | None = None
        if modality_dropout > 0.0:
            if not droppable:
                raise ValueError(
                    f"modality_dropout={modality_dropout} has nothing to drop: the only modality is the required "
                    "'wsi'; set modality_dropout=0 or require_wsi=False"
                )
            self.modality_dropout = ModalityDropout(modality_dropout, droppable)

    @staticmethod
    def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
        if isinstance(modalities, str):
            raise ValueError(f"modalities must be a sequence of names, got the string {modalities!r}")
        names = tuple(modalities)
        unknown = sorted(set(names) - set(MODALITIES))
        if not names or unknown or len(set(names)) != len(names):
            raise ValueError(f"modalities must be distinct names among {list(MODALITIES)}, got {list(names)}")
        return names

    @staticmethod
    def _require(arg: str, value: int | None, modality: str) -> None:
        if value is None or value < 1:
            raise ValueError(f"modality {modality!r} needs a positive {arg} (its input width), got {value}")

    def _build_wsi(
        self,
        wsi_dim: int | None,
        aggregator: str,
        aggregator_kwargs: dict[str, Any] | None,
        task: str,
        n_classes: int,
        dropout: float,
    ) -> None:
        self._require("wsi_dim", wsi_dim, "wsi")
        if self.patch_tokens:
            if aggregator_kwargs:
                logger.warning(
                    "aggregator_kwargs %s are ignored: fusion %s attends over the patch tokens itself",
                    sorted(aggregator_kwargs),
                    type(self.fusion).__name__,
                )
            self.encoders["wsi"] = nn.Sequential(nn.Linear(wsi_dim, self.dim), nn.ReLU(), nn.Dropout(dropout))
            return
        kwargs: dict[str, Any] = {"in_dim": wsi_dim, "hidden_dim": self.dim, "dropout": dropout}
        aggregator_class = AGGREGATORS.get(aggregator.lower())
        takes_classes = aggregator_class is not None and "n_classes" in inspect.signature(aggregator_class).parameters
        if task == "classification" and takes_classes:
            kwargs["n_classes"] = n_classes
        self.aggregator = build_aggregator(aggregator, **{**kwargs, **(aggregator_kwargs or {})})
        out_dim = self.aggregator.out_dim
        self.encoders["wsi"] = nn.Identity() if out_dim == self.dim else nn.Linear(out_dim, self.dim)

    def _build_omics(
        self,
        encoder: str,
        omics_dim: int | None,
        pathway_gene_index: Sequence[Sequence[int]] | None,
        dropout: float,
    ) -> nn.Module:
        if encoder not in OMICS_ENCODERS:
            raise ValueError(f"unknown omics_encoder {encoder!r}; choose one of {list(OMICS_ENCODERS)}")
        if encoder == "snn":
            self._require("omics_dim", omics_dim, "omics")
            return SNN(omics_dim, hidden=(self.dim, self.dim), dropout=dropout)
        if not pathway_gene_index:
            raise ValueError(
                f"omics_encoder={encoder!r} needs pathway_gene_index (the gene column indices of each group, e.g. "
                "from monai_ext.data.pathways); use omics_encoder='snn' for a single gene vector"
            )
        if encoder == "pathways":
            return PathwayTokenEncoder(pathway_gene_index, self.dim, dropout=dropout, n_genes=omics_dim)
        return GeneFamilyEncoder(pathway_gene_index, self.dim, dropout=dropout, n_genes=omics_dim)

    def _build_head(self, task: str, n_classes: int, n_bins: int, dropout: float) -> nn.Module:
        if task == "classification":
            return ClassificationHead(self.embedding_dim, n_classes, dropout=dropout)
        if task == "survival":
            return DiscreteHazardHead(self.embedding_dim, n_bins, dropout=dropout)
        return CoxHead(self.embedding_dim, dropout=dropout)

    def forward(self, batch: Mapping[str, Any], *, return_tokens: bool = False) -> dict[str, Any]:
        """Predict from any subset of the modalities.

        Args:
            batch: the batch dict described in the class docstring.
            return_tokens: also return what a distillation needs: ``tokens {name: [B, N_m, D]}``, ``token_masks
                {name: bool [B, N_m]}`` (after modality dropout) and ``modality_embeddings {name: [B, D]}`` (the
                masked mean of each modality's tokens; for ``wsi`` with a vector fusion that is the aggregated
                bag token; zero rows where a sample lacks the modality, see ``token_masks``).

        Returns:
            ``embedding [B, E]`` (the fused embedding) and the task outputs: classification ``logits [B, K]`` and
            ``probs [B, K]``; survival ``logits``, ``hazards``, ``survival [B, T]`` and ``risk [B]``; cox
            ``risk [B]``. With patches in the batch, ``attention [B, N]``: the aggregator's attention (vector
            fusions) or the fusion's patch attention (token fusions; absent when the fusion computes none), a
            distribution over the valid patches of each sample (zero rows for samples without patches). With a
            CLAM aggregator in training and a ``label`` in the batch, ``instance_loss`` (scalar). With a fusion that
            reports them (bi-cross with ``n_prompt_classes``), ``slide_text_similarity [B, K]`` and
            ``slide_text_mask`` bool ``[B, K]``.

        Raises:
            ValueError: for a batch without any of the model's modalities, a sample with no modality present, an
                empty bag or missing ``wsi`` while ``require_wsi``, or wrong shapes.
        """
        tokens, masks, out = self._encode(batch)
        if self.modality_dropout is not None:
            masks = self.modality_dropout(masks)
        fused = self.fusion(tokens, masks)
        embedding = fused["embedding"]
        out["embedding"] = embedding
        patch_attention = fused["attention"].get("wsi") if self.patch_tokens else None
        if patch_attention is not None:
            out["attention"] = patch_attention
        for key in ("slide_text_similarity", "slide_text_mask"):  # bi-cross slide-text alignment (HMF)
            if key in fused:
                out[key] = fused[key]
        out.update(self._apply_head(embedding))
        if return_tokens:
            out["tokens"] = tokens
            out["token_masks"] = masks
            out["modality_embeddings"] = {name: masked_mean(tokens[name], masks[name]) for name in tokens}
        return out

    def _apply_head(self, embedding: Tensor) -> dict[str, Tensor]:
        if self.task == "classification":
            logits = self.head(embedding)
            return {"logits": logits, "probs": torch.softmax(logits, dim=-1)}
        if self.task == "survival":
            return self.head(embedding)
        return {"risk": self.head(embedding)}

    def _encode(self, batch: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
        """Tokens ``{name: [B, N_m, D]}``, masks ``{name: [B, N_m]}`` and early outputs (attention, CLAM loss)."""
        present = [name for name in self.modalities if name in batch]
        if not present:
            raise ValueError(f"the batch has none of the model's modalities {list(self.modalities)}")
        if self.require_wsi and "wsi" not in present:
            raise ValueError(
                "the batch has no 'wsi' but the model requires slides (require_wsi=True); add the patch features "
                "or build the model with require_wsi=False"
            )
        batch_size = batch[present[0]].shape[0]
        tokens: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        out: dict[str, Any] = {}
        for name in present:
            if name == "wsi":
                tokens[name], masks[name] = self._encode_wsi(batch, out)
                continue
            x = batch[name]
            if x.shape[0] != batch_size:
                raise ValueError(f"batch[{name!r}] has batch size {x.shape[0]}, batch[{present[0]!r}] {batch_size}")
            if name == "text":
                if x.ndim != 3:
                    raise ValueError(f"batch['text'] must be token embeddings [B, T, E], got {tuple(x.shape)}")
                mask = self._mask(batch, name, (batch_size, x.shape[1]))
                tokens[name], masks[name] = self.encoders[name](x), mask
                continue
            flag = self._mask(batch, name, (batch_size,))
            token = self._encode_radiology(x, flag) if name == "radiology" else self._encode_vector(name, x)
            tokens[name], masks[name] = token, flag[:, None].expand(-1, token.shape[1])
        has_any = torch.stack([m.any(dim=1) for m in masks.values()], dim=1).any(dim=1)
        if not bool(has_any.all()):
            empty = (~has_any).nonzero().squeeze(1).tolist()
            raise ValueError(
                f"samples {empty} have no modality present (all masks False); a model must not answer from its "
                "bias alone: drop these samples"
            )
        return tokens, masks, out

    def _encode_radiology(self, x: Tensor, present: Tensor) -> Tensor:
        """Volumes ``[B, 1, H, W, D]`` to ``[B, 1, D]``; only present volumes reach the encoder (batch norm safe)."""
        rows = present.nonzero().squeeze(1)
        if len(rows) == 0:
            return x.new_zeros(x.shape[0], 1, self.dim)
        encoded = self.encoders["radiology"](x[rows])
        encoded = encoded.reshape(len(rows), -1)
        if encoded.shape[1] != self.dim:
            raise ValueError(f"radiology_encoder must return [B, {self.dim}], got {tuple(encoded.shape)}")
        return _scatter_rows(encoded, rows, x.shape[0]).unsqueeze(1)

    def _encode_vector(self, name: str, x: Tensor) -> Tensor:
        """Omics or clinical input to tokens ``[B, N_m, D]``."""
        if name == "omics" and x.ndim == 3:
            if self.omics_encoder != "snn":
                raise ValueError(
                    f"pre-grouped omics [B, P, Gp] {tuple(x.shape)} need omics_encoder='snn' (one token per group); "
                    f"{self.omics_encoder!r} takes the gene vector [B, G]"
                )
            return self.encoders[name](x)
        if x.ndim != 2:
            raise ValueError(f"batch[{name!r}] must be [B, features], got {tuple(x.shape)}")
        token = self.encoders[name](x)
        return token if token.ndim == 3 else token.unsqueeze(1)

    def _encode_wsi(self, batch: Mapping[str, Any], out: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Patch tokens ``[B, N, D]`` (token fusions) or the bag token ``[B, 1, D]``; fills ``out["attention"]``."""
        x = batch["wsi"]
        if x.ndim != 3:
            raise ValueError(f"batch['wsi'] must be patch features [B, N, D], got {tuple(x.shape)}")
        mask = self._mask(batch, "wsi", tuple(x.shape[:2]))
        has_patch = mask.any(dim=1)
        if self.require_wsi and not bool(has_patch.all()):
            empty = (~has_patch).nonzero().squeeze(1).tolist()
            raise ValueError(
                f"samples {empty} have an empty slide bag (wsi_mask all False) but the model requires slides "
                "(require_wsi=True); drop them or build the model with require_wsi=False"
            )
        if self.patch_tokens:
            return self.encoders["wsi"](x.masked_fill(~mask[..., None], 0.0)), mask
        assert self.aggregator is not None  # built whenever the fusion takes a bag token
        rows = has_patch.nonzero().squeeze(1)
        kwargs = {}
        if self.training and "label" in batch and "bag_label" in inspect.signature(self.aggregator.forward).parameters:
            kwargs["bag_label"] = batch["label"][rows]
        pooled = self.aggregator(x[rows], mask[rows], **kwargs)
        if "instance_loss" in pooled:
            out["instance_loss"] = pooled["instance_loss"]
        out["attention"] = _scatter_rows(pooled["attention"], rows, x.shape[0])
        token = _scatter_rows(self.encoders["wsi"](pooled["embedding"]), rows, x.shape[0])
        return token.unsqueeze(1), has_patch[:, None]

    @staticmethod
    def _mask(batch: Mapping[str, Any], name: str, shape: tuple[int, ...]) -> Tensor:
        """``batch[name + "_mask"]`` checked against ``shape``, or all True when the key is absent."""
        key = f"{name}_mask"
        device = batch[name].device
        if key not in batch:
            return torch.ones(shape, dtype=torch.bool, device=device)
        mask = batch[key]
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"batch[{key!r}] must be a bool tensor of shape {shape}, got {got}")
        return mask

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

"""ModalTune: modality adapters on a slide encoder, multi-task heads per cohort, soft targets from class text.

Ramanathan et al., "ModalTune: Fine-Tuning Slide-Level Foundation Models with Multi-Modal Information for
Multi-task Learning in Digital Pathology", ICCV 2025, https://arxiv.org/abs/2503.17564.

Each non-slide modality (genomics, clinical, text...) becomes a few tokens (:class:`ModalityTokenizer`). In every
selected block of the slide encoder (:class:`~monai_ext.networks.slide_encoder.SlideEncoder`) a
:class:`ModalityAdapter` injects them into the slide tokens by cross-attention scaled by a zero-initialised gate
``tanh(alpha)``, ``alpha = 0`` (the injector of ViT-Adapter, Chen et al. 2023, https://arxiv.org/abs/2205.08534,
which ModalTune's Modal Adapter follows), and after the block updates the modality tokens from the slide tokens
(the extractor). At step 0 the slide encoder's output is therefore exactly that of the encoder alone, and the
encoder can stay frozen while only adapters and heads train. :class:`ModalTuneModel` puts multi-task heads (e.g.
discrete-time survival + subtype + stage) on the slide embedding and the pooled modality tokens, one set of heads
per cohort (cancer type) plus shared heads for cohorts never seen in training. :func:`class_text_targets` turns
cosine similarities between a slide embedding and class-text embeddings into soft labels (ModalTune encodes
labels as text; use with :func:`monai_ext.losses.multitask.soft_target_kl`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from monai_ext.networks.fusion.layers import FeedForward, MaskedAttention, masked_mean
from monai_ext.networks.heads import ClassificationHead, DiscreteHazardHead
from monai_ext.networks.slide_encoder import SlideEncoder

__all__ = [
    "SHARED_HEADS",
    "TASK_KINDS",
    "CohortTaskHeads",
    "ModalTuneModel",
    "ModalityAdapter",
    "ModalitySpec",
    "ModalityTokenizer",
    "TaskSpec",
    "build_modaltune",
    "class_text_targets",
]

TASK_KINDS = ("classification", "survival")
MODALITY_KINDS = ("vector", "tokens")
SHARED_HEADS = "shared"


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task: its kind and number of outputs.

    Args:
        kind: ``"classification"`` (``n_outputs`` classes, cross-entropy) or ``"survival"`` (``n_outputs``
            discrete time bins, hazards).
        n_outputs: classes or time bins, at least 1.

    Raises:
        ValueError: for an unknown kind or a non-positive size.
    """

    kind: str
    n_outputs: int

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"unknown task kind {self.kind!r}; choose one of {list(TASK_KINDS)}")
        if self.n_outputs < 1:
            raise ValueError(f"a {self.kind} task needs n_outputs >= 1, got {self.n_outputs}")

    @classmethod
    def of(cls, value: TaskSpec | Sequence[Any]) -> TaskSpec:
        """A spec from a ``TaskSpec`` or a ``(kind, n_outputs)`` pair (as written in a JSON config)."""
        if isinstance(value, TaskSpec):
            return value
        kind, n_outputs = value
        return cls(str(kind), int(n_outputs))


@dataclass(frozen=True)
class ModalitySpec:
    """How one modality enters the adapters.

    Args:
        in_dim: input width (``C`` of a vector ``[B, C]``, ``E`` of token embeddings ``[B, T, E]``).
        kind: ``"vector"`` (one vector per sample, mask ``[B]``) or ``"tokens"`` (a token set, mask ``[B, T]``).
        n_tokens: tokens made from a vector (ignored for ``"tokens"``).

    Raises:
        ValueError: for an unknown kind or non-positive sizes.
    """

    in_dim: int
    kind: str = "vector"
    n_tokens: int = 1

    def __post_init__(self) -> None:
        if self.kind not in MODALITY_KINDS:
            raise ValueError(f"unknown modality kind {self.kind!r}; choose one of {list(MODALITY_KINDS)}")
        if self.in_dim < 1 or self.n_tokens < 1:
            raise ValueError(f"in_dim and n_tokens must be positive, got {self.in_dim} and {self.n_tokens}")

    @classmethod
    def of(cls, name: str, value: ModalitySpec | int) -> ModalitySpec:
        """A spec from a width alone: ``text`` is a token set, ``omics`` a vector made into 4 tokens, others 1."""
        if isinstance(value, ModalitySpec):
            return value
        if name == "text":
            return cls(int(value), "tokens")
        return cls(int(value), "vector", 4 if name == "omics" else 1)


def _check_names(names: Sequence[str], what: str) -> None:
    """Names become module keys: non-empty, distinct, no dots."""
    bad = [name for name in names if not isinstance(name, str) or not name or "." in name]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"{what} must be distinct non-empty names without '.', got {list(names)}")


class ModalityTokenizer(nn.Module):
    """Turn one modality into tokens of width ``D`` with a learned modality-type embedding added.

    A vector ``[B, C]`` goes through ``Linear -> GELU -> Dropout -> Linear`` to ``n_tokens`` tokens; a token set
    ``[B, T, E]`` through a linear layer. Missing samples keep an all-False mask (their values are zeroed before
    encoding, so placeholders never leak) and are ignored by every consumer of the tokens.

    Args:
        name: the modality's batch key (named in errors).
        spec: the modality.
        dim: token width ``D``.
        dropout: dropout inside the vector MLP.
    """

    def __init__(self, name: str, spec: ModalitySpec, dim: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.spec = spec
        self.dim = dim
        if spec.kind == "vector":
            self.project: nn.Module = nn.Sequential(
                nn.Linear(spec.in_dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, spec.n_tokens * dim)
            )
        else:
            self.project = nn.Linear(spec.in_dim, dim)
        self.type_embedding = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Tokens and mask of one modality.

        Args:
            x: ``[B, C]`` (vector) or ``[B, T, E]`` (tokens).
            mask: bool ``[B]`` (vector) or ``[B, T]`` (tokens); None means all present.

        Returns:
            ``tokens [B, M, D]`` and ``mask [B, M]`` (``M = n_tokens`` or ``T``).

        Raises:
            ValueError: for shapes that do not match the spec.
        """
        vector = self.spec.kind == "vector"
        expected = (x.shape[0], self.spec.in_dim) if vector else (*x.shape[:2], self.spec.in_dim)
        if tuple(x.shape) != expected:
            layout = "[B, C]" if vector else "[B, T, E]"
            raise ValueError(
                f"batch[{self.name!r}] must be {layout} with width {self.spec.in_dim} ({self.spec.kind} modality), "
                f"got {tuple(x.shape)}"
            )
        mask_shape = tuple(x.shape[:1]) if vector else tuple(x.shape[:2])
        if mask is None:
            mask = torch.ones(mask_shape, dtype=torch.bool, device=x.device)
        if tuple(mask.shape) != mask_shape or mask.dtype != torch.bool:
            raise ValueError(
                f"batch[{self.name + '_mask'!r}] must be bool {mask_shape}, got {mask.dtype} {tuple(mask.shape)}"
            )
        if vector:
            tokens = self.project(x.masked_fill(~mask[:, None], 0.0)).reshape(x.shape[0], self.spec.n_tokens, self.dim)
            mask = mask[:, None].expand(-1, self.spec.n_tokens)
        else:
            tokens = self.project(x.masked_fill(~mask[..., None], 0.0))
        return tokens + self.type_embedding, mask


class ModalityAdapter(nn.Module):
    """Injector and extractor around one slide-encoder block (ModalTune's Modal Adapter, after ViT-Adapter).

    - :meth:`inject` (before the block): ``slide = slide + tanh(alpha) * Attn(LN(slide), LN(modal))`` over the
      valid modality tokens; ``alpha`` (one per channel) starts at 0, so the block first sees exactly the encoder's
      own tokens. A sample without any modality token gets no update.
    - :meth:`extract` (after the block): ``modal = modal + Attn(LN(modal), LN(slide))`` over the valid slide tokens,
      then ``modal = modal + FFN(LN(modal))``; this only changes the modality stream.

    Ramanathan et al. 2025 (https://arxiv.org/abs/2503.17564); Chen et al., ViT-Adapter, ICLR 2023
    (https://arxiv.org/abs/2205.08534).

    Args:
        dim: token width ``D``.
        n_heads: attention heads.
        mlp_ratio: width of the extractor's feed-forward as a multiple of ``D``.
        dropout: attention and feed-forward dropout.
    """

    def __init__(self, dim: int, *, n_heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.inject_query_norm = nn.LayerNorm(dim)
        self.inject_context_norm = nn.LayerNorm(dim)
        self.inject_attention = MaskedAttention(dim, n_heads=n_heads, dropout=dropout)
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.extract_query_norm = nn.LayerNorm(dim)
        self.extract_context_norm = nn.LayerNorm(dim)
        self.extract_attention = MaskedAttention(dim, n_heads=n_heads, dropout=dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio=mlp_ratio, dropout=dropout)

    @property
    def gate(self) -> Tensor:
        """``tanh(alpha)`` ``[D]``: zero at initialisation."""
        return torch.tanh(self.alpha)

    def inject(self, slide: Tensor, modal: Tensor, modal_mask: Tensor) -> Tensor:
        """Update slide tokens ``[B, N, D]`` from modality tokens ``[B, M, D]`` (mask ``[B, M]``); ``[B, N, D]``."""
        update, _ = self.inject_attention(
            self.inject_query_norm(slide), self.inject_context_norm(modal), modal_mask
        )  # [B, N, D], zero for samples without a modality token
        return slide + self.gate * update

    def extract(self, modal: Tensor, slide: Tensor, slide_mask: Tensor) -> Tensor:
        """Update modality tokens ``[B, M, D]`` from the valid slide tokens (mask ``[B, N]``); ``[B, M, D]``."""
        update, _ = self.extract_attention(self.extract_query_norm(modal), self.extract_context_norm(slide), slide_mask)
        modal = modal + update
        return modal + self.ffn(self.ffn_norm(modal))


class _TaskHead(nn.Module):
    """A classification or discrete-time survival head returning a dict of ``[B, K]`` outputs (``risk`` ``[B]``)."""

    def __init__(self, spec: TaskSpec, in_dim: int, dropout: float) -> None:
        super().__init__()
        self.kind = spec.kind
        if spec.kind == "classification":
            self.head: nn.Module = ClassificationHead(in_dim, spec.n_outputs, dropout=dropout)
        else:
            self.head = DiscreteHazardHead(in_dim, spec.n_outputs, dropout=dropout)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.kind == "classification":
            logits = self.head(x)
            return {"logits": logits, "probs": torch.softmax(logits, dim=-1)}
        return self.head(x)


class CohortTaskHeads(nn.Module):
    """Multi-task heads per cohort plus optional shared heads, with per-sample routing.

    Every cohort gets its own head for every task (same output sizes in every cohort: a task means the same label
    set everywhere). Samples are routed by their cohort name; a cohort without its own heads (one never seen in
    training) goes to the shared heads, which the pan-cancer engine trains on every cohort
    (:func:`monai_ext.engines.pancancer.train_pancancer`). Without shared heads an unknown cohort is an error.

    Args:
        in_dim: embedding width ``E``.
        tasks: ``{task name: TaskSpec}``.
        cohorts: cohort names with their own heads (may be empty: shared heads only).
        shared: build the shared heads.
        dropout: dropout on the embedding inside each head.

    Raises:
        ValueError: no tasks, no heads at all, bad names, or a cohort named ``"shared"``.
    """

    def __init__(
        self,
        in_dim: int,
        tasks: Mapping[str, TaskSpec],
        *,
        cohorts: Sequence[str] = (),
        shared: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("CohortTaskHeads needs at least one task, e.g. {'subtype': TaskSpec('classification', 2)}")
        _check_names(list(tasks), "task names")
        _check_names(list(cohorts), "cohort names")
        if SHARED_HEADS in cohorts:
            raise ValueError(f"{SHARED_HEADS!r} is reserved for the shared heads; rename that cohort")
        if not cohorts and not shared:
            raise ValueError("no heads to build: give cohort names or keep shared=True")
        self.tasks = dict(tasks)

        def task_heads() -> nn.ModuleDict:
            return nn.ModuleDict({name: _TaskHead(spec, in_dim, dropout) for name, spec in self.tasks.items()})

        self.cohort_heads = nn.ModuleDict({cohort: task_heads() for cohort in cohorts})
        self.shared = task_heads() if shared else None

    @property
    def cohorts(self) -> tuple[str, ...]:
        """Cohorts with their own heads."""
        return tuple(self.cohort_heads)

    def route(self, cohorts: Sequence[str] | None, batch_size: int) -> list[str]:
        """The head set of each sample: its cohort's, or ``"shared"`` for an unknown cohort or no cohort given.

        Raises:
            ValueError: a wrong number of cohort names, or an unknown cohort without shared heads.
        """
        if cohorts is None:
            cohorts = [SHARED_HEADS] * batch_size
        if isinstance(cohorts, str) or len(cohorts) != batch_size:
            raise ValueError(f"batch['cohort'] must list one cohort name per sample ({batch_size}), got {cohorts!r}")
        routes = [cohort if cohort in self.cohort_heads else SHARED_HEADS for cohort in cohorts]
        if self.shared is None and SHARED_HEADS in routes:
            unknown = sorted({c for c, r in zip(cohorts, routes, strict=True) if r == SHARED_HEADS})
            raise ValueError(f"cohorts {unknown} have no heads (known: {list(self.cohort_heads)}) and shared=False")
        return routes

    def _heads(self, route: str) -> nn.ModuleDict:
        if route == SHARED_HEADS:
            assert self.shared is not None  # route() only names the shared heads when they exist
            return self.shared
        return self.cohort_heads[route]

    def forward(self, embedding: Tensor, cohorts: Sequence[str] | None = None) -> dict[str, Any]:
        """Apply each sample's heads.

        Args:
            embedding: ``[B, E]``.
            cohorts: the cohort of each sample (None: every sample to the shared heads).

        Returns:
            ``{"tasks": {task: outputs}}`` routed per sample, and ``"shared_tasks"`` (the shared heads on every
            sample) when shared heads exist. Outputs per task: classification ``logits``/``probs`` ``[B, K]``;
            survival ``logits``/``hazards``/``survival`` ``[B, T]`` and ``risk [B]``.
        """
        routes = self.route(cohorts, embedding.shape[0])
        groups: dict[str, list[int]] = {}
        for row, route in enumerate(routes):
            groups.setdefault(route, []).append(row)
        shared = None
        if self.shared is not None:
            shared = {name: head(embedding) for name, head in self.shared.items()}
        parts: list[tuple[Tensor, dict[str, dict[str, Tensor]]]] = []
        for route, rows in groups.items():
            index = torch.tensor(rows, device=embedding.device)
            if route == SHARED_HEADS and shared is not None:
                parts.append((index, {task: {k: v[index] for k, v in out.items()} for task, out in shared.items()}))
            else:
                parts.append((index, {name: head(embedding[index]) for name, head in self._heads(route).items()}))
        order = torch.cat([index for index, _ in parts])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        routed = {
            task: {key: torch.cat([outs[task][key] for _, outs in parts])[inverse] for key in parts[0][1][task]}
            for task in self.tasks
        }
        result: dict[str, Any] = {"tasks": routed}
        if shared is not None:
            result["shared_tasks"] = shared
        return result


class ModalTuneModel(nn.Module):
    """A slide encoder with modality adapters and per-cohort multi-task heads (ModalTune).

    ``forward(batch)`` runs the encoder block by block; before each selected block the adapters inject the
    modality tokens, after it they update the modality tokens from the slide tokens (:class:`ModalityAdapter`).
    The head input is ``[slide embedding ; pooled modality tokens]`` ``[B, 2E]``: the pooled vector is the mean of
    the valid modality tokens, or a learned "no modality" vector for a sample without any (never zeros standing in
    for data). With no modalities configured the heads read the slide embedding alone (a fine-tuning baseline).

    Batch contract (as produced by :func:`monai_ext.data.collate.collate_multimodal`): ``wsi [B, N, D_in]`` with
    ``wsi_mask [B, N]`` and optional ``wsi_coords [B, N, 2]``; per modality ``name``: ``[B, C]`` with
    ``name_mask [B]`` (vector) or ``[B, T, E]`` with ``name_mask [B, T]`` (tokens); a missing mask key means
    present, a missing modality key means absent for the whole batch; ``cohort``: list of ``B`` cohort names
    (optional, see :class:`CohortTaskHeads`).

    Args:
        encoder: the slide encoder (e.g. :meth:`SlideEncoder.from_pretrained`).
        modalities: ``{name: ModalitySpec or input width}`` (see :meth:`ModalitySpec.of`); may be empty.
        tasks: ``{name: TaskSpec or (kind, n_outputs)}``, e.g. ``{"survival": ("survival", 4), "subtype":
            ("classification", 2), "stage": ("classification", 4)}``.
        cohorts: cohorts with their own heads.
        shared_heads: also build shared heads (used for unseen cohorts).
        adapter_blocks: indices of the encoder blocks that get an adapter (default: all).
        n_heads: attention heads of the adapters.
        mlp_ratio: feed-forward width of the adapters.
        dropout: dropout in tokenizers, adapters and heads.
        freeze_encoder: freeze the encoder (no gradients, kept in eval mode): only tokenizers, adapters and heads
            train, as in ModalTune.

    Raises:
        ValueError: bad names, specs or block indices.
    """

    def __init__(
        self,
        *,
        encoder: SlideEncoder,
        modalities: Mapping[str, ModalitySpec | int],
        tasks: Mapping[str, TaskSpec | Sequence[Any]],
        cohorts: Sequence[str] = (),
        shared_heads: bool = True,
        adapter_blocks: Sequence[int] | None = None,
        n_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        freeze_encoder: bool = True,
    ) -> None:
        super().__init__()
        _check_names(list(modalities), "modality names")
        if "wsi" in modalities:
            raise ValueError("'wsi' is the slide encoder's input; list only the other modalities in modalities")
        self.encoder = encoder
        dim = encoder.out_dim
        self.specs = {name: ModalitySpec.of(name, value) for name, value in modalities.items()}
        self.tasks = {name: TaskSpec.of(value) for name, value in tasks.items()}
        self.tokenizers = nn.ModuleDict(
            {name: ModalityTokenizer(name, spec, dim, dropout=dropout) for name, spec in self.specs.items()}
        )
        n_blocks = len(encoder.blocks)
        blocks = list(range(n_blocks)) if adapter_blocks is None else sorted(set(adapter_blocks))
        if any(not 0 <= i < n_blocks for i in blocks):
            raise ValueError(f"adapter_blocks must be block indices in [0, {n_blocks - 1}], got {list(blocks)}")
        self.adapters = nn.ModuleDict(
            {str(i): ModalityAdapter(dim, n_heads=n_heads, mlp_ratio=mlp_ratio, dropout=dropout) for i in blocks}
            if self.specs
            else {}
        )
        self.no_modality = nn.Parameter(torch.randn(dim) * 0.02) if self.specs else None
        self.embedding_dim = 2 * dim if self.specs else dim
        self.heads = CohortTaskHeads(
            self.embedding_dim, self.tasks, cohorts=cohorts, shared=shared_heads, dropout=dropout
        )
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> ModalTuneModel:
        """Set training mode; a frozen encoder stays in eval mode (its dropout off, as a fixed feature map)."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def _modal_tokens(self, batch: Mapping[str, Any], batch_size: int) -> tuple[Tensor, Tensor] | None:
        """All present modalities' tokens ``[B, M, D]`` and mask ``[B, M]``, or None when the batch has none."""
        tokens, masks = [], []
        for name, tokenizer in self.tokenizers.items():
            if name not in batch:
                continue
            x = batch[name]
            if x.shape[0] != batch_size:
                raise ValueError(f"batch[{name!r}] has batch size {x.shape[0]}, batch['wsi'] {batch_size}")
            t, m = tokenizer(x, batch.get(f"{name}_mask"))
            tokens.append(t)
            masks.append(m)
        if not tokens:
            return None
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Predict every task for every sample.

        Args:
            batch: see the class docstring.

        Returns:
            what :meth:`embed` returns, plus ``tasks`` and ``shared_tasks`` (see :meth:`CohortTaskHeads.forward`).

        Raises:
            ValueError: no ``wsi``, empty bags, or malformed modality inputs.
        """
        out = self.embed(batch)
        out.update(self.heads(out["embedding"], batch.get("cohort")))
        return out

    def embed(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The adapted slide encoding, before any head.

        Args:
            batch: see the class docstring.

        Returns:
            ``embedding [B, E_head]`` (head input), ``slide_embedding [B, E]`` (the adapted encoder's class token),
            ``patch_tokens [B, N, E]``.

        Raises:
            ValueError: no ``wsi``, empty bags, or malformed modality inputs.
        """
        if "wsi" not in batch:
            raise ValueError("ModalTune needs batch['wsi'] (patch features [B, N, D]): the slide encoder is its core")
        x = batch["wsi"]
        tokens, token_mask = self.encoder.embed(x, batch.get("wsi_mask"), batch.get("wsi_coords"))
        modal = self._modal_tokens(batch, x.shape[0])
        for i, block in enumerate(self.encoder.blocks):
            adapter = self.adapters[str(i)] if modal is not None and str(i) in self.adapters else None
            if adapter is not None:
                tokens = adapter.inject(tokens, modal[0], modal[1])
            tokens = block(tokens, token_mask)
            if adapter is not None:
                modal = (adapter.extract(modal[0], tokens, token_mask), modal[1])
        slide = self.encoder.readout(tokens, token_mask)
        embedding = slide["embedding"]
        if self.no_modality is not None:
            missing = self.no_modality.to(embedding.dtype).expand(embedding.shape[0], -1)
            if modal is not None:
                present = modal[1].any(dim=1, keepdim=True)
                missing = torch.where(present, masked_mean(modal[0], modal[1]), missing)
            embedding = torch.cat([embedding, missing], dim=1)
        return {"embedding": embedding, "slide_embedding": slide["embedding"], "patch_tokens": slide["tokens"]}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that require gradients (adapters, tokenizers and heads when the encoder is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]


def build_modaltune(
    *,
    wsi_dim: int,
    tasks: Mapping[str, TaskSpec | Sequence[Any]],
    modalities: Mapping[str, ModalitySpec | int] | None = None,
    cohorts: Sequence[str] = (),
    dim: int = 128,
    depth: int = 2,
    encoder_heads: int = 4,
    encoder_weights: str | Path | None = None,
    encoder_key: str | None = None,
    **kwargs: Any,
) -> ModalTuneModel:
    """Build a ModalTune model from plain arguments (for method registries and JSON configs).

    Args:
        wsi_dim: patch feature width.
        tasks: ``{name: (kind, n_outputs)}``.
        modalities: ``{name: input width or ModalitySpec}`` (default none).
        cohorts: cohorts with their own heads.
        dim: slide encoder width.
        depth: slide encoder blocks.
        encoder_heads: slide encoder attention heads.
        encoder_weights: a LOCAL state dict for the encoder (None: random initialisation).
        encoder_key: the checkpoint entry holding the encoder state dict, if any.
        kwargs: further :class:`ModalTuneModel` arguments (``adapter_blocks``, ``freeze_encoder``, ``dropout``...).

    Returns:
        the model.
    """
    architecture = {"in_dim": wsi_dim, "dim": dim, "depth": depth, "n_heads": encoder_heads}
    if encoder_weights is None:
        encoder = SlideEncoder(**architecture)
    else:
        encoder = SlideEncoder.from_pretrained(encoder_weights, key=encoder_key, **architecture)
    return ModalTuneModel(encoder=encoder, modalities=modalities or {}, tasks=tasks, cohorts=cohorts, **kwargs)


def class_text_targets(embedding: Tensor, class_text: Tensor, *, temperature: float = 0.07) -> Tensor:
    """Soft labels from cosine similarities between slide embeddings and class-text embeddings.

    ``p[b, k] = softmax_k(cos(embedding_b, t_k) / temperature)``, with ``t_k`` the class-text embedding, or the
    mean of the L2-normalised prompt embeddings of class ``k`` when several prompts are given (CLIP prompt
    ensembling, Radford et al. 2021, https://arxiv.org/abs/2103.00020). The embedding must live in the text space
    (e.g. a TITAN slide embedding, aligned with reports). ModalTune encodes labels as text,
    https://arxiv.org/abs/2503.17564.

    Args:
        embedding: ``[B, E]``.
        class_text: ``[K, E]`` or ``[K, P, E]`` (``P`` prompts per class).
        temperature: softmax temperature (> 0).

    Returns:
        ``[B, K]`` rows summing to 1.

    Raises:
        ValueError: for mismatched widths or a non-positive temperature.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if embedding.ndim != 2 or class_text.ndim not in (2, 3) or class_text.shape[-1] != embedding.shape[-1]:
        raise ValueError(
            f"embedding must be [B, E] and class_text [K, E] or [K, P, E] with the same E, got "
            f"{tuple(embedding.shape)} and {tuple(class_text.shape)}"
        )
    text = F.normalize(class_text, dim=-1)
    if text.ndim == 3:
        text = F.normalize(text.mean(dim=1), dim=-1)
    similarity = F.normalize(embedding, dim=-1) @ text.T  # [B, K]
    return torch.softmax(similarity / temperature, dim=-1)

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

"""A TorchScript-exportable wrapper for the dict-in, dict-out multimodal networks of the bundles.

The multimodal networks take a batch dict with optional modalities and are not scriptable as written (keyword
arguments, mappings of modules, Python-side checks). :class:`ExportableNetwork` wraps one so that MONAI's
``ckpt_export`` (which calls ``torch.jit.script``) works unchanged:

- in eager mode it *is* the wrapped network: ``forward(batch)`` calls it, and its ``state_dict`` /
  ``load_state_dict`` are the wrapped network's (same keys, no prefix), so checkpoints of the plain network load
  into the wrapper and back;
- ``torch.jit.script(wrapper)`` scripts a small module whose ``forward(batch: Dict[str, Tensor])`` fills absent
  modalities with zeros and a False mask (what "missing" means to every fusion) and calls a trace of the network
  taken with a padded two-patient example batch; the result takes and returns the same dicts as the eager
  network (tensor values only).

The trace records the network for the batch layout of the example (every modality key present, with masks);
data-dependent Python branches of the network (input checks) are frozen at their values for valid inputs, so the
TorchScript model does not repeat the eager model's input validation. ``tests/bundles`` checks that exported and
eager outputs agree on demo samples with other bag sizes and with missing modalities.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from monai_ext.networks.hierarchical import SlideToPatientModel

__all__ = ["ExportableNetwork", "example_batch"]

TOKEN_MODALITIES = ("wsi", "text")
VECTOR_MODALITIES = ("omics", "clinical")


def example_batch(
    modalities: Sequence[str],
    input_dims: Mapping[str, int],
    *,
    slide_index: bool = False,
    seed: int = 0,
    n_text_tokens: int = 3,
) -> dict[str, Tensor]:
    """A random two-patient batch with every input key: the second bag padded, two slides per patient.

    Args:
        modalities: modalities of the network.
        input_dims: feature width of each modality (``wsi``: patch features ``D``, ``omics``: genes ``G``,
            ``clinical``: ``C``, ``text``: embedding ``E``).
        slide_index: add ``wsi_slide_index`` (slide of each patch, for slide -> patient networks).
        seed: seed of the random values.
        n_text_tokens: text tokens ``T`` per patient (class prompts need a multiple of the number of classes).

    Returns:
        ``wsi [2, 24, D]``, ``wsi_mask [2, 24]`` (second bag: 17 real patches), optionally ``wsi_slide_index``,
        ``omics [2, G]``, ``clinical [2, C]`` with masks ``[2]``, ``text [2, T, E]`` with ``text_mask [2, T]``.
    """
    generator = torch.Generator().manual_seed(seed)
    batch: dict[str, Tensor] = {}
    if "wsi" in modalities:
        n_patches = 24
        batch["wsi"] = torch.randn(2, n_patches, input_dims["wsi"], generator=generator)
        mask = torch.ones(2, n_patches, dtype=torch.bool)
        mask[1, 17:] = False
        batch["wsi_mask"] = mask
        if slide_index:
            index = (torch.arange(n_patches) >= n_patches // 2).long().repeat(2, 1)
            index[1, 8:17] = 1
            index[1, 17:] = -1
            batch["wsi_slide_index"] = index
            batch["wsi"][1, 17:] = 0.0
    for name in VECTOR_MODALITIES:
        if name in modalities:
            batch[name] = torch.randn(2, input_dims[name], generator=generator)
            batch[f"{name}_mask"] = torch.ones(2, dtype=torch.bool)
    if "text" in modalities:
        batch["text"] = torch.randn(2, n_text_tokens, input_dims["text"], generator=generator)
        batch["text_mask"] = torch.ones(2, n_text_tokens, dtype=torch.bool)
    return batch


def _text_tokens(network: nn.Module) -> int:
    """Text tokens of the example batch: 3, or two per class where a fusion splits the text into class prompts."""
    classes = [module.n_prompt_classes for module in network.modules() if getattr(module, "n_prompt_classes", None)]
    return 2 * int(classes[0]) if classes else 3


class _TensorOutputs(nn.Module):
    """The network with its tensor outputs only (what a trace can return)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        output = self.network(batch)
        return {key: value for key, value in output.items() if isinstance(value, Tensor)}


def _with_mask(batch: dict[str, Tensor], full: dict[str, Tensor], name: str, mask_shape: list[int], width: int) -> None:
    """Copy ``name`` and its mask into ``full``; an absent modality becomes zeros with a False mask."""
    wsi = batch["wsi"]
    mask_key = name + "_mask"
    if name in batch:
        full[name] = batch[name]
        if mask_key in batch:
            full[mask_key] = batch[mask_key]
        else:
            full[mask_key] = torch.ones(batch[name].shape[: len(mask_shape)], dtype=torch.bool, device=wsi.device)
    else:
        full[name] = torch.zeros(mask_shape + [width], dtype=wsi.dtype, device=wsi.device)  # noqa: RUF005 - TorchScript has no list unpacking
        full[mask_key] = torch.zeros(mask_shape, dtype=torch.bool, device=wsi.device)


class _ScriptedNetwork(nn.Module):
    """The scriptable side: completes the batch dict (absent modality: zeros, False mask), calls the trace."""

    def __init__(
        self,
        traced: torch.jit.ScriptModule,
        modalities: Sequence[str],
        input_dims: Mapping[str, int],
        slide_index: bool,
    ) -> None:
        super().__init__()
        self.traced = traced
        self.has_omics = "omics" in modalities
        self.has_clinical = "clinical" in modalities
        self.has_text = "text" in modalities
        self.omics_dim = int(input_dims.get("omics", 0))
        self.clinical_dim = int(input_dims.get("clinical", 0))
        self.text_dim = int(input_dims.get("text", 0))
        self.slide_index = slide_index

    def complete(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every input key of the trace: given values, or zeros with False masks for absent modalities."""
        wsi = batch["wsi"]
        size, n_patches = wsi.shape[0], wsi.shape[1]
        full: dict[str, Tensor] = {"wsi": wsi}
        if "wsi_mask" in batch:
            full["wsi_mask"] = batch["wsi_mask"]
        else:
            full["wsi_mask"] = torch.ones(size, n_patches, dtype=torch.bool, device=wsi.device)
        if self.slide_index:
            if "wsi_slide_index" in batch:
                full["wsi_slide_index"] = batch["wsi_slide_index"]
            else:
                full["wsi_slide_index"] = torch.zeros(size, n_patches, dtype=torch.long, device=wsi.device)
        if self.has_omics:
            _with_mask(batch, full, "omics", [size], self.omics_dim)
        if self.has_clinical:
            _with_mask(batch, full, "clinical", [size], self.clinical_dim)
        if self.has_text:
            _with_mask(batch, full, "text", [size, 1], self.text_dim)
        return full

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Run the traced network on ``batch`` (``wsi`` required; other modalities and masks optional)."""
        return self.traced(self.complete(batch))


class _PatientHead(nn.Module):
    """The patient part of :class:`~monai_ext.networks.hierarchical.SlideToPatientModel` on its slides' outputs,
    with the same modules and the same operations (scriptable)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.slide_projection = network.slide_projection
        self.slide_pool = network.slide_pool
        self.patient_head = network.patient_head

    def forward(self, slide_logits: Tensor, slide_embedding: Tensor, slide_mask: Tensor) -> dict[str, Tensor]:
        """``slide_logits [B, S, K]``, ``slide_embedding [B, S, E]`` (zero at empty slots), ``slide_mask [B, S]``."""
        slide_probs = torch.softmax(slide_logits, dim=-1) * slide_mask.unsqueeze(-1)
        pooled, slide_weights = self.slide_pool(self.slide_projection(slide_embedding), slide_mask)
        logits = self.patient_head(torch.cat([pooled, slide_probs.sum(dim=1)], dim=-1))
        return {
            "logits": logits,
            "probs": torch.softmax(logits, dim=-1),
            "embedding": pooled,
            "slide_logits": slide_logits,
            "slide_probs": slide_probs,
            "slide_embedding": slide_embedding,
            "slide_mask": slide_mask,
            "slide_weights": slide_weights,
        }


class _ScriptedSlideToPatient(nn.Module):
    """Slide -> patient networks: each slide bag through the traced slide model, then the scripted patient head."""

    def __init__(self, inputs: _ScriptedNetwork, head: _PatientHead, n_slide_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.inputs = inputs
        self.head = head
        self.n_slide_classes = n_slide_classes
        self.embedding_dim = embedding_dim

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Stage the slides and the patients of ``batch`` (``wsi`` and ``wsi_slide_index`` as in eager mode)."""
        full = self.inputs.complete(batch)
        wsi, mask, index = full["wsi"], full["wsi_mask"], full["wsi_slide_index"]
        size, n_patches = wsi.shape[0], wsi.shape[1]
        n_slots = int(index[mask].max()) + 1
        slide_logits = wsi.new_zeros(size, n_slots, self.n_slide_classes)
        slide_embedding = wsi.new_zeros(size, n_slots, self.embedding_dim)
        slide_mask = torch.zeros(size, n_slots, dtype=torch.bool, device=wsi.device)
        patch_attention = wsi.new_zeros(size, n_patches)
        for b in range(size):
            for slot in range(n_slots):
                rows = ((index[b] == slot) & mask[b]).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                slide: dict[str, Tensor] = {
                    "wsi": wsi[b, rows].unsqueeze(0),
                    "wsi_mask": torch.ones(1, rows.numel(), dtype=torch.bool, device=wsi.device),
                }
                for key, value in full.items():
                    if not key.startswith("wsi"):
                        slide[key] = value[b : b + 1]
                out = self.inputs.traced(slide)
                slide_logits[b, slot] = out["logits"][0]
                slide_embedding[b, slot] = out["embedding"][0]
                slide_mask[b, slot] = True
                if "attention" in out:
                    patch_attention[b, rows] = out["attention"][0]
        result = self.head(slide_logits, slide_embedding, slide_mask)
        weight = result["slide_weights"].gather(1, index.clamp(min=0)) * mask
        result["slide_patch_attention"] = patch_attention
        result["attention"] = patch_attention * weight
        return result


class ExportableNetwork(nn.Module):
    """A multimodal network that ``torch.jit.script`` (and so MONAI's ``ckpt_export``) can export.

    Eager calls, ``state_dict`` and ``load_state_dict`` go straight to ``network``; scripting returns a TorchScript
    module with the same ``forward(batch: Dict[str, Tensor]) -> Dict[str, Tensor]`` (see the module docstring).

    Args:
        network: a network taking the batch dict of :func:`monai_ext.data.collate.collate_multimodal` (e.g.
            :class:`~monai_ext.networks.multimodal.MultimodalModel` or
            :class:`~monai_ext.networks.hierarchical.SlideToPatientModel`) and returning a dict of tensors.
        modalities: its modalities among ``wsi``, ``omics``, ``clinical``, ``text`` (export needs ``wsi``).
        input_dims: the feature width of each modality (``wsi``: ``D``, ``omics``: ``G``, ``clinical``: ``C``,
            ``text``: ``E``), e.g. ``data_spec.json``'s ``input_dims``.
        slide_index: the network reads ``wsi_slide_index`` (slide -> patient networks).

    Raises:
        ValueError: an unsupported modality, or a width not given.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        modalities: Sequence[str],
        input_dims: Mapping[str, int],
        slide_index: bool = False,
    ) -> None:
        super().__init__()
        names = tuple(modalities)
        unknown = sorted(set(names) - {*TOKEN_MODALITIES, *VECTOR_MODALITIES})
        if unknown:
            raise ValueError(f"ExportableNetwork supports {[*TOKEN_MODALITIES, *VECTOR_MODALITIES]}; got {names}")
        missing = [name for name in names if int(input_dims.get(name) or 0) < 1]
        if missing:
            raise ValueError(f"input_dims needs a positive width for {missing}, got {dict(input_dims)}")
        self.network = network
        self.modalities = names
        self.input_dims = {name: int(input_dims[name]) for name in names}
        self.slide_index = slide_index

    def forward(self, batch: Mapping[str, Any]) -> Any:
        """The wrapped network's output for ``batch``."""
        return self.network(batch)

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """The wrapped network's state dict (no ``network.`` prefix)."""
        return self.network.state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a state dict of the wrapped network (keys without the ``network.`` prefix)."""
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

    def __prepare_scriptable__(self) -> nn.Module:
        """Called by ``torch.jit.script``: the scriptable module around a trace of the network (in eval mode).

        Raises:
            ValueError: the network has no ``wsi`` input (the exported model reads the batch size from it).
        """
        if "wsi" not in self.modalities:
            raise ValueError(f"export needs a network with slides ('wsi'); this one takes {self.modalities}")
        self.network.eval()
        if isinstance(self.network, SlideToPatientModel):
            return self._script_slide_to_patient()
        example = example_batch(
            self.modalities, self.input_dims, slide_index=self.slide_index, n_text_tokens=_text_tokens(self.network)
        )
        traced = _trace(self.network, example)
        return _ScriptedNetwork(traced, self.modalities, self.input_dims, self.slide_index)

    def _script_slide_to_patient(self) -> nn.Module:
        """Trace the slide model on one slide bag; script the split into slides and the patient head."""
        slide_model = self.network.slide_model
        example = example_batch(self.modalities, self.input_dims, n_text_tokens=_text_tokens(slide_model))
        one_slide = {key: value[:1] for key, value in example.items()}  # one unpadded bag, as the loop passes
        traced = _trace(slide_model, one_slide)
        inputs = _ScriptedNetwork(traced, self.modalities, self.input_dims, slide_index=True)
        embedding_dim = int(getattr(slide_model, "embedding_dim", 0))
        return _ScriptedSlideToPatient(inputs, _PatientHead(self.network), self.network.n_slide_classes, embedding_dim)


def _trace(network: nn.Module, example: dict[str, Tensor]) -> torch.jit.ScriptModule:
    """Trace ``network`` (eval mode, tensor outputs only) on the example batch."""
    with torch.no_grad(), warnings.catch_warnings():
        # the input checks' Python branches are frozen on purpose (see the module docstring)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(_TensorOutputs(network.eval()), (example,), strict=False, check_trace=False)

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

__all__ = ["ExportableNetwork", "example_batch"]

TOKEN_MODALITIES = ("wsi", "text")
VECTOR_MODALITIES = ("omics", "clinical")


def example_batch(
    modalities: Sequence[str], input_dims: Mapping[str, int], *, slide_index: bool = False, seed: int = 0
) -> dict[str, Tensor]:
    """A random two-patient batch with every input key: the second bag padded, two slides per patient.

    Args:
        modalities: modalities of the network.
        input_dims: feature width of each modality (``wsi``: patch features ``D``, ``omics``: genes ``G``,
            ``clinical``: ``C``, ``text``: embedding ``E``).
        slide_index: add ``wsi_slide_index`` (slide of each patch, for slide -> patient networks).
        seed: seed of the random values.

    Returns:
        ``wsi [2, 24, D]``, ``wsi_mask [2, 24]`` (second bag: 17 real patches), optionally ``wsi_slide_index``,
        ``omics [2, G]``, ``clinical [2, C]`` with masks ``[2]``, ``text [2, 3, E]`` with ``text_mask [2, 3]``.
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
        batch["text"] = torch.randn(2, 3, input_dims["text"], generator=generator)
        batch["text_mask"] = torch.ones(2, 3, dtype=torch.bool)
    return batch


class _TensorOutputs(nn.Module):
    """The network with its tensor outputs only (what a trace can return)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        output = self.network(batch)
        return {key: value for key, value in output.items() if isinstance(value, Tensor)}


class _ScriptedNetwork(nn.Module):
    """The scriptable side: completes the batch dict (absent modality: zeros, False mask), calls the trace."""

    def __init__(
        self, traced: torch.jit.ScriptModule, modalities: Sequence[str], input_dims: Mapping[str, int]
    ) -> None:
        super().__init__()
        self.traced = traced
        self.has_omics = "omics" in modalities
        self.has_clinical = "clinical" in modalities
        self.has_text = "text" in modalities
        self.omics_dim = int(input_dims.get("omics", 0))
        self.clinical_dim = int(input_dims.get("clinical", 0))
        self.text_dim = int(input_dims.get("text", 0))
        self.slide_index = False

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Run the traced network on ``batch`` (``wsi`` required; other modalities and masks optional)."""
        wsi = batch["wsi"]
        size, n_patches, device = wsi.shape[0], wsi.shape[1], wsi.device
        full: dict[str, Tensor] = {"wsi": wsi}
        if "wsi_mask" in batch:
            full["wsi_mask"] = batch["wsi_mask"]
        else:
            full["wsi_mask"] = torch.ones(size, n_patches, dtype=torch.bool, device=device)
        if self.slide_index:
            if "wsi_slide_index" in batch:
                full["wsi_slide_index"] = batch["wsi_slide_index"]
            else:
                full["wsi_slide_index"] = torch.zeros(size, n_patches, dtype=torch.long, device=device)
        vectors: list[tuple[str, int]] = []
        if self.has_omics:
            vectors.append(("omics", self.omics_dim))
        if self.has_clinical:
            vectors.append(("clinical", self.clinical_dim))
        for name, width in vectors:
            mask_key = name + "_mask"
            if name in batch:
                full[name] = batch[name]
                if mask_key in batch:
                    full[mask_key] = batch[mask_key]
                else:
                    full[mask_key] = torch.ones(size, dtype=torch.bool, device=device)
            else:
                full[name] = torch.zeros(size, width, device=device)
                full[mask_key] = torch.zeros(size, dtype=torch.bool, device=device)
        if self.has_text:
            if "text" in batch:
                full["text"] = batch["text"]
                if "text_mask" in batch:
                    full["text_mask"] = batch["text_mask"]
                else:
                    full["text_mask"] = torch.ones(size, batch["text"].shape[1], dtype=torch.bool, device=device)
            else:
                full["text"] = torch.zeros(size, 1, self.text_dim, device=device)
                full["text_mask"] = torch.zeros(size, 1, dtype=torch.bool, device=device)
        return self.traced(full)


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
        example = example_batch(self.modalities, self.input_dims, slide_index=self.slide_index)
        with torch.no_grad(), warnings.catch_warnings():
            # the input checks' Python branches are frozen on purpose (see the module docstring)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(_TensorOutputs(self.network), (example,), strict=False, check_trace=False)
        scripted = _ScriptedNetwork(traced, self.modalities, self.input_dims)
        scripted.slide_index = self.slide_index
        return scripted

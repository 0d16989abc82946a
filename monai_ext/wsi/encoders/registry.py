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

"""Patch encoders by name: what each one is (:class:`EncoderSpec`), how to build it, and the module that runs it.

:func:`build_encoder` returns a frozen :class:`PatchEncoder` that takes raw patches (uint8 0..255 or float 0..1, any
size), resizes and normalises them the way the model expects, and returns float32 features. Its
:attr:`PatchEncoder.identity` (``name@sha256-prefix``) is what feature files record, so features from different
weights never mix.

Only ``builtin_cnn`` runs without a weights file. Every other encoder needs a local copy of its released weights
(the paths to request them are in each spec's ``source``); nothing is downloaded. Architectures are plain PyTorch
with timm's parameter names (neither timm nor torchvision is imported).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from monai_ext.wsi.encoders.builtin import BuiltinCNN
from monai_ext.wsi.encoders.resnet import ResNetTrunk
from monai_ext.wsi.encoders.vit import VisionTransformerTrunk
from monai_ext.wsi.encoders.weights import clean_state_dict, load_into, load_state_dict_file

logger = logging.getLogger(__name__)

ArchKind = Literal["builtin_cnn", "resnet_trunc", "vit"]
ARCHITECTURES: Mapping[str, type[nn.Module]] = MappingProxyType(
    {"builtin_cnn": BuiltinCNN, "resnet_trunc": ResNetTrunk, "vit": VisionTransformerTrunk}
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS0_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS0_STD = (0.211883, 0.230117, 0.177517)
FLOAT_INPUT_MAX = 1.0 + 1e-3


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to build one patch encoder and to describe it in a config file.

    Attributes:
        name: registry name.
        arch: trunk family, a key of :data:`ARCHITECTURES`.
        arch_kwargs: keyword arguments of the trunk's constructor (read-only).
        feature_dim: output width; checked against the built trunk.
        input_size: side in pixels the trunk sees; inputs of another size are resized.
        mean: per-channel RGB mean on the 0..1 scale, as the model's authors publish it.
        std: per-channel RGB standard deviation on the 0..1 scale.
        requires_weights: whether a weights file is needed (``allow_random=True`` overrides it for tests).
        ignore_prefixes: checkpoint keys dropped before the strict load, besides ``head.*`` and ``fc.*``.
        paper: link to the method's publication.
        source: where users obtain the weights (by hand; nothing here downloads).
        notes: free text for the config file.
    """

    name: str
    arch: ArchKind
    arch_kwargs: Mapping[str, Any]
    feature_dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    requires_weights: bool
    ignore_prefixes: tuple[str, ...] = ()
    paper: str = ""
    source: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"encoder {self.name!r}: unknown arch {self.arch!r}; use one of {sorted(ARCHITECTURES)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(
                f"encoder {self.name!r}: mean and std need 3 values each, std > 0 (got {self.mean}, {self.std})"
            )
        object.__setattr__(self, "arch_kwargs", MappingProxyType(dict(self.arch_kwargs)))

    def to_config(self) -> dict[str, Any]:
        """The fields written to ``configs/encoders/<name>.json``."""
        return {
            "name": self.name,
            "arch": self.arch,
            "feature_dim": self.feature_dim,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "notes": self.notes,
        }


class PatchEncoder(nn.Module):
    """A frozen trunk with its own preprocessing: raw patches in, float32 features out.

    Args:
        trunk: module mapping normalised ``[B, 3, input_size, input_size]`` to ``[B, feature_dim]``.
        name: encoder name.
        feature_dim: output width.
        input_size: side in pixels the trunk expects.
        mean: per-channel RGB mean (0..1 scale).
        std: per-channel RGB standard deviation (0..1 scale).
        weights_sha256: SHA-256 of the weights file, or ``"seed<k>"`` for seeded random weights.
    """

    def __init__(
        self,
        trunk: nn.Module,
        *,
        name: str,
        feature_dim: int,
        input_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        weights_sha256: str,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.name = name
        self.feature_dim = feature_dim
        self.input_size = input_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.weights_sha256 = weights_sha256
        mean_rgb = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_rgb = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale_rgb", 1.0 / std_rgb, persistent=False)
        self.register_buffer("shift_rgb", -mean_rgb / std_rgb, persistent=False)

    @property
    def identity(self) -> str:
        """``"<name>@<first 16 characters of weights_sha256>"``, the string feature files store."""
        return f"{self.name}@{self.weights_sha256[:16]}"

    def extra_repr(self) -> str:
        return f"identity={self.identity!r}, feature_dim={self.feature_dim}, input_size={self.input_size}"

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Scale to 0..1, resize to ``input_size`` (bilinear, antialiased) when needed, normalise.

        Args:
            x: ``[B, 3, H, W]`` uint8 (0..255) or floating point (0..1), any memory format.

        Returns:
            ``[B, 3, input_size, input_size]`` in the buffers' dtype, normalised with the model's mean and std.

        Raises:
            ValueError: wrong shape or dtype, or floats above 1 (0..255 values passed as floats).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected RGB patches [B, 3, H, W], got shape {tuple(x.shape)}")
        dtype = self.scale_rgb.dtype
        source = x
        if x.dtype == torch.uint8:
            x = x.to(dtype)
            scale = self.scale_rgb / 255.0
        elif x.is_floating_point():
            if x.numel() and float(x.amax()) > FLOAT_INPUT_MAX:
                raise ValueError(
                    f"{self.name}: float patches must lie in [0, 1], got max {float(x.amax()):.3g}; "
                    f"pass uint8 0..255 patches or divide by 255"
                )
            x = x.to(dtype)
            scale = self.scale_rgb
        else:
            raise ValueError(f"{self.name}: patches must be uint8 (0..255) or float (0..1), got {x.dtype}")
        size = (self.input_size, self.input_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        # (x - mean) / std as one scale and one shift, in place unless x is still the caller's tensor
        x = x * scale if x is source else x.mul_(scale)
        return x.add_(self.shift_rgb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode patches.

        Args:
            x: ``[B, 3, H, W]`` uint8 (0..255) or floating point (0..1).

        Returns:
            ``[B, feature_dim]`` float32 features.
        """
        return self.trunk(self.preprocess(x)).float()


def _vit(**kwargs: Any) -> dict[str, Any]:
    base = {"img_size": 224, "init_values": 1e-5, "reg_tokens": 0, "no_embed_class": False, "pool": "token"}
    return {**base, **kwargs}


_SPECS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            name="builtin_cnn",
            arch="builtin_cnn",
            arch_kwargs={"channels": (32, 64, 128), "stem_stride": 8},
            feature_dim=128,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            requires_weights=False,
            paper="https://doi.org/10.1109/ICCV.2009.5459469",
            notes="Small CNN with seeded random weights (no weights file; identity builtin_cnn@seed<k>). For the demo, "
            "tests and CPU-only runs; use a pretrained encoder for real cohorts.",
        ),
        EncoderSpec(
            name="resnet50_trunc",
            arch="resnet_trunc",
            arch_kwargs={"blocks": (3, 4, 6), "base_width": 64},
            feature_dim=1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            requires_weights=True,
            ignore_prefixes=("layer4.",),
            paper="https://doi.org/10.1038/s41551-020-00682-w",
            source="ImageNet ResNet-50 state_dict from timm 'resnet50.tv_in1k' or torchvision 'IMAGENET1K_V1'",
            notes="ResNet-50 up to layer3 + global average pool, as in CLAM. Loads a full timm/torchvision resnet50 "
            "state_dict (layer4.* and fc.* are dropped).",
        ),
        EncoderSpec(
            name="uni",
            arch="vit",
            arch_kwargs=_vit(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, mlp_kind="gelu"),
            feature_dim=1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            requires_weights=True,
            paper="https://doi.org/10.1038/s41591-024-02857-3",
            source="https://huggingface.co/MahmoodLab/UNI (pytorch_model.bin, gated)",
            notes="ViT-L/16, LayerScale 1e-5, class token (timm vit_large_patch16_224, init_values=1e-5).",
        ),
        EncoderSpec(
            name="uni2_h",
            arch="vit",
            arch_kwargs=_vit(
                patch_size=14,
                embed_dim=1536,
                depth=24,
                num_heads=24,
                mlp_ratio=2.66667 * 2,
                mlp_kind="swiglu_packed",
                reg_tokens=8,
                no_embed_class=True,
            ),
            feature_dim=1536,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            requires_weights=True,
            paper="https://doi.org/10.1038/s41591-024-02857-3",
            source="https://huggingface.co/MahmoodLab/UNI2-h (pytorch_model.bin, gated)",
            notes="ViT-H/14-style: width 1536, depth 24, 24 heads, packed SwiGLU (fc1 8192), 8 register tokens, "
            "no position embedding on prefix tokens, class token (the timm_kwargs of the model card).",
        ),
        EncoderSpec(
            name="gigapath",
            arch="vit",
            arch_kwargs=_vit(
                patch_size=16, embed_dim=1536, depth=40, num_heads=24, mlp_ratio=5.33334, mlp_kind="swiglu_packed"
            ),
            feature_dim=1536,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            requires_weights=True,
            paper="https://doi.org/10.1038/s41586-024-07441-w",
            source="https://huggingface.co/prov-gigapath/prov-gigapath (tile encoder pytorch_model.bin, gated)",
            notes="Prov-GigaPath tile encoder: timm vit_giant_patch14_dinov2 with the release's config overrides "
            "(img_size 224, patch_size 16: the name says /14, the weights are /16), packed SwiGLU, class token. "
            "The authors resize to 256 and centre-crop 224; feed 224 px patches to match.",
        ),
        EncoderSpec(
            name="virchow2",
            arch="vit",
            arch_kwargs=_vit(
                patch_size=14,
                embed_dim=1280,
                depth=32,
                num_heads=16,
                mlp_ratio=5.3375,
                mlp_kind="swiglu_packed",
                reg_tokens=4,
                pool="token_mean",
            ),
            feature_dim=2560,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            requires_weights=True,
            paper="https://arxiv.org/abs/2408.00738",
            source="https://huggingface.co/paige-ai/Virchow2 (pytorch_model.bin or model.safetensors, gated)",
            notes="ViT-H/14 (timm vit_huge_patch14_224), packed SwiGLU (fc1 6832), 4 register tokens; output is "
            "concat(class token, mean of patch tokens), 2560-d, as the model card prescribes.",
        ),
        EncoderSpec(
            name="hoptimus0",
            arch="vit",
            arch_kwargs=_vit(
                patch_size=14,
                embed_dim=1536,
                depth=40,
                num_heads=24,
                mlp_ratio=2.66667 * 2,
                mlp_kind="swiglu_packed",
                reg_tokens=4,
                no_embed_class=True,
            ),
            feature_dim=1536,
            input_size=224,
            mean=HOPTIMUS0_MEAN,
            std=HOPTIMUS0_STD,
            requires_weights=True,
            paper="https://github.com/bioptimus/releases/tree/main/models/h-optimus/v0",
            source="https://huggingface.co/bioptimus/H-optimus-0 (pytorch_model.bin or model.safetensors, gated)",
            notes="ViT-g/14 (timm vit_giant_patch14_reg4_dinov2 at img_size 224), 4 register tokens, class token; "
            "its own mean/std; 224 px patches at 0.5 um/px.",
        ),
    )
}


def list_encoders() -> list[str]:
    """Names accepted by :func:`build_encoder`, sorted."""
    return sorted(_SPECS)


def get_encoder_spec(name: str) -> EncoderSpec:
    """The :class:`EncoderSpec` registered under ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; choose one of {list_encoders()}") from None


def build_trunk(spec: EncoderSpec, *, device: torch.device | str | None = None) -> nn.Module:
    """Instantiate the trunk of ``spec`` with uninitialised (``device="meta"``: storage-free) parameters.

    Args:
        spec: the encoder description.
        device: where the parameters live; ``"meta"`` costs no memory (parameter counts, key names).

    Returns:
        the trunk; call its ``reset_parameters(generator)`` or load a state_dict before use.

    Raises:
        ValueError: the trunk's output width differs from ``spec.feature_dim``.
    """
    with torch.device(device or "meta"):
        trunk = ARCHITECTURES[spec.arch](**spec.arch_kwargs)
    if trunk.feature_dim != spec.feature_dim:
        raise ValueError(
            f"encoder {spec.name!r}: the {spec.arch} trunk outputs {trunk.feature_dim} features but the spec says "
            f"{spec.feature_dim}; fix feature_dim or arch_kwargs"
        )
    return trunk


def build_encoder_from_spec(
    spec: EncoderSpec,
    weights: str | Path | None = None,
    *,
    seed: int = 0,
    allow_random: bool = False,
) -> PatchEncoder:
    """Build a frozen :class:`PatchEncoder` (eval mode, no gradients) on the CPU from a spec.

    Args:
        spec: the encoder description (see :func:`get_encoder_spec`).
        weights: local weights file (``.pth``, ``.pt``, ``.bin``, ``.safetensors``); keys are cleaned with
            :func:`~monai_ext.wsi.encoders.weights.clean_state_dict` and loaded strictly.
        seed: seed of the random weights when ``weights`` is None.
        allow_random: permit random weights for an encoder that normally requires a weights file (tests only: its
            features carry no pretrained knowledge).

    Returns:
        the encoder; ``weights_sha256`` is the file's SHA-256, or ``f"seed{seed}"`` for random weights.

    Raises:
        ValueError: weights needed but not given, or weights that do not fit the architecture.
        FileNotFoundError: the weights file does not exist.
    """
    if weights is None and spec.requires_weights and not allow_random:
        raise ValueError(
            f"encoder {spec.name!r} needs its released weights: pass weights='/path/to/file' (obtain it from "
            f"{spec.source}; nothing is downloaded), or allow_random=True for tests"
        )
    trunk = build_trunk(spec)
    if weights is None:
        trunk = trunk.to_empty(device="cpu")
        trunk.reset_parameters(torch.Generator().manual_seed(seed))
        weights_sha256 = f"seed{seed}"
    else:
        state_dict, weights_sha256 = load_state_dict_file(weights)
        load_into(trunk, clean_state_dict(state_dict, spec.ignore_prefixes), weights, assign=True)
        trunk = trunk.float()
        logger.info("encoder %s loaded from %s", spec.name, weights)
    encoder = PatchEncoder(
        trunk,
        name=spec.name,
        feature_dim=spec.feature_dim,
        input_size=spec.input_size,
        mean=spec.mean,
        std=spec.std,
        weights_sha256=weights_sha256,
    )
    return encoder.eval().requires_grad_(False)


def build_encoder(
    name: str, weights: str | Path | None = None, *, seed: int = 0, allow_random: bool = False
) -> PatchEncoder:
    """Build a registered patch encoder by name; see :func:`build_encoder_from_spec`.

    Args:
        name: one of :func:`list_encoders`.
        weights: local weights file; required for every encoder except ``builtin_cnn``.
        seed: seed of the random weights when ``weights`` is None.
        allow_random: permit random weights for an encoder that normally requires a file (tests only).

    Returns:
        a frozen :class:`PatchEncoder` on the CPU; move it with ``.to(device)``.

    Raises:
        KeyError: unknown name.
        ValueError: weights needed but not given, or weights that do not fit the architecture.
        FileNotFoundError: the weights file does not exist.
    """
    return build_encoder_from_spec(get_encoder_spec(name), weights, seed=seed, allow_random=allow_random)

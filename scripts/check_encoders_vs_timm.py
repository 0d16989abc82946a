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

"""Cross-check our encoder trunks against timm, for sessions where timm is installed (e.g. the GPU machines).

For each encoder, the timm model of the same architecture (built with the kwargs its authors publish) gets seeded
random weights, every tensor perturbed so that LayerScale, norms and BatchNorm statistics all matter. Its state_dict
goes through our own cleaning and strict loading (:func:`clean_state_dict`, :func:`load_into`), exactly as a user's
weights file would, and both models encode the same random patches. The table reports the largest absolute
difference, relative to the largest reference value. ``builtin_cnn`` has no timm counterpart and is not checked.

Usage::

    python scripts/check_encoders_vs_timm.py                      # all, on CUDA when available
    python scripts/check_encoders_vs_timm.py --names=uni,virchow2 --device=cpu --batch=1

Exit status: 0 when every encoder agrees within ``rtol``, 1 otherwise, 2 when timm is not installed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import fire
import torch

from monai_ext.wsi.encoders import PatchEncoder, build_trunk, clean_state_dict, get_encoder_spec, load_into

CHECKED = ("resnet50_trunc", "uni", "uni2_h", "gigapath", "virchow2", "hoptimus0")


def timm_recipes(timm: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """timm model name and keyword arguments per encoder, as published on each model card / config."""
    swiglu = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}
    return {
        "resnet50_trunc": ("resnet50", {}),
        "uni": (
            "vit_large_patch16_224",
            {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
        ),
        "uni2_h": (
            "vit_giant_patch14_224",
            {
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "init_values": 1e-5,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "num_classes": 0,
                "no_embed_class": True,
                "reg_tokens": 8,
                "dynamic_img_size": True,
                **swiglu,
            },
        ),
        "gigapath": (
            "vit_giant_patch14_dinov2",
            {
                "img_size": 224,
                "in_chans": 3,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "init_values": 1e-5,
                "mlp_ratio": 5.33334,
                "num_classes": 0,
            },
        ),
        "virchow2": (
            "vit_huge_patch14_224",
            {
                "img_size": 224,
                "init_values": 1e-5,
                "num_classes": 0,
                "reg_tokens": 4,
                "mlp_ratio": 5.3375,
                "global_pool": "",
                "dynamic_img_size": True,
                **swiglu,
            },
        ),
        "hoptimus0": (
            "vit_giant_patch14_reg4_dinov2",
            {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "global_pool": "token", "dynamic_img_size": False},
        ),
    }


def reference_forward(name: str, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The authors' recipe for a patch embedding from the timm model, on normalised input ``[B, 3, 224, 224]``."""
    if name == "resnet50_trunc":

        def resnet_layer3_pool(x: torch.Tensor) -> torch.Tensor:
            x = model.maxpool(model.act1(model.bn1(model.conv1(x))))
            return model.layer3(model.layer2(model.layer1(x))).mean(dim=(2, 3))

        return resnet_layer3_pool
    if name == "virchow2":

        def class_and_mean_patch(x: torch.Tensor) -> torch.Tensor:
            tokens = model(x)  # [B, 1 + 4 + 256, 1280]
            return torch.cat([tokens[:, 0], tokens[:, 5:].mean(dim=1)], dim=-1)

        return class_and_mean_patch
    return model


@torch.no_grad()
def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Seeded random values for every floating tensor, scaled so that no residual branch is negligible."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)
        if name.endswith("running_var"):
            t.copy_(0.5 + noise.abs())
        elif name.endswith("gamma"):
            t.copy_(0.1 + 0.05 * noise)
        elif name.endswith("weight") and t.ndim == 1:  # LayerNorm / BatchNorm scales
            t.copy_(1.0 + 0.1 * noise)
        else:
            t.copy_(0.02 * noise)


def check_one(timm: Any, name: str, device: torch.device, batch: int, seed: int) -> dict[str, Any]:
    """Build both models for ``name``, load timm's weights into ours, compare outputs on the same patches."""
    spec = get_encoder_spec(name)
    timm_name, kwargs = timm_recipes(timm)[name]
    with torch.device(device):  # build (and randomly initialise) directly on the device: fast for 1B parameters
        reference = timm.create_model(timm_name, pretrained=False, **kwargs).eval()
    perturb_(reference, seed)
    trunk = build_trunk(spec)
    load_into(trunk, clean_state_dict(reference.state_dict(), spec.ignore_prefixes), f"timm:{timm_name}", assign=True)
    ours = (
        PatchEncoder(
            trunk.float(),
            name=spec.name,
            feature_dim=spec.feature_dim,
            input_size=spec.input_size,
            mean=spec.mean,
            std=spec.std,
            weights_sha256="timm",
        )
        .to(device)
        .eval()
    )
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    x = torch.rand(batch, 3, spec.input_size, spec.input_size, generator=generator, device=device)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    with torch.inference_mode():
        start = time.perf_counter()
        expected = reference_forward(name, reference)((x - mean) / std).float()
        got = ours(x)
        seconds = time.perf_counter() - start
    max_abs = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
    scale = expected.abs().max().item()
    return {
        "name": name,
        "timm": timm_name,
        "params_M": sum(p.numel() for p in trunk.parameters()) / 1e6,
        "shape": tuple(got.shape),
        "max_abs_diff": max_abs,
        "rel_diff": max_abs / max(scale, 1e-12),
        "seconds": seconds,
    }


def main(
    names: str | Sequence[str] = CHECKED, device: str = "auto", batch: int = 2, seed: int = 0, rtol: float = 1e-4
) -> None:
    """Compare our trunks with timm's and print a table; exit 1 when any relative difference exceeds ``rtol``.

    Args:
        names: encoders to check (comma-separated or a list); default all with a timm counterpart.
        device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``.
        batch: patches per encoder.
        seed: seed of the random weights and patches.
        rtol: largest accepted ``max |ours - timm| / max |timm|``.
    """
    try:
        import timm
    except ImportError:
        print(
            "timm is not installed here, so there is nothing to compare against. Run this script where timm is "
            "available (the GPU machines have it); monai_ext itself never imports timm.",
            file=sys.stderr,
        )
        sys.exit(2)
    selected = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = sorted(set(selected) - set(CHECKED))
    if unknown:
        raise SystemExit(f"no timm counterpart for {unknown}; choose from {list(CHECKED)}")
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    torch.backends.cuda.matmul.allow_tf32 = False  # compare in true fp32
    torch.backends.cudnn.allow_tf32 = False
    print(f"timm {timm.__version__}, torch {torch.__version__}, device {dev}, batch {batch}, rtol {rtol}")
    header = (
        f"{'encoder':<16}{'timm model':<32}{'params(M)':>10}  {'output':<14}{'max|diff|':>11}{'rel':>11}{'s':>7}  ok"
    )
    print(header)
    print("-" * len(header))
    failures = []
    for name in selected:
        row = check_one(timm, name, dev, batch, seed)
        ok = row["rel_diff"] <= rtol
        failures += [] if ok else [name]
        print(
            f"{row['name']:<16}{row['timm']:<32}{row['params_M']:>10.1f}  {row['shape']!s:<14}"
            f"{row['max_abs_diff']:>11.2e}{row['rel_diff']:>11.2e}{row['seconds']:>7.2f}  {'yes' if ok else 'NO'}"
        )
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if failures:
        raise SystemExit(f"outputs differ from timm beyond rtol={rtol}: {failures}")


if __name__ == "__main__":
    fire.Fire(main)

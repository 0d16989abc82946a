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

"""Tests for ``monai_ext.wsi.encoders``: registry, preprocessing, weight files, and architectures.

References are independent of our modules: hand-written parameter counts and timm key lists, MONAI's ResNet-50,
Hugging Face ``transformers`` DINOv2 models (with converted weights), ``hashlib`` for file hashes, and a manual
resize + normalisation. Big architectures are checked on the ``meta`` device (shapes only, no memory); forward
passes use small variants of the same specs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import monai_ext  # noqa: F401  (silences native-library noise before MONAI is imported)
from monai_ext.wsi.encoders import (
    EncoderSpec,
    build_encoder,
    build_encoder_from_spec,
    build_trunk,
    get_encoder_spec,
    list_encoders,
)

REPO = Path(__file__).resolve().parents[2]
NAMES = ["builtin_cnn", "gigapath", "hoptimus0", "resnet50_trunc", "uni", "uni2_h", "virchow2"]
VIT_NAMES = ["gigapath", "hoptimus0", "uni", "uni2_h", "virchow2"]
TINY_SIZE = 112

# Published sizes (value, tolerance): UNI (ViT-L, 303M), UNI2-h model card (681M), Prov-GigaPath paper (1.13B tile
# encoder), Virchow2 paper (632M), H-optimus-0 model card ("1.1B": rounded, hence the wider tolerance).
PUBLISHED_PARAMS = {
    "uni": (303e6, 3e6),
    "uni2_h": (681e6, 7e6),
    "gigapath": (1.13e9, 0.011e9),
    "virchow2": (632e6, 6e6),
    "hoptimus0": (1.1e9, 0.05e9),
}
# Hand-checked architecture facts (model cards / timm configs): patch size, width, depth, register tokens,
# whether the position embedding skips prefix tokens, fc1 width, pooled output width.
VIT_FACTS = {
    "uni": dict(patch=16, dim=1024, depth=24, reg=0, no_embed_class=False, fc1=4096, swiglu=False, out=1024),
    "uni2_h": dict(patch=14, dim=1536, depth=24, reg=8, no_embed_class=True, fc1=8192, swiglu=True, out=1536),
    "gigapath": dict(patch=16, dim=1536, depth=40, reg=0, no_embed_class=False, fc1=8192, swiglu=True, out=1536),
    "virchow2": dict(patch=14, dim=1280, depth=32, reg=4, no_embed_class=False, fc1=6832, swiglu=True, out=2560),
    "hoptimus0": dict(patch=14, dim=1536, depth=40, reg=4, no_embed_class=True, fc1=8192, swiglu=True, out=1536),
}


class NotATensor:
    """A picklable object that ``torch.load(weights_only=True)`` must refuse."""

    def __init__(self) -> None:
        self.payload = "arbitrary code could run here"


def tiny_spec(name: str) -> EncoderSpec:
    """The registered spec with a small trunk of the same kind (same pooling, MLP, tokens, mean/std)."""
    spec = get_encoder_spec(name)
    if spec.arch == "vit":
        kwargs = {**spec.arch_kwargs, "img_size": TINY_SIZE, "embed_dim": 48, "depth": 2, "num_heads": 3}
        feature_dim = 96 if kwargs["pool"] == "token_mean" else 48
        return dataclasses.replace(spec, arch_kwargs=kwargs, feature_dim=feature_dim, input_size=TINY_SIZE)
    if spec.arch == "resnet_trunc":
        return dataclasses.replace(spec, arch_kwargs={"blocks": (1, 2, 1), "base_width": 8}, feature_dim=128)
    return spec


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Give every floating parameter and buffer non-trivial values (LayerScale and norms included)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=g)
        if name.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=g))
        elif re.search(r"(norm\d?|bn\d|downsample\.1)\.weight$|gamma$", name):
            t.copy_(1.0 + 0.2 * noise)
        else:
            t.copy_(0.1 * noise)


def patches(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)


# ---------------------------------------------------------------- registry and configs


def test_registry_lists_names() -> None:
    assert list_encoders() == sorted(NAMES)
    with pytest.raises(KeyError, match="conch"):
        get_encoder_spec("conch")


@pytest.mark.parametrize("name", NAMES)
def test_config_file_matches_registry(name: str) -> None:
    path = REPO / "configs" / "encoders" / f"{name}.json"
    assert json.loads(path.read_text()) == get_encoder_spec(name).to_config()


def test_no_stray_config_files() -> None:
    assert sorted(p.stem for p in (REPO / "configs" / "encoders").glob("*.json")) == sorted(NAMES)


def test_published_mean_std() -> None:
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for name in ["uni", "uni2_h", "gigapath", "virchow2", "resnet50_trunc"]:
        spec = get_encoder_spec(name)
        assert (spec.mean, spec.std) == imagenet, name
    spec = get_encoder_spec("hoptimus0")
    assert spec.mean == (0.707223, 0.578729, 0.703617)
    assert spec.std == (0.211883, 0.230117, 0.177517)


def test_ill_args() -> None:
    with pytest.raises(ValueError, match="allow_random"):
        build_encoder("uni")
    with pytest.raises(ValueError, match="unknown arch"):
        EncoderSpec("x", "swin", {}, 8, 224, (0, 0, 0), (1, 1, 1), False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="std"):
        EncoderSpec("x", "vit", {}, 8, 224, (0, 0, 0), (1, 0, 1), False)
    bad = dataclasses.replace(get_encoder_spec("builtin_cnn"), feature_dim=64)
    with pytest.raises(ValueError, match="outputs 128 features"):
        build_encoder_from_spec(bad)


# ---------------------------------------------------------------- full-size architectures (meta device)


def vit_param_count(f: dict, img: int = 224) -> int:
    """Hand count of a timm ViT trunk's parameters from its hyper-parameters."""
    d, n_patches = f["dim"], (img // f["patch"]) ** 2
    fc1 = f["fc1"]
    fc2_in = fc1 // 2 if f["swiglu"] else fc1
    embed = d * 3 * f["patch"] ** 2 + d
    tokens = d * (1 + f["reg"])
    pos = d * (n_patches + (0 if f["no_embed_class"] else 1 + f["reg"]))
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * fc1 + fc1) + (fc2_in * d + d)
    return embed + tokens + pos + f["depth"] * block + 2 * d


@pytest.mark.parametrize("name", NAMES)
def test_full_size_feature_dim(name: str) -> None:
    trunk = build_trunk(get_encoder_spec(name))  # meta device: no memory, no compute
    assert all(p.is_meta for p in trunk.parameters())
    assert (
        trunk.feature_dim
        == get_encoder_spec(name).feature_dim
        == json.loads((REPO / "configs" / "encoders" / f"{name}.json").read_text())["feature_dim"]
    )


@pytest.mark.parametrize("name", VIT_NAMES)
def test_vit_parameter_count_and_timm_keys(name: str) -> None:
    facts = VIT_FACTS[name]
    trunk = build_trunk(get_encoder_spec(name))
    sd = trunk.state_dict()
    n_params = sum(p.numel() for p in trunk.parameters())
    assert n_params == vit_param_count(facts)
    published, tolerance = PUBLISHED_PARAMS[name]
    assert abs(n_params - published) <= tolerance
    d, last = facts["dim"], facts["depth"] - 1
    n_pos = (224 // facts["patch"]) ** 2 + (0 if facts["no_embed_class"] else 1 + facts["reg"])
    expected_shapes = {
        "patch_embed.proj.weight": (d, 3, facts["patch"], facts["patch"]),
        "cls_token": (1, 1, d),
        "pos_embed": (1, n_pos, d),
        "blocks.0.attn.qkv.weight": (3 * d, d),
        "blocks.0.attn.proj.bias": (d,),
        "blocks.0.ls1.gamma": (d,),
        f"blocks.{last}.mlp.fc1.weight": (facts["fc1"], d),
        f"blocks.{last}.mlp.fc2.weight": (d, facts["fc1"] // 2 if facts["swiglu"] else facts["fc1"]),
        f"blocks.{last}.ls2.gamma": (d,),
        f"blocks.{last}.norm2.weight": (d,),
        "norm.bias": (d,),
    }
    if facts["reg"]:
        expected_shapes["reg_token"] = (1, facts["reg"], d)
    else:
        assert "reg_token" not in sd
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert f"blocks.{facts['depth']}.norm1.weight" not in sd
    assert not [k for k in sd if k.startswith(("head", "fc_norm"))]
    per_block = {re.sub(r"^blocks\.\d+\.", "", k) for k in sd if k.startswith("blocks.")}
    assert per_block == {
        f"{m}.{p}"
        for m in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias")
    } | {"ls1.gamma", "ls2.gamma"}


def timm_resnet50_keys(stages: int = 3) -> list[str]:
    """timm/torchvision ``resnet50`` state_dict keys up to ``layer<stages>``, written out by hand."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight", *(f"bn1.{p}" for p in bn)]
    for stage, n_blocks in enumerate((3, 4, 6, 3)[:stages], start=1):
        for b in range(n_blocks):
            pre = f"layer{stage}.{b}"
            for i in (1, 2, 3):
                keys += [f"{pre}.conv{i}.weight", *(f"{pre}.bn{i}.{p}" for p in bn)]
            if b == 0:
                keys += [f"{pre}.downsample.0.weight", *(f"{pre}.downsample.1.{p}" for p in bn)]
    return keys


def test_resnet50_trunc_timm_keys() -> None:
    sd = build_trunk(get_encoder_spec("resnet50_trunc")).state_dict()
    assert sorted(sd) == sorted(timm_resnet50_keys())
    # a full resnet50 state_dict: 53 convolutions, 53 BatchNorms (5 entries each), fc weight and bias
    assert len(timm_resnet50_keys(4)) + 2 == 53 + 53 * 5 + 2
    assert {"layer3.5.bn3.running_var", "conv1.weight", "layer2.0.downsample.0.weight"} <= sd.keys()
    assert tuple(sd["conv1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(sd["layer1.0.conv2.weight"].shape) == (64, 64, 3, 3)
    assert tuple(sd["layer3.0.downsample.0.weight"].shape) == (1024, 512, 1, 1)
    assert tuple(sd["layer3.5.conv3.weight"].shape) == (1024, 256, 1, 1)


# ---------------------------------------------------------------- PatchEncoder behaviour


def test_builtin_deterministic_by_seed() -> None:
    x = patches(4, 224)
    with torch.inference_mode():
        a = build_encoder("builtin_cnn", seed=0)(x)
        b = build_encoder("builtin_cnn", seed=0)(x)
        c = build_encoder("builtin_cnn", seed=1)(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)
    assert build_encoder("builtin_cnn", seed=7).identity == "builtin_cnn@seed7"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [TINY_SIZE, 90])
def test_output_shape_dtype(name: str, size: int) -> None:
    encoder = build_encoder_from_spec(tiny_spec(name), allow_random=True)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    with torch.inference_mode():
        out = encoder(patches(3, size))
    assert out.shape == (3, encoder.feature_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["builtin_cnn", "hoptimus0"])
@pytest.mark.parametrize("size", [64, 300])
def test_normalisation_and_resize(name: str, size: int) -> None:
    spec = tiny_spec(name)
    encoder = build_encoder_from_spec(spec, allow_random=True)
    x = patches(2, size)
    manual = F.interpolate(
        x.double() / 255, size=(spec.input_size,) * 2, mode="bilinear", antialias=True, align_corners=False
    )
    manual = (manual - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    got = encoder.preprocess(x)
    torch.testing.assert_close(got.double(), manual, atol=1e-4, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(encoder(x), encoder.trunk(manual.float()), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["builtin_cnn", "uni", "virchow2"])
def test_uint8_float_channels_last_equivalent(name: str) -> None:
    encoder = build_encoder_from_spec(tiny_spec(name), allow_random=True)
    x = patches(2, 128)
    x_float = x.float() / 255
    x_float_copy = x_float.clone()
    with torch.inference_mode():
        ref = encoder(x)
        torch.testing.assert_close(encoder(x_float), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(encoder(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(encoder(x_float[..., : encoder.input_size, : encoder.input_size]).shape, ref.shape)
    assert torch.equal(x_float, x_float_copy)  # the caller's tensor is left untouched


def test_bad_inputs() -> None:
    encoder = build_encoder("builtin_cnn")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoder(patches(1, 32).float())
    with pytest.raises(ValueError, match="shape"):
        encoder(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        encoder(torch.zeros(1, 3, 32, 32, dtype=torch.int32))


# ---------------------------------------------------------------- weight files


@pytest.mark.parametrize(
    "name, filename, wrap",
    [
        ("builtin_cnn", "w.pt", lambda sd: sd),
        ("builtin_cnn", "w.pth", lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}),
        ("uni2_h", "w.bin", lambda sd: {**sd, "head.weight": torch.zeros(5, 48), "head.bias": torch.zeros(5)}),
        ("virchow2", "w.safetensors", lambda sd: {f"model.{k}": v.contiguous() for k, v in sd.items()}),
        ("resnet50_trunc", "w.pt", lambda sd: {"model": sd}),
    ],
)
def test_weights_round_trip(tmp_path: Path, name: str, filename: str, wrap) -> None:
    spec = tiny_spec(name)
    original = build_encoder_from_spec(spec, seed=5, allow_random=True)
    randomize_(original.trunk, seed=11)
    path = tmp_path / filename
    state = wrap(original.trunk.state_dict())
    if filename.endswith(".safetensors"):
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = build_encoder_from_spec(spec, weights=path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.weights_sha256 == sha
    assert loaded.identity == f"{name}@{sha[:16]}"
    x = patches(2, 100)
    with torch.inference_mode():
        assert torch.equal(loaded(x), original(x))


def test_half_precision_weights_are_cast(tmp_path: Path) -> None:
    spec = tiny_spec("uni")
    original = build_encoder_from_spec(spec, allow_random=True)
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in original.trunk.state_dict().items()}, path)
    loaded = build_encoder_from_spec(spec, weights=path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.inference_mode():
        torch.testing.assert_close(loaded(patches()), original(patches()), atol=2e-2, rtol=2e-2)


def test_wrong_keys_raise_value_error_naming_file(tmp_path: Path) -> None:
    sd = build_encoder("builtin_cnn").trunk.state_dict()
    sd["features.9.weight"] = sd.pop("features.0.weight")
    path = tmp_path / "renamed.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"renamed\.pt") as err:
        build_encoder("builtin_cnn", weights=path)
    assert "features.0.weight" in str(err.value) and "features.9.weight" in str(err.value)


def test_wrong_shapes_raise_value_error(tmp_path: Path) -> None:
    path = tmp_path / "uni_small.pt"
    torch.save(build_encoder_from_spec(tiny_spec("uni"), allow_random=True).trunk.state_dict(), path)
    with pytest.raises(ValueError, match=r"uni_small\.pt.*wrong shapes.*pos_embed"):
        build_encoder_from_spec(tiny_spec("uni2_h"), weights=path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.bin"):
        build_encoder("uni", weights=tmp_path / "nowhere.bin")


def test_pickled_object_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"features.0.weight": torch.zeros(1), "extra": NotATensor()}, path)
    with pytest.raises(ValueError, match=r"evil\.pt.*weights_only"):
        build_encoder("builtin_cnn", weights=path)


@pytest.mark.parametrize(
    "filename, content, message",
    [
        ("numbers.pt", {"features.0.weight": 3}, "non-tensor"),
        ("list.pt", [torch.zeros(1)], "found a list"),
        ("weights.npz", {}, "unknown weights format"),
    ],
)
def test_not_a_state_dict(tmp_path: Path, filename: str, content: object, message: str) -> None:
    path = tmp_path / filename
    torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        build_encoder("builtin_cnn", weights=path)


# ---------------------------------------------------------------- independent references


def hf_resnet_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``ResNetModel`` state_dict to timm/torchvision ``resnet`` names."""
    out = {}
    for key, value in sd.items():
        name = key.replace("embedder.embedder.convolution", "conv1").replace("embedder.embedder.normalization", "bn1")
        name = re.sub(r"encoder\.stages\.(\d+)\.layers\.", lambda m: f"layer{int(m.group(1)) + 1}.", name)
        name = name.replace("shortcut.convolution", "downsample.0").replace("shortcut.normalization", "downsample.1")
        name = re.sub(r"layer\.(\d)\.convolution", lambda m: f"conv{int(m.group(1)) + 1}", name)
        name = re.sub(r"layer\.(\d)\.normalization", lambda m: f"bn{int(m.group(1)) + 1}", name)
        out[name] = value
    return out


def test_resnet_trunc_matches_hugging_face_resnet(tmp_path: Path) -> None:
    """transformers' ResNet (bottleneck, stride on the 3x3) with converted weights agrees with our trunk."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[32, 64, 128], depths=[1, 2, 1], layer_type="bottleneck"
    )
    reference = transformers.ResNetModel(config).eval()
    randomize_(reference, seed=3)
    state = hf_resnet_to_timm(reference.state_dict())
    extra = {"layer4.0.conv1.weight": torch.zeros(4, 128, 1, 1), "fc.weight": torch.zeros(10, 512)}
    path = tmp_path / "resnet_full.pth"
    torch.save({**state, **extra}, path)  # a whole network: layer4 and fc must be dropped
    encoder = build_encoder_from_spec(tiny_spec("resnet50_trunc"), weights=path)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference(pixel_values=x).last_hidden_state.mean(dim=(2, 3))
        got = encoder.trunk(x)
    assert got.shape == (2, 128)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def to_hf_dinov2(sd: dict[str, torch.Tensor], reg: int, no_embed_class: bool) -> dict[str, torch.Tensor]:
    """Map a timm-layout ViT state_dict to Hugging Face DINOv2 names (registers variant when ``reg``)."""
    pos, d = sd["pos_embed"], sd["cls_token"].shape[-1]
    out = {"embeddings.cls_token": sd["cls_token"], "embeddings.mask_token": torch.zeros(1, d)}
    if no_embed_class:  # HF adds a position to the class token: give it zero
        out["embeddings.position_embeddings"] = torch.cat([torch.zeros(1, 1, d), pos], dim=1)
        registers = sd.get("reg_token")
    else:  # timm also embeds registers' positions: fold them into the register tokens
        out["embeddings.position_embeddings"] = torch.cat([pos[:, :1], pos[:, 1 + reg :]], dim=1)
        registers = sd["reg_token"] + pos[:, 1 : 1 + reg] if reg else None
    if registers is not None:
        out["embeddings.register_tokens"] = registers
    out["embeddings.patch_embeddings.projection.weight"] = sd["patch_embed.proj.weight"]
    out["embeddings.patch_embeddings.projection.bias"] = sd["patch_embed.proj.bias"]
    out["layernorm.weight"], out["layernorm.bias"] = sd["norm.weight"], sd["norm.bias"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        swiglu = sd[f"{b}mlp.fc1.weight"].shape[0] == 2 * sd[f"{b}mlp.fc2.weight"].shape[1]
        for p in ("weight", "bias"):
            out[f"{h}norm1.{p}"], out[f"{h}norm2.{p}"] = sd[f"{b}norm1.{p}"], sd[f"{b}norm2.{p}"]
            q, k, v = sd[f"{b}attn.qkv.{p}"].chunk(3)
            out[f"{h}attention.q_proj.{p}"], out[f"{h}attention.k_proj.{p}"], out[f"{h}attention.v_proj.{p}"] = q, k, v
            out[f"{h}attention.o_proj.{p}"] = sd[f"{b}attn.proj.{p}"]
            fc1, fc2 = sd[f"{b}mlp.fc1.{p}"], sd[f"{b}mlp.fc2.{p}"]
            if swiglu:  # packed: the first half of fc1 is the gate
                out[f"{h}mlp.gate_proj.{p}"], out[f"{h}mlp.up_proj.{p}"] = fc1.chunk(2)
                out[f"{h}mlp.down_proj.{p}"] = fc2
            else:
                out[f"{h}mlp.fc1.{p}"], out[f"{h}mlp.fc2.{p}"] = fc1, fc2
        out[f"{h}layer_scale1.lambda1"], out[f"{h}layer_scale2.lambda1"] = sd[f"{b}ls1.gamma"], sd[f"{b}ls2.gamma"]
    return out


@pytest.mark.parametrize("name", VIT_NAMES)
def test_vit_matches_hugging_face_dinov2(name: str) -> None:
    """Our timm-layout ViT equals transformers' DINOv2 (eager attention) given the same, converted, weights."""
    transformers = pytest.importorskip("transformers")
    spec = tiny_spec(name)
    kw = spec.arch_kwargs
    encoder = build_encoder_from_spec(spec, allow_random=True)
    randomize_(encoder.trunk, seed=1)
    swiglu = kw["mlp_kind"] == "swiglu_packed"
    config_kwargs = dict(
        hidden_size=kw["embed_dim"],
        num_hidden_layers=kw["depth"],
        num_attention_heads=kw["num_heads"],
        image_size=kw["img_size"],
        patch_size=kw["patch_size"],
        mlp_ratio=4,  # HF derives the SwiGLU width as 2/3 of it, rounded to 8: 48 * 4 * 2/3 = 128 = our fc2 input
        use_swiglu_ffn=swiglu,
        layer_norm_eps=1e-6,
        attn_implementation="eager",
    )
    assert encoder.trunk.blocks[0].mlp.fc2.in_features == (128 if swiglu else 192)
    if kw["reg_tokens"]:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=kw["reg_tokens"], **config_kwargs)
        reference = transformers.Dinov2WithRegistersModel(config)
    else:
        reference = transformers.Dinov2Model(transformers.Dinov2Config(**config_kwargs))
    reference.load_state_dict(to_hf_dinov2(encoder.trunk.state_dict(), kw["reg_tokens"], kw["no_embed_class"]))
    reference.eval()
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        tokens = reference(pixel_values=x).last_hidden_state
        if kw["pool"] == "token_mean":
            expected = torch.cat([tokens[:, 0], tokens[:, 1 + kw["reg_tokens"] :].mean(dim=1)], dim=-1)
        else:
            expected = tokens[:, 0]
        got = encoder.trunk(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

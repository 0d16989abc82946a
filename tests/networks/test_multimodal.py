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

"""MultimodalModel: every aggregator x task, every fusion x modality subset, masks and padding, empty bags,
the distillation outputs, modality dropout, omics and radiology encoders, and construction from a MONAI config."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from monai_ext.networks.fusion import FUSIONS
from monai_ext.networks.mil import AGGREGATORS
from monai_ext.networks.multimodal import MultimodalModel, uses_patch_tokens

MODALITIES = ("wsi", "omics", "clinical", "text")
SUBSETS = [s for r in range(1, len(MODALITIES) + 1) for s in itertools.combinations(MODALITIES, r)]
TASKS = ("classification", "survival", "cox")
WSI_DIM, OMICS_DIM, CLINICAL_DIM, TEXT_DIM, DIM = 12, 10, 3, 5, 8
N_PATCHES, N_TEXT = 9, 4
# per-fusion options that keep the test models tiny
SMALL_FUSION = {
    "concat": {},
    "kronecker": {"gated_dim": 3},
    "lowrank": {"rank": 3},
    "coattention": {"n_heads": 2, "n_layers": 1},
    "pathway_cross": {"n_heads": 2},
    "bicross": {"n_heads": 2},
}
SMALL_AGGREGATOR = {"transmil": {"n_heads": 2, "num_landmarks": 4}}


def make_model(
    modalities: tuple[str, ...] = MODALITIES,
    fusion: str = "concat",
    aggregator: str = "abmil",
    seed: int = 0,
    **kwargs: Any,
) -> MultimodalModel:
    """A tiny model without dropout (so train and eval agree unless a test says otherwise)."""
    torch.manual_seed(seed)
    options: dict[str, Any] = {
        "wsi_dim": WSI_DIM,
        "omics_dim": OMICS_DIM,
        "clinical_dim": CLINICAL_DIM,
        "text_dim": TEXT_DIM,
        "dim": DIM,
        "dropout": 0.0,
        "fusion_kwargs": SMALL_FUSION.get(fusion),
        "aggregator_kwargs": SMALL_AGGREGATOR.get(aggregator),
        "require_wsi": "wsi" in modalities,
    }
    options.update(kwargs)
    return MultimodalModel(modalities=modalities, fusion=fusion, aggregator=aggregator, **options)


def make_batch(modalities: tuple[str, ...] = MODALITIES, batch_size: int = 3, seed: int = 1) -> dict[str, Any]:
    """Ragged patches and text tokens; sample 1 lacks omics, sample 2 lacks clinical (when present)."""
    gen = torch.Generator().manual_seed(seed)
    batch: dict[str, Any] = {}
    if "wsi" in modalities:
        batch["wsi"] = torch.randn(batch_size, N_PATCHES, WSI_DIM, generator=gen)
        counts = torch.tensor([N_PATCHES, 4, 1, 6][:batch_size])
        batch["wsi_mask"] = torch.arange(N_PATCHES)[None] < counts[:, None]
    if "omics" in modalities:
        batch["omics"] = torch.randn(batch_size, OMICS_DIM, generator=gen)
        batch["omics_mask"] = torch.ones(batch_size, dtype=torch.bool)
        batch["omics_mask"][1 % batch_size] = len(modalities) == 1
    if "clinical" in modalities:
        batch["clinical"] = torch.randn(batch_size, CLINICAL_DIM, generator=gen)
        batch["clinical_mask"] = torch.ones(batch_size, dtype=torch.bool)
        batch["clinical_mask"][2 % batch_size] = len(modalities) == 1
    if "text" in modalities:
        batch["text"] = torch.randn(batch_size, N_TEXT, TEXT_DIM, generator=gen)
        batch["text_mask"] = torch.arange(N_TEXT)[None] < torch.tensor([4, 2, 3, 1][:batch_size])[:, None]
    return batch


def run_eval(model: nn.Module, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    model.eval()
    with torch.no_grad():
        return model(batch, **kwargs)


def check_attention(attention: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero at padded patches, summing to 1 over the valid patches of every sample that has some."""
    assert attention.shape == mask.shape
    assert (attention[~mask] == 0).all(), "padded patches must get exactly zero attention"
    assert (attention >= 0).all()
    present = mask.any(dim=1)
    torch.testing.assert_close(attention.sum(dim=1)[present], torch.ones(int(present.sum())))


def check_task_outputs(out: dict[str, Any], task: str, batch_size: int, n_out: int) -> None:
    if task == "classification":
        assert out["logits"].shape == (batch_size, n_out)
        torch.testing.assert_close(out["probs"], torch.softmax(out["logits"], dim=-1))
        torch.testing.assert_close(out["probs"].sum(dim=1), torch.ones(batch_size))
    elif task == "survival":
        for key in ("logits", "hazards", "survival"):
            assert out[key].shape == (batch_size, n_out)
        assert ((out["hazards"] > 0) & (out["hazards"] < 1)).all()
        assert (out["survival"][:, 1:] <= out["survival"][:, :-1]).all(), "survival must not increase"
        torch.testing.assert_close(out["risk"], -out["survival"].sum(dim=1))
    else:
        assert out["risk"].shape == (batch_size,)
        assert "logits" not in out
    assert torch.isfinite(out["embedding"]).all()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("aggregator", sorted(AGGREGATORS))
def test_every_aggregator_and_task(aggregator: str, task: str) -> None:
    model = make_model(("wsi", "omics"), aggregator=aggregator, task=task, n_classes=3, n_bins=5).train()
    batch = make_batch(("wsi", "omics"))
    out = model(batch)
    check_task_outputs(out, task, 3, 3 if task == "classification" else 5)
    check_attention(out["attention"], batch["wsi_mask"])
    loss = (out["logits"] if "logits" in out else out["risk"]).square().sum()
    loss.backward()
    assert model.aggregator is not None
    grads = [p.grad for p in model.aggregator.parameters() if p.requires_grad and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads), "the aggregator must be trained through the model"


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
@pytest.mark.parametrize("subset", SUBSETS, ids="+".join)
def test_every_fusion_and_subset(fusion: str, subset: tuple[str, ...]) -> None:
    """A model built for all four modalities, given any subset: forward + backward, and only the present
    modalities' encoders get gradients (absent ones are masked, not encoded from zeros)."""
    model = make_model(fusion=fusion, require_wsi="wsi" in subset, task="survival").train()
    batch = make_batch(subset)
    out = model(batch)
    check_task_outputs(out, "survival", 3, 4)
    if "wsi" in subset:
        check_attention(out["attention"], batch["wsi_mask"])
    else:
        assert "attention" not in out
    out["risk"].sum().backward()
    for name, encoder in model.encoders.items():
        modules = [encoder, model.aggregator] if name == "wsi" and model.aggregator is not None else [encoder]
        grads = [p.grad for module in modules for p in module.parameters() if p.grad is not None]
        if name in subset:
            assert grads and all(torch.isfinite(g).all() for g in grads)
        else:
            assert not grads, f"encoder of absent modality {name!r} must not be used"


VALID_BUILDS = [
    (fusion, subset)
    for fusion in sorted(FUSIONS)
    for subset in SUBSETS
    if (fusion not in {"coattention", "pathway_cross", "bicross"} or "wsi" in subset)
    and (fusion != "coattention" or "omics" in subset)
]


@pytest.mark.parametrize(("fusion", "subset"), VALID_BUILDS, ids=lambda v: v if isinstance(v, str) else "+".join(v))
def test_built_for_subset(fusion: str, subset: tuple[str, ...]) -> None:
    """A model built for exactly a subset of modalities trains on batches of that subset."""
    model = make_model(subset, fusion=fusion, task="classification", n_classes=2).train()
    out = model(make_batch(subset))
    check_task_outputs(out, "classification", 3, 2)
    out["logits"].logsumexp(dim=1).sum().backward()
    assert set(model.encoders) == set(subset)


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
@pytest.mark.parametrize("junk", ["large", "nan"])
def test_padding_cannot_change_outputs(fusion: str, junk: str) -> None:
    """Extra padded patches and text tokens holding junk (even NaN) leave every output unchanged (eval)."""
    model = make_model(fusion=fusion, task="classification", n_classes=3)
    batch = make_batch()
    reference = run_eval(model, batch)
    gen = torch.Generator().manual_seed(5)
    padded = dict(batch)
    for name in ("wsi", "text"):
        x, mask = batch[name], batch[f"{name}_mask"]
        x = torch.cat([x, torch.zeros(x.shape[0], 3, x.shape[2])], dim=1)
        mask = torch.cat([mask, torch.zeros(mask.shape[0], 3, dtype=torch.bool)], dim=1)
        fill = torch.full_like(x, float("nan")) if junk == "nan" else 1e3 * torch.randn(x.shape, generator=gen)
        padded[name], padded[f"{name}_mask"] = torch.where(mask[..., None], x, fill), mask
    # masked-out samples' vectors are junk too
    padded["omics"] = torch.where(batch["omics_mask"][:, None], batch["omics"], torch.tensor(float("nan")))
    out = run_eval(model, padded)
    torch.testing.assert_close(out["logits"], reference["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["attention"][:, :N_PATCHES], reference["attention"], rtol=1e-5, atol=1e-6)
    assert (out["attention"][:, N_PATCHES:] == 0).all()


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
@pytest.mark.parametrize("absent", ["omics", "clinical", "text"])
def test_missing_modality_row_equals_modality_left_out(fusion: str, absent: str) -> None:
    """A sample whose modality is masked gives the output of the same sample with that modality left out."""
    model = make_model(fusion=fusion)
    batch = make_batch()
    batch[f"{absent}_mask"] = torch.zeros_like(batch[f"{absent}_mask"])
    masked = run_eval(model, batch)
    left_out = run_eval(model, {k: v for k, v in batch.items() if not k.startswith(absent)})
    torch.testing.assert_close(masked["logits"], left_out["logits"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked["attention"], left_out["attention"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_empty_bag_refused_when_wsi_required(fusion: str) -> None:
    model = make_model(fusion=fusion)
    batch = make_batch()
    batch["wsi_mask"][1] = False
    with pytest.raises(ValueError, match=r"samples \[1\] have an empty slide bag"):
        model(batch)
    with pytest.raises(ValueError, match="require_wsi"):
        model({k: v for k, v in batch.items() if not k.startswith("wsi")})


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_empty_bag_allowed_without_require_wsi(fusion: str) -> None:
    """With ``require_wsi=False`` a sample without patches is answered from its other modalities: zero attention,
    and the same output as the sample alone without ``wsi``."""
    model = make_model(fusion=fusion, require_wsi=False)
    batch = make_batch()
    batch["wsi_mask"][1] = False
    out = run_eval(model, batch)
    assert (out["attention"][1] == 0).all()
    check_attention(out["attention"][[0, 2]], batch["wsi_mask"][[0, 2]])
    alone = {k: v[1:2] for k, v in batch.items() if not k.startswith("wsi")}
    torch.testing.assert_close(out["logits"][1:2], run_eval(model, alone)["logits"], rtol=1e-5, atol=1e-6)


def test_sample_without_any_modality_refused() -> None:
    model = make_model(("omics", "clinical"))
    batch = make_batch(("omics", "clinical"))
    batch["omics_mask"][0] = False
    batch["clinical_mask"][0] = False
    with pytest.raises(ValueError, match=r"samples \[0\] have no modality present"):
        model(batch)
    with pytest.raises(ValueError, match="none of the model's modalities"):
        model({"radiology": torch.zeros(1, 1, 2, 2, 2)})


def test_bag_token_by_hand() -> None:
    """With mean pooling, the wsi embedding is the linear map of the mean of the projected valid patches."""
    model = make_model(("wsi",), aggregator="mean", aggregator_kwargs={"hidden_dim": 6})
    batch = make_batch(("wsi",))
    out = run_eval(model, batch, return_tokens=True)
    expected = []
    with torch.no_grad():
        for x, mask in zip(batch["wsi"], batch["wsi_mask"], strict=True):
            projected = torch.relu(x[mask] @ model.aggregator.encoder[0].weight.T + model.aggregator.encoder[0].bias)
            expected.append(model.encoders["wsi"](projected.mean(dim=0)))
    torch.testing.assert_close(out["modality_embeddings"]["wsi"], torch.stack(expected))
    uniform = batch["wsi_mask"].float() / batch["wsi_mask"].sum(dim=1, keepdim=True)
    torch.testing.assert_close(out["attention"], uniform)


@pytest.mark.parametrize("fusion", ["concat", "coattention"])
def test_return_tokens(fusion: str) -> None:
    model = make_model(fusion=fusion)
    batch = make_batch()
    plain = run_eval(model, batch)
    out = run_eval(model, batch, return_tokens=True)
    torch.testing.assert_close(out["embedding"], plain["embedding"])
    n_wsi = N_PATCHES if uses_patch_tokens(model.fusion) else 1
    expected_tokens = {"wsi": n_wsi, "omics": 1, "clinical": 1, "text": N_TEXT}
    for name, n in expected_tokens.items():
        assert out["tokens"][name].shape == (3, n, DIM)
        assert out["token_masks"][name].shape == (3, n)
        assert out["modality_embeddings"][name].shape == (3, DIM)
    assert not out["token_masks"]["omics"][1].any() and (out["modality_embeddings"]["omics"][1] == 0).all()
    mask = out["token_masks"]["text"]
    by_hand = (out["tokens"]["text"] * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
    torch.testing.assert_close(out["modality_embeddings"]["text"], by_hand)


def test_modality_dropout_keeps_required_wsi() -> None:
    """``p = 1`` drops every droppable modality in training: the output equals the WSI-only output."""
    model = make_model(modality_dropout=1.0).train()
    batch = make_batch()
    out = model(batch)
    wsi_only = model({k: v for k, v in batch.items() if k.startswith("wsi")})
    torch.testing.assert_close(out["logits"], wsi_only["logits"])
    assert model.modality_dropout is not None and "wsi" not in model.modality_dropout.modalities
    torch.testing.assert_close(run_eval(model, batch)["logits"], run_eval(model, batch)["logits"])
    assert not torch.allclose(run_eval(model, batch)["logits"], wsi_only["logits"]), "eval must not drop"


@pytest.mark.parametrize("encoder", ["pathways", "families"])
def test_omics_token_encoders(encoder: str) -> None:
    groups = [[0, 1, 2], [3, 4], [5, 6, 7, 8, 9], [1, 9]]
    model = make_model(("wsi", "omics"), fusion="coattention", omics_encoder=encoder, pathway_gene_index=groups)
    batch = make_batch(("wsi", "omics"))
    out = run_eval(model, batch, return_tokens=True)
    assert out["tokens"]["omics"].shape == (3, len(groups), DIM)
    assert out["token_masks"]["omics"].tolist() == [[True] * 4, [False] * 4, [True] * 4]
    assert out["tokens"]["omics"].shape[1] == len(groups)


def test_pre_grouped_omics_with_snn() -> None:
    """``[B, P, Gp]`` omics give one token per group from one shared SNN."""
    model = make_model(("wsi", "omics"), omics_dim=7)
    batch = make_batch(("wsi",))
    batch["omics"] = torch.randn(3, 5, 7)
    out = run_eval(model, batch, return_tokens=True)
    assert out["tokens"]["omics"].shape == (3, 5, DIM)
    with torch.no_grad():
        torch.testing.assert_close(out["tokens"]["omics"][:, 2], model.encoders["omics"](batch["omics"][:, 2]))


class RecordingEncoder(nn.Module):
    """A tiny 3D encoder that remembers the batch sizes it saw."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(8, dim)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        return self.linear(x.flatten(1))


def test_radiology_encoder_sees_present_volumes_only() -> None:
    encoder = RecordingEncoder(DIM)
    model = make_model(("wsi", "radiology"), radiology_encoder=encoder)
    batch = make_batch(("wsi",))
    batch["radiology"] = torch.randn(3, 1, 2, 2, 2)
    batch["radiology_mask"] = torch.tensor([True, False, True])
    out = run_eval(model, batch, return_tokens=True)
    assert encoder.seen == [2]
    assert (out["modality_embeddings"]["radiology"][1] == 0).all()
    with torch.no_grad():
        expected = encoder(batch["radiology"][2:]).squeeze(0)
    torch.testing.assert_close(out["modality_embeddings"]["radiology"][2], expected)
    batch["radiology_mask"][:] = False
    encoder.seen.clear()
    run_eval(model, batch)
    assert encoder.seen == [], "no present volume: the encoder must not run on an empty batch"


def test_config_by_name() -> None:
    """Built from a MONAI bundle config with ``_target_``, including a nested MONAI 3D network for radiology."""
    config = {
        "dim": DIM,
        "radiology_net": {
            "_target_": "monai.networks.nets.Regressor",
            "in_shape": [1, 8, 8, 8],
            "out_shape": ["@dim"],
            "channels": [2],
            "strides": [2],
        },
        "network": {
            "_target_": "monai_ext.networks.multimodal.MultimodalModel",
            "modalities": ["wsi", "omics", "radiology"],
            "wsi_dim": WSI_DIM,
            "omics_dim": OMICS_DIM,
            "dim": "@dim",
            "aggregator": "transmil",
            "aggregator_kwargs": {"n_heads": 2, "num_landmarks": 4},
            "fusion": "lowrank",
            "fusion_kwargs": {"rank": 2},
            "radiology_encoder": "@radiology_net",
            "task": "survival",
            "n_bins": 4,
        },
    }
    parser = ConfigParser(config)
    model = parser.get_parsed_content("network")
    assert isinstance(model, MultimodalModel)
    assert model.fusion.rank == 2 and type(model.aggregator).__name__ == "TransMIL"
    batch = make_batch(("wsi", "omics"))
    batch["radiology"] = torch.randn(3, 1, 8, 8, 8)
    batch["radiology_mask"] = torch.tensor([True, True, False])
    out = model(batch)
    check_task_outputs(out, "survival", 3, 4)


def test_clam_instance_loss_with_labels_in_training() -> None:
    model = make_model(("wsi", "omics"), aggregator="clam_sb", aggregator_kwargs={"k_sample": 2}, n_classes=3)
    batch = make_batch(("wsi", "omics"))
    batch["label"] = torch.tensor([0, 2, 1])
    out = model.train()(batch)
    assert out["instance_loss"].ndim == 0 and torch.isfinite(out["instance_loss"])
    (out["instance_loss"] + out["logits"].sum()).backward()
    assert model.aggregator.instance_classifiers[0].weight.grad is not None
    assert "instance_loss" not in run_eval(model, batch)


def test_uses_patch_tokens() -> None:
    token_fusions = {name for name in FUSIONS if uses_patch_tokens(make_model(fusion=name).fusion)}
    assert token_fusions == {"coattention", "pathway_cross", "bicross"}
    assert make_model(fusion="bicross").aggregator is None
    assert make_model(fusion="concat").aggregator is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modalities": ("wsi", "ct")}, "modalities must be distinct names"),
        ({"modalities": "wsi"}, "got the string"),
        ({"modalities": ("wsi", "wsi")}, "modalities must be distinct names"),
        ({"task": "regression"}, "unknown task"),
        ({"wsi_dim": None}, "positive wsi_dim"),
        ({"clinical_dim": 0}, "positive clinical_dim"),
        ({"omics_encoder": "vae"}, "unknown omics_encoder"),
        ({"omics_encoder": "pathways"}, "needs pathway_gene_index"),
        ({"modalities": ("wsi", "radiology")}, "needs radiology_encoder"),
        ({"modalities": ("wsi",), "modality_dropout": 0.5}, "nothing to drop"),
        ({"fusion": "attention"}, "unknown fusion"),
        ({"aggregator": "gcn"}, "unknown MIL aggregator"),
        ({"dim": 0}, "dim must be positive"),
    ],
)
def test_ill_arg(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_model(**kwargs)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"wsi_mask": torch.ones(3, N_PATCHES)}, "wsi_mask"),
        ({"omics_mask": torch.ones(3, 2, dtype=torch.bool)}, "omics_mask"),
        ({"omics": torch.randn(2, OMICS_DIM)}, "batch size"),
        ({"wsi": torch.randn(3, WSI_DIM)}, r"\[B, N, D\]"),
        ({"clinical": torch.randn(3, 2, CLINICAL_DIM)}, r"\[B, features\]"),
        ({"text": torch.randn(3, TEXT_DIM)}, r"\[B, T, E\]"),
    ],
)
def test_ill_batch(change: dict[str, Any], match: str) -> None:
    model = make_model()
    with pytest.raises(ValueError, match=match):
        model({**make_batch(), **change})


def test_pre_grouped_omics_need_snn() -> None:
    model = make_model(("wsi", "omics"), omics_encoder="families", pathway_gene_index=[[0, 1], [2]])
    batch = make_batch(("wsi",))
    batch["omics"] = torch.randn(3, 2, 5)
    with pytest.raises(ValueError, match="omics_encoder='snn'"):
        model(batch)

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

"""HMF bi-cross attention against the reference structure built from two ``torch.nn.MultiheadAttention``
(``c' = LN(c + MHA(c, p, p))`` then ``p' = LN(p + MHA(p, c', c'))``), the attention filter against a top-k of
the reference attention weights, and the defining property: the output changes when the prompts change and not
otherwise (padding, masked-out prompts, prompt order within a class)."""

from __future__ import annotations

import math

import pytest
import torch

from monai_ext.networks.fusion import BiCrossFusion
from monai_ext.networks.fusion.base import concat_token_sets
from monai_ext.networks.fusion.bicross import top_patch_mask
from tests.networks.fusion.test_contract import DIM, MODALITIES, make_batch
from tests.networks.fusion.test_layers import load_from_mha

N_CLASSES, N_PROMPTS, N_PATCHES = 3, 2, 11


def with_mha(fusion: BiCrossFusion) -> tuple[torch.nn.MultiheadAttention, torch.nn.MultiheadAttention]:
    """Two reference attentions whose weights are copied into the fusion."""
    text_to_patch = torch.nn.MultiheadAttention(DIM, 2, batch_first=True).eval()
    patch_to_text = torch.nn.MultiheadAttention(DIM, 2, batch_first=True).eval()
    load_from_mha(fusion.context_to_patch, text_to_patch)
    load_from_mha(fusion.patch_to_context, patch_to_text)
    return text_to_patch, patch_to_text


def prompt_batch(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Patches with ragged masks and ``N_CLASSES x N_PROMPTS`` class prompts; sample 1 misses one prompt of
    class 1, sample 2 has no prompt of class 2; padded values are junk."""
    gen = torch.Generator().manual_seed(seed)
    patches = torch.randn(3, N_PATCHES, DIM, generator=gen)
    patch_mask = torch.arange(N_PATCHES)[None] < torch.tensor([[N_PATCHES], [7], [4]])
    text = torch.randn(3, N_CLASSES * N_PROMPTS, DIM, generator=gen)
    text_mask = torch.ones(3, N_CLASSES * N_PROMPTS, dtype=torch.bool)
    text_mask[1, 1 * N_PROMPTS + 1] = False
    text_mask[2, 2 * N_PROMPTS :] = False
    patches[~patch_mask] = 50.0
    text[~text_mask] = -50.0
    return {"wsi": patches, "text": text}, {"wsi": patch_mask, "text": text_mask}


def make_hmf(keep_ratio: float = 1.0, seed: int = 0) -> BiCrossFusion:
    torch.manual_seed(seed)
    return BiCrossFusion(
        ("wsi", "text"), DIM, n_heads=2, keep_ratio=keep_ratio, n_prompt_classes=N_CLASSES, dropout=0.0
    ).eval()


def run(fusion: BiCrossFusion, tokens: dict, masks: dict) -> dict:
    with torch.no_grad():
        return fusion(tokens, masks)


def assert_same_outputs(first: dict, second: dict) -> None:
    torch.testing.assert_close(first["embedding"], second["embedding"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first["attention"]["wsi"], second["attention"]["wsi"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first["slide_text_similarity"], second["slide_text_similarity"], rtol=1e-5, atol=1e-6)
    assert torch.equal(first["slide_text_mask"], second["slide_text_mask"])


def test_bi_cross_matches_two_multihead_attentions() -> None:
    torch.manual_seed(0)
    fusion = BiCrossFusion(MODALITIES, DIM, n_heads=2).eval()
    text_to_patch, patch_to_text = with_mha(fusion)
    tokens, masks = make_batch(missing=False)
    register = fusion.register.expand(3, -1, -1)
    context, context_mask, _ = concat_token_sets(fusion.context_modalities, tokens, masks, register)
    patches, patch_mask = tokens["wsi"], masks["wsi"]
    with torch.no_grad():
        new_context, new_patches, kept = fusion.bi_cross(context, context_mask, patches, patch_mask)
        update = text_to_patch(context, patches, patches, key_padding_mask=~patch_mask)[0]
        expected_context = fusion.context_norm(context + update)
        update = patch_to_text(patches, expected_context, expected_context, key_padding_mask=~context_mask)[0]
        expected_patches = fusion.patch_norm(patches + update)
    torch.testing.assert_close(new_context, expected_context, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_patches, expected_patches, rtol=1e-5, atol=1e-5)
    assert torch.equal(kept, patch_mask)


def test_text_prompts_change_patch_attention() -> None:
    """Patches attend to the prompts: other prompt embeddings give another patch attention."""
    torch.manual_seed(0)
    fusion = BiCrossFusion(("wsi", "text"), DIM, n_heads=2).eval()
    tokens, masks = make_batch(modalities=("wsi", "text"), missing=False)
    first = run(fusion, tokens, masks)["attention"]["wsi"]
    tokens["text"] = torch.randn_like(tokens["text"])
    assert not torch.allclose(first, run(fusion, tokens, masks)["attention"]["wsi"])


@pytest.mark.parametrize("keep_ratio", [1.0, 0.5])
def test_output_changes_with_the_prompts_and_not_otherwise(keep_ratio: float) -> None:
    fusion = make_hmf(keep_ratio)
    tokens, masks = prompt_batch()
    reference = run(fusion, tokens, masks)
    # masked-out prompts and padded patches: any values
    junk = {"wsi": tokens["wsi"].clone(), "text": tokens["text"].clone()}
    junk["wsi"][~masks["wsi"]] = -7.0
    junk["text"][~masks["text"]] = torch.randn(int((~masks["text"]).sum()), DIM)
    assert_same_outputs(run(fusion, junk, masks), reference)
    # extra padding positions at the end of both token sets
    padded_tokens = {name: torch.cat([x, torch.randn(3, 2, DIM)], dim=1) for name, x in tokens.items()}
    padded_masks = {name: torch.cat([m, torch.zeros(3, 2, dtype=torch.bool)], dim=1) for name, m in masks.items()}
    fusion.n_prompt_classes = None  # padding breaks the class grouping of the prompts: compare the fused output
    padded, plain = run(fusion, padded_tokens, padded_masks), run(fusion, tokens, masks)
    torch.testing.assert_close(padded["embedding"], plain["embedding"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded["attention"]["wsi"][:, :N_PATCHES], plain["attention"]["wsi"])
    fusion.n_prompt_classes = N_CLASSES
    # the order of the prompts within each class
    order = torch.cat([torch.randperm(N_PROMPTS) + k * N_PROMPTS for k in range(N_CLASSES)])
    permuted = {"wsi": tokens["wsi"], "text": tokens["text"][:, order]}
    assert_same_outputs(run(fusion, permuted, {"wsi": masks["wsi"], "text": masks["text"][:, order]}), reference)
    # swapping two classes' prompt blocks swaps their similarity columns and nothing else
    blocks = torch.cat([torch.arange(N_PROMPTS) + k * N_PROMPTS for k in (1, 0, 2)])
    swapped = run(
        fusion,
        {"wsi": tokens["wsi"], "text": tokens["text"][:, blocks]},
        {"wsi": masks["wsi"], "text": masks["text"][:, blocks]},
    )
    torch.testing.assert_close(swapped["embedding"], reference["embedding"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(swapped["slide_text_similarity"], reference["slide_text_similarity"][:, [1, 0, 2]])
    # a real change of one valid prompt changes the output of that sample only
    changed = {"wsi": tokens["wsi"], "text": tokens["text"].clone()}
    changed["text"][0, 0] += 1.0
    out = run(fusion, changed, masks)
    assert not torch.allclose(out["embedding"][0], reference["embedding"][0])
    assert not torch.allclose(out["slide_text_similarity"][0], reference["slide_text_similarity"][0])
    torch.testing.assert_close(out["embedding"][1:], reference["embedding"][1:])


@pytest.mark.parametrize("keep_ratio", [1.0, 0.5])
def test_slide_text_similarity_matches_a_hand_computation(keep_ratio: float) -> None:
    """Cosine between the projected pooled patches and each class's projected mean over its valid prompts."""
    fusion = make_hmf(keep_ratio)
    tokens, masks = prompt_batch()
    out = run(fusion, tokens, masks)
    similarity, mask = out["slide_text_similarity"], out["slide_text_mask"]
    assert similarity.shape == mask.shape == (3, N_CLASSES)
    assert mask.tolist() == [[True] * 3, [True] * 3, [True, True, False]]
    with torch.no_grad():
        text = tokens["text"].masked_fill(~masks["text"][..., None], 0.0)
        context = torch.cat([text, fusion.register.expand(3, -1, -1)], dim=1)
        context_mask = torch.cat([masks["text"], torch.ones(3, 1, dtype=torch.bool)], dim=1)
        context, patches, kept = fusion.bi_cross(context, context_mask, tokens["wsi"], masks["wsi"])
        slide = fusion.patch_pool(patches, kept)[0]
        for b in range(3):
            for k in range(N_CLASSES):
                rows = [k * N_PROMPTS + p for p in range(N_PROMPTS) if masks["text"][b, k * N_PROMPTS + p]]
                if not rows:
                    assert similarity[b, k] == 0
                    continue
                class_text = fusion.align_text(context[b, rows].mean(dim=0))
                expected = torch.nn.functional.cosine_similarity(fusion.align_slide(slide[b]), class_text, dim=0)
                torch.testing.assert_close(similarity[b, k], expected, rtol=1e-5, atol=1e-6)


def test_keep_ratio_one_equals_the_unfiltered_output() -> None:
    """A ratio below 1 that keeps every patch (ceil(0.999 n) = n) runs the filter and gives the unfiltered output."""
    tokens, masks = prompt_batch()
    assert_same_outputs(run(make_hmf(0.999), tokens, masks), run(make_hmf(1.0), tokens, masks))


@pytest.mark.parametrize("keep_ratio", [0.3, 0.5, 0.8])
def test_filter_keeps_the_top_text_attended_patches(keep_ratio: float) -> None:
    """Kept patches = the ceil(ratio * n_valid) highest step-1 attentions of the reference MultiheadAttention
    (averaged over heads and valid context tokens); the others get zero pooling attention."""
    fusion = make_hmf(keep_ratio)
    text_to_patch, _ = with_mha(fusion)
    tokens, masks = prompt_batch()
    attention = run(fusion, tokens, masks)["attention"]["wsi"]
    text = tokens["text"]
    with torch.no_grad():
        context = torch.cat([text, fusion.register.expand(3, -1, -1)], dim=1)
        context_mask = torch.cat([masks["text"], torch.ones(3, 1, dtype=torch.bool)], dim=1)
        weights = text_to_patch(context, tokens["wsi"], tokens["wsi"], key_padding_mask=~masks["wsi"])[1]
    for b in range(3):
        n_valid = int(masks["wsi"][b].sum())
        scores = weights[b][context_mask[b]].mean(dim=0)[:n_valid]
        expected = set(scores.argsort(descending=True)[: math.ceil(keep_ratio * n_valid - 1e-9)].tolist())
        assert set(attention[b].nonzero().squeeze(1).tolist()) == expected
        torch.testing.assert_close(attention[b].sum(), torch.tensor(1.0))


def test_filtered_patches_do_not_reach_the_pool() -> None:
    """With the filter on, the values of dropped patches after step 2 no longer matter: moving them changes
    neither the embedding nor the similarity, as long as the ranking (from step 1) is kept."""
    fusion = make_hmf(0.5)
    tokens, masks = prompt_batch()
    with torch.no_grad():
        out = fusion(tokens, masks)
        dropped = masks["wsi"] & (out["attention"]["wsi"] == 0)
        assert dropped.any()
        original_step2 = fusion.patch_to_context.forward

        def noisy(query, context, key_mask, **kwargs):
            update, weights = original_step2(query, context, key_mask, **kwargs)
            return update + 100.0 * dropped[..., None], weights

        fusion.patch_to_context.forward = noisy
        moved = fusion(tokens, masks)
    assert_same_outputs(moved, out)


def test_top_patch_mask_counts() -> None:
    scores = torch.tensor([[0.1, 0.4, 0.3, 0.2, 9.0], [5.0, 1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True, False], [True, True, True, False, False]])
    assert top_patch_mask(scores, mask, 0.5).tolist() == [
        [False, True, True, False, False],
        [True, True, False, False, False],  # ceil(1.5) = 2; a tie goes to the earlier patch
    ]
    assert top_patch_mask(scores, mask, 0.01).sum(dim=1).tolist() == [1, 1]
    assert top_patch_mask(torch.zeros(1, 10), torch.ones(1, 10, dtype=torch.bool), 0.3).sum() == 3  # not 4


def test_alignment_needs_patches_and_prompts() -> None:
    fusion = make_hmf()
    tokens, masks = prompt_batch()
    assert "slide_text_similarity" not in run(fusion, {"text": tokens["text"]}, {"text": masks["text"]})
    assert "slide_text_similarity" not in run(fusion, {"wsi": tokens["wsi"]}, {"wsi": masks["wsi"]})
    no_text = {"wsi": masks["wsi"], "text": torch.zeros(3, 1, dtype=torch.bool)}  # text removed for everyone
    assert "slide_text_similarity" not in run(fusion, {"wsi": tokens["wsi"], "text": torch.zeros(3, 1, DIM)}, no_text)
    masks["wsi"][1] = False
    assert not run(fusion, tokens, masks)["slide_text_mask"][1].any()


def test_ill_arg() -> None:
    with pytest.raises(ValueError, match="keep_ratio"):
        BiCrossFusion(("wsi", "text"), DIM, n_heads=2, keep_ratio=0.0)
    with pytest.raises(ValueError, match="keep_ratio"):
        BiCrossFusion(("wsi", "text"), DIM, n_heads=2, keep_ratio=1.5)
    with pytest.raises(ValueError, match="n_prompt_classes"):
        BiCrossFusion(("wsi", "omics"), DIM, n_heads=2, n_prompt_classes=3)
    tokens, masks = prompt_batch()
    fusion = BiCrossFusion(("wsi", "text"), DIM, n_heads=2, n_prompt_classes=4)
    with pytest.raises(ValueError, match="equally many prompts"):
        fusion(tokens, masks)

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

"""TaskLoss auxiliary terms: slide and alignment losses added with their weights, only when the model reports
them; the alignment of a flat classification model computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_ext.engines.task_loss import TaskLoss

LOGITS = torch.tensor([[1.0, -0.5, 0.2], [0.1, 0.3, -1.0]])
LABEL = torch.tensor([2, 0])


def test_without_auxiliary_outputs_the_loss_is_unchanged() -> None:
    base = F.cross_entropy(LOGITS, LABEL)
    assert torch.equal(TaskLoss("staging")({"logits": LOGITS}, {"label": LABEL}), base)
    assert torch.equal(TaskLoss("staging", alignment_weight=0.0)({"logits": LOGITS}, {"label": LABEL}), base)


@pytest.mark.parametrize(("slide_weight", "alignment_weight"), [(1.0, 1.0), (0.5, 2.0), (0.0, 0.0)])
def test_model_reported_terms_are_weighted(slide_weight: float, alignment_weight: float) -> None:
    pred = {"logits": LOGITS, "slide_loss": torch.tensor(0.7), "alignment_loss": torch.tensor(1.3)}
    loss = TaskLoss("staging", slide_weight=slide_weight, alignment_weight=alignment_weight)(pred, {"label": LABEL})
    expected = F.cross_entropy(LOGITS, LABEL) + slide_weight * 0.7 + alignment_weight * 1.3
    torch.testing.assert_close(loss, expected)


def test_flat_model_alignment_by_hand() -> None:
    similarity = torch.tensor([[0.2, -0.1, 0.9], [0.4, 0.5, 0.1]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    pred = {"logits": LOGITS, "slide_text_similarity": similarity, "slide_text_mask": mask}
    loss = TaskLoss("classification", alignment_weight=0.5, alignment_temperature=0.1)(pred, {"label": LABEL})
    row0 = -(0.9 / 0.1) + torch.logsumexp(similarity[0] / 0.1, 0)
    row1 = -(0.4 / 0.1) + torch.logsumexp(similarity[1, :2] / 0.1, 0)
    torch.testing.assert_close(loss, F.cross_entropy(LOGITS, LABEL) + 0.5 * (row0 + row1) / 2)


def test_slide_level_similarities_are_left_to_the_model() -> None:
    """[B, S, K] similarities of a slide -> patient model are not aligned with patient labels."""
    pred = {"logits": LOGITS, "slide_text_similarity": torch.rand(2, 4, 5)}
    torch.testing.assert_close(TaskLoss("staging")(pred, {"label": LABEL}), F.cross_entropy(LOGITS, LABEL))


def test_mismatched_prompt_classes() -> None:
    pred = {"logits": LOGITS, "slide_text_similarity": torch.rand(2, 4)}
    with pytest.raises(ValueError, match="4 prompt classes but the logits 3"):
        TaskLoss("classification")(pred, {"label": LABEL})

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

"""Run a model over a dataset and collect one prediction row per patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader
from torch.utils.data import Dataset

from monai_ext.data.collate import collate_multimodal
from monai_ext.engines.prepare_batch import MultimodalPrepareBatch


@torch.inference_mode()
def predict(model: torch.nn.Module, data: Dataset, *, device: str | torch.device = "cpu") -> pd.DataFrame:
    """Predictions of ``model`` (eval mode) for every patient of ``data``, one at a time (full bags).

    Returns:
        DataFrame with ``case_id``, the targets present (``label``, ``time``, ``event``, ``bin``), and the outputs
        present: ``risk``, ``prob_<k>`` per class, ``pred`` (argmax class).
    """
    model.eval().to(device)
    prepare = MultimodalPrepareBatch()
    rows = []
    for batch in DataLoader(data, batch_size=1, shuffle=False, collate_fn=collate_multimodal):
        inputs, targets = prepare(batch, device)
        output = model(inputs)
        row = {"case_id": batch["case_id"][0]}
        row.update({key: float(value[0]) for key, value in targets.items()})
        if "risk" in output:
            row["risk"] = float(output["risk"][0])
        if "probs" in output:
            probs = output["probs"][0].float().cpu().numpy()
            row.update({f"prob_{k}": float(p) for k, p in enumerate(probs)})
            row["pred"] = int(np.argmax(probs))
        rows.append(row)
    return pd.DataFrame(rows)

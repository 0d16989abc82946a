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

"""Ignite metrics for MONAI bundles: C-index, AUC, balanced accuracy, macro F1, quadratic kappa and ECE.

Each metric stores the epoch's predictions and targets (``ignite.metrics.EpochMetric``) and computes the NumPy
function of ``monai_ext.metrics`` once at the end of the epoch. Under ``torch.distributed`` the stored tensors are
gathered from every process, shards of different sizes included (a validation set split without padding), and
every process computes the same value; with the NCCL backend pass ``device=idist.device()``.

The engine output reaches a metric through ``output_transform`` as ``(y_pred, y)``: MONAI's
``monai.handlers.from_engine(["pred", "label"])`` works for the classification metrics, batched or decollated.
Survival targets are ``y = [B, 2]`` holding (time, event); ``SurvivalOutputTransform`` builds them from dict keys.

Example (bundle config)::

    "val_key_metric": {"val_cindex": {
        "_target_": "monai_ext.metrics.ignite.CIndexMetric",
        "output_transform": {"_target_": "monai_ext.metrics.ignite.SurvivalOutputTransform",
                             "pred_key": "risk", "time_key": "time", "event_key": "event"}}}
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import EpochMetric
from scipy.special import expit, softmax

from monai_ext.metrics.classification import (
    balanced_accuracy,
    expected_calibration_error,
    macro_f1,
    quadratic_weighted_kappa,
    roc_auc,
)
from monai_ext.metrics.survival import concordance_index, risk_from_hazards

__all__ = [
    "AUCMetric",
    "BalancedAccuracyMetric",
    "CIndexMetric",
    "ECEMetric",
    "KappaMetric",
    "MacroF1Metric",
    "SurvivalOutputTransform",
]


def _identity(output: Any) -> Any:
    """Default ``output_transform``: the engine output is already ``(y_pred, y)``."""
    return output


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` ``[n_rank, ...]`` from every process; shards may differ in length."""
    world_size = idist.get_world_size()
    if world_size == 1:
        return tensor
    sizes = idist.all_gather(torch.tensor([tensor.shape[0]], device=tensor.device))
    shapes = [[int(n), *tensor.shape[1:]] for n in sizes]
    return torch.cat(idist.all_gather_tensors_with_shapes(tensor, shapes), dim=0)


def _lookup(output: Mapping, key: str) -> Any:
    """``output[key]``, following dots into nested mappings (``"label.time"``)."""
    value: Any = output
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"engine output has no key {key!r} (keys at this level: {list(value)[:10]})")
        value = value[part]
    return value


class SurvivalOutputTransform:
    """Turn an engine output into ``(risk, y)`` for ``CIndexMetric``, ``y = [B, 2]`` holding (time, event).

    Works on a dict of batched tensors and on MONAI's decollated list of per-sample dicts.

    Args:
        pred_key: key of the risk ``[B]`` (or hazards ``[B, T]``); dots index nested dicts.
        time_key: key of the follow-up times ``[B]``.
        event_key: key of the event indicators ``[B]`` (1 = event observed).
    """

    def __init__(self, pred_key: str = "risk", time_key: str = "time", event_key: str = "event") -> None:
        self.keys = (pred_key, time_key, event_key)

    def __call__(self, output: Mapping | Sequence[Mapping]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(y_pred [B] or [B, T], y [B, 2])``."""
        if isinstance(output, Mapping):
            pred, time, event = (torch.as_tensor(_lookup(output, k)) for k in self.keys)
        else:
            pred, time, event = (torch.stack([torch.as_tensor(_lookup(o, k)) for o in output]) for k in self.keys)
        batch = pred.shape[0]
        y = torch.stack([time.reshape(batch).double(), event.reshape(batch).double()], dim=1)
        return pred.detach().double(), y


class _ArrayEpochMetric(EpochMetric):
    """``EpochMetric`` that gathers uneven shards and evaluates ``_score`` on NumPy arrays on every process."""

    def __init__(self, output_transform: Callable, device: str | torch.device) -> None:
        super().__init__(self._compute, output_transform=output_transform, check_compute_fn=False, device=device)

    def _compute(self, y_pred: torch.Tensor, y: torch.Tensor) -> float:
        return self._score(y_pred.detach().cpu().double().numpy(), y.detach().cpu().numpy())

    @abstractmethod
    def _score(self, y_pred: np.ndarray, y: np.ndarray) -> float:
        """The metric of the whole epoch's ``y_pred`` and ``y`` as NumPy arrays."""

    def compute(self) -> float:
        """Metric over everything seen since the last reset, gathered from all processes."""
        if not self._predictions:
            raise NotComputableError(f"{type(self).__name__} must have at least one example before it can be computed")
        if self._result is None:
            y_pred = _gather(torch.cat(self._predictions, dim=0))
            y = _gather(torch.cat(self._targets, dim=0))
            self._result = float(self.compute_fn(y_pred, y))
        return self._result


def _class_labels(y: np.ndarray) -> np.ndarray:
    """Class indices from ``[N]`` labels or ``[N, C]`` one-hot targets."""
    return y.argmax(axis=1) if y.ndim == 2 else y


def _predicted_labels(y_pred: np.ndarray) -> np.ndarray:
    """Class indices from ``[N]`` predicted labels or ``[N, C]`` scores."""
    return y_pred.argmax(axis=1) if y_pred.ndim == 2 else y_pred


def _probabilities(y_pred: np.ndarray, from_logits: bool) -> np.ndarray:
    """Softmax over classes (``[N, C]``) or sigmoid (``[N]``) when the model output is logits."""
    if not from_logits:
        return y_pred
    return expit(y_pred) if y_pred.ndim == 1 else softmax(y_pred, axis=1)


class CIndexMetric(_ArrayEpochMetric):
    """Harrell's C-index over the epoch (``monai_ext.metrics.survival.concordance_index``).

    Harrell et al., JAMA 1982 (https://doi.org/10.1001/jama.1982.03320430047030).

    ``y_pred``: risk ``[B]`` (higher = earlier event) or discrete hazards ``[B, T]`` in [0, 1], turned into
    MCAT's risk ``-sum(cumprod(1 - h))``. ``y``: ``[B, 2]`` (time, event), e.g. from ``SurvivalOutputTransform``.

    Args:
        output_transform: maps the engine output to ``(y_pred, y)``.
        tied_tol: risks that differ by at most this much are tied.
        device: where the epoch's tensors are stored.
    """

    def __init__(
        self,
        output_transform: Callable = _identity,
        tied_tol: float = 1e-8,
        device: str | torch.device = "cpu",
    ) -> None:
        self.tied_tol = tied_tol
        super().__init__(output_transform, device)

    def _score(self, y_pred: np.ndarray, y: np.ndarray) -> float:
        if y.ndim != 2 or y.shape[1] != 2:
            raise ValueError(f"CIndexMetric needs y of shape [B, 2] holding (time, event), got {y.shape}")
        if y_pred.ndim == 2:
            if y_pred.min() < 0 or y_pred.max() > 1:
                raise ValueError("CIndexMetric: 2-D y_pred is read as hazards in [0, 1]; pass sigmoid(logits) or risk")
            y_pred = risk_from_hazards(y_pred)
        return concordance_index(y[:, 0], y[:, 1], y_pred, tied_tol=self.tied_tol)


class AUCMetric(_ArrayEpochMetric):
    """ROC AUC over the epoch: binary, or one-vs-rest macro (``monai_ext.metrics.classification.roc_auc``).

    Fawcett, Pattern Recognit Lett 2006 (https://doi.org/10.1016/j.patrec.2005.10.010).

    ``y_pred``: probabilities ``[B, C]`` or positive-class scores ``[B]``. ``y``: labels ``[B]`` or one-hot.

    Args:
        output_transform: maps the engine output to ``(y_pred, y)``.
        from_logits: apply softmax (``[B, C]``) or sigmoid (``[B]``) to ``y_pred`` first.
        device: where the epoch's tensors are stored.
    """

    def __init__(
        self,
        output_transform: Callable = _identity,
        from_logits: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        self.from_logits = from_logits
        super().__init__(output_transform, device)

    def _score(self, y_pred: np.ndarray, y: np.ndarray) -> float:
        return roc_auc(_class_labels(y), _probabilities(y_pred, self.from_logits))


class BalancedAccuracyMetric(_ArrayEpochMetric):
    """Balanced accuracy over the epoch (``monai_ext.metrics.classification.balanced_accuracy``).

    Brodersen et al., ICPR 2010 (https://doi.org/10.1109/ICPR.2010.764).

    ``y_pred``: scores ``[B, C]`` (argmax is taken) or labels ``[B]``. ``y``: labels ``[B]`` or one-hot.

    Args:
        output_transform: maps the engine output to ``(y_pred, y)``.
        device: where the epoch's tensors are stored.
    """

    def __init__(self, output_transform: Callable = _identity, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform, device)

    def _score(self, y_pred: np.ndarray, y: np.ndarray) -> float:
        return balanced_accuracy(_class_labels(y), _predicted_labels(y_pred))


class MacroF1Metric(_ArrayEpochMetric):
    """Macro F1 over the epoch (``monai_ext.metrics.classification.macro_f1``).

    Sokolova & Lapalme, Inf Process Manag 2009 (https://doi.org/10.1016/j.ipm.2009.03.002).

    ``y_pred``: scores ``[B, C]`` (argmax is taken) or labels ``[B]``. ``y``: labels ``[B]`` or one-hot.

    Args:
        output_transform: maps the engine output to ``(y_pred, y)``.
        num_classes: number of classes, so that classes absent from the epoch still count (as F1 = 0).
        device: where the epoch's tensors are stored.
    """

    def __init__(
        self,
        output_transform: Callable = _identity,
        num_classes: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_classes = num_classes
        super().__init__(output_transform, device)

    def _score(self, y_pred: np.ndarray, y: np.ndarray) -> float:
        return macro_f1(_class_labels(y), _predicted_labels(y_pred), num_classes=self.num_classes)


class KappaMetric(_ArrayEpochMetric):
    """Quadratic-weighted Cohen's kappa over the epoch (``quadratic_weighted_kappa``), for ordinal labels.

    Cohen, Psychol Bull 1968 (https://doi.org/10.1037/h0026256).

    ``y_pred``: scores ``[B, C]`` (argmax is taken) or labels ``[B]``. ``y``: labels ``[B]`` or one-hot.

    Args:
        output_transform: maps the engine output to ``(y_pred, y)``.
        num_classes: number of ordinal classes (default: largest label + 1).
        device: where the epoch's tensors are stored.
    """

    def __init__(
        self,
        output_transform: Callable = _identity,
        num_classes: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_classes = num_classes
        super().__init__(output_transform, device)

    def _score(self, y_pred: np.ndarray, y: np.ndarray) -> float:
        return quadratic_weighted_kappa(_class_labels(y), _predicted_labels(y_pred), num_classes=self.num_classes)


class ECEMetric(_ArrayEpochMetric):
    """Top-label expected calibration error over the epoch (``expected_calibration_error``).

    Guo et al., ICML 2017 (https://arxiv.org/abs/1706.04599).

    ``y_pred``: probabilities ``[B, C]`` or positive-class probabilities ``[B]``. ``y``: labels ``[B]`` or one-hot.

    Args:
        output_transform: maps the engine output to ``(y_pred, y)``.
        n_bins: number of equal-width confidence bins.
        from_logits: apply softmax (``[B, C]``) or sigmoid (``[B]``) to ``y_pred`` first.
        device: where the epoch's tensors are stored.
    """

    def __init__(
        self,
        output_transform: Callable = _identity,
        n_bins: int = 15,
        from_logits: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        self.n_bins = n_bins
        self.from_logits = from_logits
        super().__init__(output_transform, device)

    def _score(self, y_pred: np.ndarray, y: np.ndarray) -> float:
        return expected_calibration_error(_class_labels(y), _probabilities(y_pred, self.from_logits), self.n_bins)

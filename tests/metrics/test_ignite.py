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

"""Ignite metric wrappers run in a tiny Engine (and over two gloo processes) against the direct functions."""

from __future__ import annotations

import socket

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from monai.handlers import from_engine

from monai_ext.metrics.classification import (
    balanced_accuracy,
    expected_calibration_error,
    macro_f1,
    quadratic_weighted_kappa,
    roc_auc,
)
from monai_ext.metrics.ignite import (
    AUCMetric,
    BalancedAccuracyMetric,
    CIndexMetric,
    ECEMetric,
    KappaMetric,
    MacroF1Metric,
    SurvivalOutputTransform,
)
from monai_ext.metrics.survival import concordance_index, risk_from_hazards

BATCH_SIZES = (5, 1, 7, 3)


def _classification_batches(seed: int, n_classes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Uneven batches of (softmax probabilities [B, C], labels [B]); every class occurs."""
    rng = np.random.default_rng(seed)
    batches = []
    for i, size in enumerate(BATCH_SIZES):
        labels = (np.arange(size) + i) % n_classes
        logits = rng.normal(0, 1, (size, n_classes)) + np.eye(n_classes)[labels]
        prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        batches.append((torch.from_numpy(prob), torch.from_numpy(labels)))
    return batches


def _survival_batches(seed: int, n_bins: int | None) -> list[dict[str, torch.Tensor]]:
    """Uneven batches of dict outputs: risk [B] (or hazards [B, T]), integer times (ties) and events."""
    rng = np.random.default_rng(seed)
    batches = []
    for size in BATCH_SIZES:
        pred = rng.random((size, n_bins)) if n_bins else rng.integers(0, 4, size).astype(float)
        batches.append(
            {
                "risk": torch.from_numpy(pred),
                "time": torch.from_numpy(rng.integers(1, 6, size).astype(float)),
                "event": torch.from_numpy(rng.integers(0, 2, size)),
            }
        )
    batches[0]["event"][0] = 1
    return batches


def _run(metric, batches: list) -> float:
    engine = Engine(lambda engine, batch: batch)
    metric.attach(engine, "value")
    return engine.run(batches).metrics["value"]


@pytest.mark.parametrize("n_bins", [None, 4])
def test_cindex_metric_matches_function(n_bins):
    batches = _survival_batches(0, n_bins)
    risk = torch.cat([b["risk"] for b in batches]).numpy()
    if n_bins:
        risk = risk_from_hazards(risk)
    time = torch.cat([b["time"] for b in batches]).numpy()
    event = torch.cat([b["event"] for b in batches]).numpy()
    expected = concordance_index(time, event, risk)
    assert _run(CIndexMetric(output_transform=SurvivalOutputTransform()), batches) == pytest.approx(expected)
    decollated = [[{k: v[i] for k, v in b.items()} for i in range(len(b["time"]))] for b in batches]
    assert _run(CIndexMetric(output_transform=SurvivalOutputTransform()), decollated) == pytest.approx(expected)


def test_survival_output_transform_follows_nested_keys():
    batch = _survival_batches(1, None)[0]
    nested = {"pred": batch["risk"], "label": {"time": batch["time"], "event": batch["event"]}}
    risk, y = SurvivalOutputTransform("pred", "label.time", "label.event")(nested)
    torch.testing.assert_close(risk, batch["risk"].double())
    torch.testing.assert_close(y, torch.stack([batch["time"], batch["event"].double()], dim=1))
    with pytest.raises(KeyError, match=r"label\.days"):
        SurvivalOutputTransform("pred", "label.days", "label.event")(nested)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classification_metrics_match_functions(n_classes):
    batches = _classification_batches(n_classes, n_classes)
    prob = torch.cat([b[0] for b in batches]).numpy()
    labels = torch.cat([b[1] for b in batches]).numpy()
    pred = prob.argmax(axis=1)
    cases = [
        (AUCMetric(), roc_auc(labels, prob)),
        (AUCMetric(from_logits=True, output_transform=lambda o: (torch.log(o[0]), o[1])), roc_auc(labels, prob)),
        (BalancedAccuracyMetric(), balanced_accuracy(labels, pred)),
        (MacroF1Metric(num_classes=n_classes + 1), macro_f1(labels, pred, num_classes=n_classes + 1)),
        (KappaMetric(num_classes=n_classes), quadratic_weighted_kappa(labels, pred, num_classes=n_classes)),
        (ECEMetric(n_bins=10), expected_calibration_error(labels, prob, n_bins=10)),
    ]
    for metric, expected in cases:
        assert _run(metric, batches) == pytest.approx(expected, abs=1e-12), type(metric).__name__


def test_monai_decollated_output_and_one_hot_labels():
    """MONAI's from_engine on decollated per-sample dicts (ignite unrolls them) with one-hot labels."""
    batches = _classification_batches(3, 3)
    decollated = [[{"pred": p[i], "label": torch.eye(3)[y[i]]} for i in range(len(y))] for p, y in batches]
    prob = torch.cat([b[0] for b in batches]).numpy()
    labels = torch.cat([b[1] for b in batches]).numpy()
    metric = AUCMetric(output_transform=from_engine(["pred", "label"]))
    assert _run(metric, decollated) == pytest.approx(roc_auc(labels, prob), abs=1e-12)


def test_metric_resets_every_epoch():
    """Epoch e flips the risks when e is even: each epoch's value must be computed from that epoch alone."""
    batches = _survival_batches(2, None)
    engine = Engine(lambda e, b: {**b, "risk": b["risk"] * (-1) ** e.state.epoch})
    CIndexMetric(output_transform=SurvivalOutputTransform()).attach(engine, "cindex")
    seen = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(e.state.metrics["cindex"]))
    engine.run(batches, max_epochs=2)
    args = [torch.cat([b[k] for b in batches]).numpy() for k in ("time", "event", "risk")]
    assert seen == pytest.approx([concordance_index(*args[:2], -args[2]), concordance_index(*args)])


def test_ill_arg():
    with pytest.raises(NotComputableError):
        CIndexMetric().compute()
    batch = (torch.rand(4), torch.rand(4))
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        _run(CIndexMetric(), [batch])
    with pytest.raises(ValueError, match="hazards"):
        _run(CIndexMetric(), [(torch.randn(4, 3) * 5, torch.ones(4, 2))])


def _ddp_worker(local_rank: int, batches: list, expected: dict[str, float]) -> None:
    """Rank r takes batches r, r + 2, ...: shards of different lengths (5 + 7 vs 1 + 3 samples)."""
    shard = batches[idist.get_rank() :: idist.get_world_size()]
    for metric, name in ((AUCMetric(), "auc"), (BalancedAccuracyMetric(), "bacc")):
        value = _run(metric, shard)
        assert value == pytest.approx(expected[name], abs=1e-12), (idist.get_rank(), name, value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_with_uneven_shards():
    batches = _classification_batches(4, 3)
    prob = torch.cat([b[0] for b in batches]).numpy()
    labels = torch.cat([b[1] for b in batches]).numpy()
    expected = {"auc": roc_auc(labels, prob), "bacc": balanced_accuracy(labels, prob.argmax(axis=1))}
    # fork: the workers inherit the imported modules instead of importing torch, ignite and this file again
    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=_free_port(), start_method="fork") as parallel:
        parallel.run(_ddp_worker, batches, expected)

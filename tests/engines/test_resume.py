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

"""Resumable training: per-epoch seeding, checkpointable validation state, the newest readable checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver, EarlyStopHandler, stopping_fn_from_metric
from torch.utils.data import DataLoader

from monai_ext.engines.resume import EpochSeeder, EpochShuffleSampler, ValidationProgress, latest_checkpoint


class _Epochs:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def _draws(start_epoch: int, n_epochs: int, noise_before: int) -> dict[int, list[float]]:
    """Batches (order of a shuffled DataLoader) and a global random draw seen in each epoch of a run."""
    torch.rand(noise_before)  # whatever happened earlier in the process
    data = list(range(6))
    sampler = EpochShuffleSampler(data, seed=7)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    draws: dict[int, list[float]] = {}

    def step(engine: Engine, batch: torch.Tensor) -> None:
        draws.setdefault(engine.state.epoch, []).extend([*batch.tolist(), float(torch.rand(1))])

    engine = Engine(step)
    EpochSeeder(7, sampler=sampler).attach(engine)
    if start_epoch:  # what CheckpointLoader restores
        engine.load_state_dict(
            {"epoch": start_epoch, "max_epochs": start_epoch + n_epochs, "epoch_length": len(loader)}
        )
    engine.run(loader, max_epochs=start_epoch + n_epochs)
    return draws


def test_epoch_draws_do_not_depend_on_history() -> None:
    full = _draws(0, 3, noise_before=0)
    resumed = _draws(2, 1, noise_before=13)  # as a run resumed after epoch 2, in a fresh process
    assert sorted(resumed) == [3] and resumed[3] == full[3]
    assert full[1] != full[2]


def test_shuffled_loader_alone_is_not_resumable() -> None:
    """Why the sampler exists: a seeded ``shuffle=True`` loader gives another order after a resume (this test
    documents the pitfall; if it ever fails, PyTorch changed its sampler and the sampler may be simplified)."""

    def orders(start_epoch: int) -> list[int]:
        generator = torch.Generator()
        loader = DataLoader(list(range(6)), batch_size=2, shuffle=True, generator=generator)
        seen: list[int] = []
        engine = Engine(lambda engine, batch: seen.extend(batch.tolist()) if engine.state.epoch == 3 else None)
        engine.add_event_handler(Events.EPOCH_STARTED, lambda engine: generator.manual_seed(engine.state.epoch))
        if start_epoch:
            engine.load_state_dict({"epoch": start_epoch, "max_epochs": 3, "epoch_length": len(loader)})
        engine.run(loader, max_epochs=3)
        return seen

    assert orders(0) != orders(2)


def test_epoch_shuffle_sampler_is_a_permutation_per_epoch() -> None:
    sampler = EpochShuffleSampler(range(10), seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second and len(sampler) == 10
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_epoch_seeder_sets_dataset_epoch() -> None:
    dataset = _Epochs()
    engine = Engine(lambda engine, batch: None)
    EpochSeeder(0, dataset=dataset).attach(engine)
    engine.run([0], max_epochs=3)
    assert dataset.epochs == [1, 2, 3]


def _validation(tmp_path: Path, scores: list[float]) -> tuple[Engine, Engine, EarlyStopHandler, CheckpointSaver]:
    """A trainer whose evaluator reports ``scores`` (one per epoch), with early stopping and a best saver."""
    trainer = Engine(lambda engine, batch: None)
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1.0, -1
    evaluator.state.key_metric_name = "score"

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _score(engine: Engine) -> None:
        score = scores[trainer.state.epoch - 1]
        engine.state.metrics["score"] = score
        if score > engine.state.best_metric:
            engine.state.best_metric, engine.state.best_metric_epoch = score, trainer.state.epoch

    stop = EarlyStopHandler(patience=2, score_function=stopping_fn_from_metric("score"), trainer=trainer)
    stop.attach(evaluator)
    saver = CheckpointSaver(str(tmp_path), {"model": torch.nn.Linear(1, 1)}, save_key_metric=True)
    saver.attach(evaluator)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: evaluator.run([0]))
    return trainer, evaluator, stop, saver


def test_validation_progress_round_trip(tmp_path: Path) -> None:
    trainer, evaluator, stop, saver = _validation(tmp_path / "a", [0.5, 0.7, 0.6])
    trainer.run([0], max_epochs=3)
    state = ValidationProgress(evaluator, stop, saver).state_dict()
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    _, fresh_evaluator, fresh_stop, fresh_saver = _validation(tmp_path / "b", [0.5, 0.7, 0.6])
    ValidationProgress(fresh_evaluator, fresh_stop, fresh_saver).load_state_dict(loaded)
    assert (fresh_evaluator.state.best_metric, fresh_evaluator.state.best_metric_epoch) == (0.7, 2)
    assert (fresh_stop._handler.counter, fresh_stop._handler.best_score) == (1, 0.7)
    assert fresh_saver._key_metric_checkpoint.state_dict() == saver._key_metric_checkpoint.state_dict()


def test_validation_progress_refuses_missing_handlers(tmp_path: Path) -> None:
    trainer, evaluator, stop, saver = _validation(tmp_path, [0.5])
    trainer.run([0], max_epochs=1)
    state = ValidationProgress(evaluator, stop, saver).state_dict()
    with pytest.raises(ValueError, match="early-stopping"):
        ValidationProgress(evaluator, None, saver).load_state_dict(state)
    with pytest.raises(ValueError, match="best-model"):
        ValidationProgress(evaluator, stop, None).load_state_dict(state)


def test_latest_checkpoint_skips_unreadable(tmp_path: Path) -> None:
    for epoch in (2, 10):
        torch.save({"epoch": epoch}, tmp_path / f"resume_checkpoint_epoch={epoch}.pt")
    (tmp_path / "resume_checkpoint_epoch=11.pt").write_bytes(b"PK\x03\x04 cut short")  # a save killed midway
    (tmp_path / "other_checkpoint_epoch=99.pt").write_bytes(b"")
    assert Path(latest_checkpoint(tmp_path)).name == "resume_checkpoint_epoch=10.pt"


def test_latest_checkpoint_none(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="resume"):
        latest_checkpoint(tmp_path)

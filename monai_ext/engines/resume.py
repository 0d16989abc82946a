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

"""Handlers that make a bundle's training resumable with the same result as an uninterrupted run.

A run killed mid-epoch restarts from the checkpoint written at the end of the last finished epoch. For the
resumed run to continue exactly as the uninterrupted one would have:

- :class:`EpochSeeder` re-seeds torch's global generator (dropout), the training sampler (its order) and the
  dataset's patch sub-sampling from ``(seed, epoch)`` when each epoch starts, so an epoch never depends on how
  many random numbers earlier epochs drew in this process;
- :class:`EpochShuffleSampler` draws each epoch's order from ``(seed, epoch)`` alone. A ``DataLoader`` with
  ``shuffle=True`` cannot do that: an exhausted ``RandomSampler`` iterator draws one more permutation when Ignite
  asks it for the next epoch's first batch, and a new loader iterator draws its base seed from the same
  generator, so an uninterrupted run and a resumed one would see different orders;
- :class:`ValidationProgress` is a checkpointable view of the validation side (the evaluator's best metric and
  its epoch, the early-stopping counter and the best-model saver's list), which Ignite's ``Checkpoint`` saves
  and ``CheckpointLoader`` restores together with the network, optimizer, scheduler and trainer.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch.utils.data import Sampler

__all__ = ["EpochSeeder", "EpochShuffleSampler", "ValidationProgress", "latest_checkpoint"]

logger = logging.getLogger(__name__)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(seed) * 100_003 + int(epoch)


class EpochShuffleSampler(Sampler[int]):
    """A random order of ``range(len(dataset))`` that depends only on ``(seed, epoch)``.

    Args:
        dataset: anything with a length.
        seed: the run's seed.
    """

    def __init__(self, dataset: Sized, seed: int = 0) -> None:
        self.size = len(dataset)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())


class EpochSeeder:
    """Seed an epoch's randomness from ``(seed, epoch)`` when the epoch starts.

    Args:
        seed: the run's seed.
        sampler: the training sampler, told the epoch through its ``set_epoch`` (:class:`EpochShuffleSampler`, or
            a ``DistributedSampler`` under ``torchrun``), or None.
        dataset: a dataset with ``set_epoch(epoch)`` (patch sub-sampling), or None.
    """

    def __init__(self, seed: int, sampler: Any = None, dataset: Any = None) -> None:
        self.seed = int(seed)
        self.sampler = sampler
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        """Run :meth:`__call__` at every ``EPOCH_STARTED`` of ``engine``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        torch.manual_seed(_epoch_seed(self.seed, epoch))
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self.dataset is not None and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class ValidationProgress:
    """The validation state a resumed run needs, as ``state_dict`` / ``load_state_dict`` for Ignite checkpoints.

    Args:
        evaluator: the MONAI evaluator (its ``state.best_metric`` and ``state.best_metric_epoch``).
        early_stop: a MONAI ``EarlyStopHandler`` (its Ignite ``EarlyStopping`` counter and best score), or None.
        best_saver: the MONAI ``CheckpointSaver`` keeping the best model (its list of saved files and scores),
            or None.
    """

    def __init__(self, evaluator: Engine, early_stop: Any = None, best_saver: Any = None) -> None:
        self.evaluator = evaluator
        self.early_stop = early_stop
        self.best_saver = best_saver

    def state_dict(self) -> dict[str, Any]:
        """Plain values only, so that ``torch.load(..., weights_only=True)`` reads them back."""
        state: dict[str, Any] = {
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
        }
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None:
            state["early_stop"] = dict(stopper.state_dict())
        checkpoint = getattr(self.best_saver, "_key_metric_checkpoint", None)
        if checkpoint is not None:
            state["best_saver"] = dict(checkpoint.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        Raises:
            ValueError: the checkpoint holds early-stopping or saver state this run has no handler for.
        """
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        if "early_stop" in state:
            stopper = getattr(self.early_stop, "_handler", None)
            if stopper is None:
                raise ValueError(
                    "the checkpoint has early-stopping state but this run has no early stopping attached to a trainer"
                )
            stopper.load_state_dict(state["early_stop"])
        if "best_saver" in state:
            checkpoint = getattr(self.best_saver, "_key_metric_checkpoint", None)
            if checkpoint is None:
                raise ValueError("the checkpoint has best-model saver state but this run saves no best model")
            checkpoint.load_state_dict(state["best_saver"])


def latest_checkpoint(folder: str | Path, prefix: str = "resume") -> str:
    """The newest readable epoch checkpoint ``<prefix>_checkpoint_epoch=<k>.pt`` in ``folder`` (highest ``k``).

    A file that does not load (a save cut short by a kill) is skipped with a warning and the one before is used.

    Raises:
        FileNotFoundError: no readable checkpoint (nothing to resume from).
    """
    pattern = re.compile(rf"{re.escape(prefix)}_checkpoint_epoch=(\d+)\.pt")
    found = []
    for path in Path(folder).glob(f"{prefix}_*.pt"):
        match = pattern.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    for _, path in sorted(found, reverse=True):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
            logger.warning("skipping unreadable checkpoint %s (%s)", path, err)
            continue
        return str(path)
    raise FileNotFoundError(
        f"no readable {prefix}_checkpoint_epoch=<k>.pt in {folder} to resume from: train without resume first"
    )

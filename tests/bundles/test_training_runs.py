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

"""Training runs beyond the plain one: killed mid-epoch and resumed (same result as uninterrupted), and two
processes with gloo under ``torchrun`` (``multi_gpu_train.json``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_ext.data.collate import collate_multimodal
from monai_ext.engines.bundle_data import load_spec
from monai_ext.metrics.survival import concordance_index
from tests.bundles.conftest import bundle_env, copy_bundle, run_bundle, run_module, train_bundle

NAME = "pathology_survival_multimodal"
SHORT = ["--epochs", "3", "--data#n_folds", "3", "--data#n_bins", "2", "--accumulation_steps", "2"]

KILLER = """
import json, os, signal, sys
import ignite
from monai.bundle import ConfigWorkflow

config, overrides, kill_at = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
workflow = ConfigWorkflow(config_file=config, run_id="training", workflow_type=None, **overrides)
workflow.initialize()
trainer = workflow.parser.get_parsed_content("train#trainer")
event = ignite.engine.Events.ITERATION_COMPLETED(once=kill_at)
trainer.add_event_handler(event, lambda engine: os.kill(os.getpid(), signal.SIGKILL))
workflow.run()
"""


def _overrides(root: Path, demo: Path) -> dict[str, object]:
    values = dict(zip(SHORT[::2], SHORT[1::2], strict=True))
    overrides: dict[str, object] = {key.lstrip("-"): json.loads(value) for key, value in values.items()}
    return {**overrides, "bundle_root": str(root), "dataset_dir": str(demo)}


@pytest.fixture
def demo_dir(trained_bundles: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo cohort built by the session's survival training (reused, not rebuilt)."""
    return train_bundle(NAME, trained_bundles, tmp_path_factory) / "demo_data"


def _final_state(root: Path) -> dict:
    return torch.load(root / "models" / "resume_checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_killed_mid_epoch_then_resumed_matches_uninterrupted(demo_dir: Path, tmp_path: Path) -> None:
    straight = copy_bundle(NAME, tmp_path / "straight")
    run_bundle("run", "training", ["train.json"], straight, "--dataset_dir", str(demo_dir), *SHORT)
    killed = copy_bundle(NAME, tmp_path / "killed")
    n_train = len(load_spec(straight / "models")["split"]["train"])
    script = tmp_path / "kill_mid_epoch.py"
    script.write_text(textwrap.dedent(KILLER))
    config = str(killed / "configs" / "train.json")
    kill_at = n_train + n_train // 2 + 1  # in the middle of epoch 2
    overrides = json.dumps(_overrides(killed, demo_dir))
    result = subprocess.run(
        [sys.executable, str(script), config, overrides, str(kill_at)],
        cwd=killed,
        env=bundle_env(),
        capture_output=True,
        timeout=600,
    )
    assert result.returncode == -9, result.stderr[-3000:]  # SIGKILL, no clean-up
    assert [p.name for p in (killed / "models").glob("resume_*.pt")] == ["resume_checkpoint_epoch=1.pt"]
    run_bundle("run", "training", ["train.json"], killed, "--dataset_dir", str(demo_dir), *SHORT, "--resume", "True")
    expected, resumed = _final_state(straight), _final_state(killed)
    # Ignite's state dict keeps the iteration: 3 full epochs in both runs
    assert resumed["trainer"] == expected["trainer"]
    assert expected["trainer"]["iteration"] == 3 * expected["trainer"]["epoch_length"]
    assert resumed["validation"] == expected["validation"]  # best metric, its epoch, early stopping, saved list
    for key, value in expected["network"].items():
        torch.testing.assert_close(resumed["network"][key], value, rtol=0, atol=0, msg=key)
    best = torch.load(straight / "models" / "model.pt", weights_only=True)
    for key, value in torch.load(killed / "models" / "model.pt", weights_only=True).items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_two_process_gloo_training(demo_dir: Path, tmp_path: Path) -> None:
    root = copy_bundle(NAME, tmp_path / "ddp")
    configs = "[" + ",".join(f"'{root / 'configs' / name}'" for name in ("train.json", "multi_gpu_train.json")) + "]"
    torchrun = [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "monai.bundle",
        "run",
        "training",
    ]
    args = ["--config_file", configs, "--bundle_root", str(root), "--dataset_dir", str(demo_dir), *SHORT]
    run_module([*torchrun, *args], cwd=root)
    spec = load_spec(root / "models")
    state = _final_state(root)
    # each process trained on its half of the patients (DistributedSampler, padded to equal shards)
    assert state["trainer"]["epoch_length"] == math.ceil(len(spec["split"]["train"]) / 2)
    # the validation metric was gathered from both processes' uneven shards: it equals the metric of the best
    # model on the whole validation set
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "train.json"), str(root / "configs" / "evaluate.json")])
    parser["bundle_root"] = str(root)
    parser["dataset_dir"] = str(demo_dir)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    network.eval()
    val = parser.get_parsed_content("data").val
    risks, times, events = [], [], []
    with torch.no_grad():
        for index in range(len(val)):
            batch = collate_multimodal([val[index]])
            inputs = {
                k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in ("time", "event", "bin")
            }
            risks.append(float(network(inputs)["risk"][0]))
            times.append(float(batch["time"][0]))
            events.append(float(batch["event"][0]))
    assert state["validation"]["best_metric"] == pytest.approx(concordance_index(times, events, risks), abs=1e-6)

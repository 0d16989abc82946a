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

"""The config allow-list: what it flags (targets, imports, unsafe builtins, dunders), what it lets through (MONAI
short names, the allowed packages, references and lambdas), and the first-party bundles against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_ext.engines.config_trust import (
    DEFAULT_ALLOWED_PREFIXES,
    UntrustedConfigError,
    check_bundle_configs,
    check_config_targets,
    config_findings,
)

REPO = Path(__file__).resolve().parents[2]
BUNDLES = sorted(path for path in (REPO / "bundles").iterdir() if (path / "configs" / "metadata.json").is_file())

FLAGGED = [
    # (name, config, fragment of the single finding)
    (
        "dotted target elsewhere",
        {"net": {"_target_": "os.system", "command": "id"}},
        "net#_target_: _target_ 'os.system'",
    ),
    ("lookalike prefix", {"net": {"_target_": "monaievil.Net"}}, "resolves to 'monaievil.Net'"),
    ("torch lookalike", {"net": {"_target_": "torchvision.models.resnet50"}}, "'torchvision.models.resnet50'"),
    ("builtin short name", {"net": {"_target_": "eval"}}, "'eval' is not a MONAI component"),
    ("expression target", {"net": {"_target_": "$__import__('os').system"}}, "not a plain dotted name"),
    ("reference target", {"net": {"_target_": "@factory"}}, "not a plain dotted name"),
    ("target in a list", {"handlers": [{"_target_": "subprocess.Popen"}]}, "handlers#0#_target_"),
    ("import", {"imports": ["$import subprocess"]}, "imports#0: '$import subprocess' imports 'subprocess'"),
    ("from import", {"imports": ["$from os import system"]}, "imports 'os'"),
    ("relative import", {"imports": ["$from . import evil"]}, "imports '.'"),
    ("__import__", {"x": "$__import__('os').system('id')"}, "uses the builtin '__import__'"),
    ("eval", {"x": "$eval('1 + 1')"}, "uses the builtin 'eval'"),
    ("open", {"x": "$open('/etc/passwd').read()"}, "uses the builtin 'open'"),
    ("getattr", {"x": "$getattr(@net, 'forward')"}, "uses the builtin 'getattr'"),
    ("dunder escape", {"x": "$@net.forward.__globals__"}, "dunder attribute '__globals__'"),
    ("not python", {"x": "$import ("}, "is not valid Python"),
]
ALLOWED = [
    {"loader": {"_target_": "DataLoader", "dataset": "@ds"}},  # MONAI short name: monai.data.DataLoader
    {"trainer": {"_target_": "SupervisedTrainer"}},
    {"optimizer": {"_target_": "torch.optim.AdamW", "params": "$@network.parameters()"}},
    {"net": {"_target_": "monai_ext.networks.multimodal.MultimodalModel", "modalities": ["wsi"]}},
    {"imports": ["$import torch", "$import torch.distributed", "$import ignite", "$from monai_ext.data import cohort"]},
    {"device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"},
    {"log": "$lambda output: output['loss'].item()", "step": "$@train#trainer.run()"},
    {"text": "a plain string mentioning eval and __import__", "n": 3, "flag": True, "none": None},
]


@pytest.mark.parametrize("name, config, fragment", FLAGGED, ids=[case[0] for case in FLAGGED])
def test_flagged(name, config, fragment):
    findings = config_findings(config, DEFAULT_ALLOWED_PREFIXES)
    assert len(findings) == 1 and fragment in findings[0], findings


@pytest.mark.parametrize("config", ALLOWED)
def test_allowed(config):
    assert config_findings(config, DEFAULT_ALLOWED_PREFIXES) == []
    check_config_targets(config)


def test_every_finding_reported_with_the_file(tmp_path):
    config = {key: value for _, case, _ in FLAGGED for key, value in case.items() if key != "imports"}
    config["imports"] = ["$import subprocess", "$import torch"]
    path = tmp_path / "train.json"
    with pytest.raises(UntrustedConfigError) as err:
        check_config_targets(config, source=path)
    assert str(err.value).startswith(f"{path}: ") and isinstance(err.value, ValueError)
    assert len(err.value.findings) == len(config_findings(config, DEFAULT_ALLOWED_PREFIXES)) >= 4
    assert all(finding in str(err.value) for finding in err.value.findings)
    assert "trust_third_party=True" in str(err.value)


def test_allowed_prefixes_extend_and_restrict():
    config = {"imports": ["$import os"], "net": {"_target_": "torch.nn.Linear"}}
    assert config_findings(config, (*DEFAULT_ALLOWED_PREFIXES, "os.")) == []
    assert len(config_findings(config, ("monai.",))) == 2


@pytest.mark.parametrize("bundle", BUNDLES, ids=[path.name for path in BUNDLES])
def test_first_party_bundles_pass_the_default_allow_list(bundle):
    checked = check_bundle_configs(bundle)
    assert {path.name for path in checked} >= {"train.json", "evaluate.json", "inference.json", "metadata.json"}
    with pytest.raises(UntrustedConfigError) as err:  # and the check does look at them
        check_bundle_configs(bundle, allowed_prefixes=("monai.", "torch.", "ignite."))
    assert all("monai_ext" in finding for finding in err.value.findings)


def test_bundle_folder_check_names_the_file(tmp_path):
    configs = tmp_path / "bundle" / "configs"
    configs.mkdir(parents=True)
    (configs / "metadata.json").write_text(json.dumps({"version": "0.1.0"}))
    (configs / "train.yaml").write_text("net:\n  _target_: builtins.exec\n  source: print('hi')\n")
    with pytest.raises(UntrustedConfigError) as err:
        check_bundle_configs(tmp_path / "bundle")
    assert err.value.findings == ["train.yaml: net#_target_: _target_ 'builtins.exec' resolves to 'builtins.exec'"]
    (configs / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json: not a readable JSON/YAML config"):
        check_bundle_configs(tmp_path / "bundle")

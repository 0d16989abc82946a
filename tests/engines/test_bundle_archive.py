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

"""Bundle zips: model-zoo layout, generated folders left out, weights listed in ``large_files.yml`` (checked by
MONAI's own ``download_large_files``), and a zip that ``monai.bundle.load`` / ``download`` turn into the same
working network. Unsafe zips are tested in ``tests/reliability/test_bundle_security.py``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import monai.bundle
import pytest
import torch
import yaml
from monai.apps.utils import HashCheckError
from monai.bundle import ConfigParser

from monai_ext.engines.bundle_archive import (
    LARGE_FILES_NAME,
    BundleArchiveError,
    bundle_members,
    pack_bundle,
    unpack_bundle,
)
from monai_ext.engines.export import example_batch

REPO = Path(__file__).resolve().parents[2]
SURVIVAL = "pathology_survival_multimodal"
# a tiny trained survival network: 2 pathway tokens of 3 genes, 3 clinical features, 8-wide patch features
SPEC = {
    "task": "survival",
    "modalities": ["wsi", "omics", "clinical"],
    "input_dims": {"wsi": 8, "omics": 6, "clinical": 3},
    "n_outputs": 2,
    "pathway_gene_index": [[0, 1, 2], [3, 4, 5]],
}
MEMBERS = [
    "LICENSE",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/logging.conf",
    "configs/metadata.json",
    "configs/multi_gpu_train.json",
    "configs/train.json",
    "docs/README.md",
    "models/data_spec.json",
    "models/model.pt",
]


def network_from_config(bundle: Path) -> torch.nn.Module:
    """``network_def`` of the bundle's ``inference.json`` (random weights), in eval mode."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def").eval()


def make_tiny_bundle(parent: Path, name: str = SURVIVAL) -> tuple[Path, torch.nn.Module]:
    """A copy of a repository bundle with a tiny trained model, plus the generated files packing must skip.

    Returns:
        the bundle folder and the network whose weights are in ``models/model.pt``.
    """
    source, bundle = REPO / "bundles" / name, parent / name
    for part in ("configs", "docs"):
        shutil.copytree(source / part, bundle / part)
    shutil.copy(source / "LICENSE", bundle / "LICENSE")
    (bundle / "models").mkdir()
    (bundle / "models" / "data_spec.json").write_text(json.dumps(SPEC))
    network = network_from_config(bundle)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    torch.save({"epoch": 2}, bundle / "models" / "resume_checkpoint_epoch=2.pt")
    for generated in ("demo_data/manifest.csv", "eval/metrics.json", "configs/__pycache__/x.pyc"):
        (bundle / generated).parent.mkdir(parents=True, exist_ok=True)
        (bundle / generated).write_text("generated")
    return bundle, network


def outputs(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return network(example_batch(SPEC["modalities"], SPEC["input_dims"], seed=1))


def assert_same_network(loaded: torch.nn.Module, network: torch.nn.Module, bundle: Path) -> None:
    """Same outputs as the trained network, and not those of the config's random initialisation."""
    expected, got = outputs(network.eval()), outputs(loaded.eval())
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value)
    assert not torch.allclose(outputs(network_from_config(bundle))["risk"], expected["risk"])


def load_with_monai(bundle_dir: Path, tmp_path: Path) -> torch.nn.Module:
    """``monai.bundle.load`` of the inference network (``bundle_root`` set, no logging config applied)."""
    args = tmp_path / "load_args.json"
    args.write_text(json.dumps({"bundle_root": str(bundle_dir / SURVIVAL), "logging_file": False}))
    return monai.bundle.load(
        name=SURVIVAL, bundle_dir=bundle_dir, workflow_type="inference", args_file=str(args), device="cpu"
    )


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    return make_tiny_bundle(tmp_path / "src")


def test_zip_has_model_zoo_layout_without_generated_files(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    assert bundle_members(bundle) == MEMBERS
    path = pack_bundle(bundle, tmp_path / "dist")
    assert path.name == f"{SURVIVAL}_v0.1.0.zip"
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == [f"{SURVIVAL}/{name}" for name in MEMBERS]
        assert archive.read(f"{SURVIVAL}/models/model.pt") == (bundle / "models" / "model.pt").read_bytes()
    again = pack_bundle(bundle, tmp_path / "again")
    assert again.read_bytes() == path.read_bytes(), "the same bundle must pack to the same bytes"


def test_weights_left_out_are_listed_for_monai_download_large_files(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    url = "https://example.org/pathology_survival_multimodal/model.pt"
    path = pack_bundle(bundle, tmp_path / "dist", include_weights=False, weights_url=url)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        listed = yaml.safe_load(archive.read(f"{SURVIVAL}/{LARGE_FILES_NAME}"))
    assert f"{SURVIVAL}/models/model.pt" not in names and f"{SURVIVAL}/models/data_spec.json" in names
    weights = (bundle / "models" / "model.pt").read_bytes()
    expected = {"path": "models/model.pt", "url": url, "hash_val": hashlib.sha256(weights).hexdigest()}
    assert listed == {"large_files": [{**expected, "hash_type": "sha256"}]}
    unpacked = unpack_bundle(path, tmp_path / "zoo")
    (unpacked / "models" / "model.pt").write_bytes(weights)  # as if fetched from the url
    monai.bundle.download_large_files(bundle_path=str(unpacked))  # present with the listed hash: nothing to fetch
    (unpacked / "models" / "model.pt").write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    with pytest.raises(HashCheckError):
        monai.bundle.download_large_files(bundle_path=str(unpacked))


@pytest.mark.filterwarnings("ignore:parsing config_file")
def test_monai_bundle_load_after_safe_unpack(tiny_bundle, tmp_path):
    bundle, network = tiny_bundle
    path = pack_bundle(bundle, tmp_path / "dist")
    unpacked = unpack_bundle(path, tmp_path / "zoo")
    assert sorted(p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file()) == MEMBERS
    assert [p.name for p in (tmp_path / "zoo").iterdir()] == [SURVIVAL]  # no staging folder left
    assert_same_network(load_with_monai(tmp_path / "zoo", tmp_path), network, bundle)


@pytest.mark.filterwarnings("ignore:parsing config_file", "ignore:No hash value provided")
def test_monai_bundle_download_accepts_a_local_zip(tiny_bundle, tmp_path):
    """MONAI's sources are all remote, but ``url`` takes a ``file://`` address of a local zip."""
    bundle, network = tiny_bundle
    path = pack_bundle(bundle, tmp_path / "dist")
    monai.bundle.download(name=SURVIVAL, bundle_dir=str(tmp_path / "zoo"), url=path.resolve().as_uri(), progress=False)
    assert_same_network(load_with_monai(tmp_path / "zoo", tmp_path), network, bundle)


def test_cli_packs_and_unpacks(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    spec = importlib.util.spec_from_file_location("package_bundle", REPO / "scripts" / "package_bundle.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cli.main([str(bundle), "--out", str(tmp_path / "dist"), "--include_weights", "False"])
    path = tmp_path / "dist" / f"{SURVIVAL}_v0.1.0.zip"
    with zipfile.ZipFile(path) as archive:
        assert f"{SURVIVAL}/{LARGE_FILES_NAME}" in archive.namelist()
    cli.main(["unpack", str(path), "--dest", str(tmp_path / "zoo"), "--trust_third_party", "True"])
    assert (tmp_path / "zoo" / SURVIVAL / "configs" / "metadata.json").is_file()


def test_unpack_replaces_only_with_overwrite(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    path = pack_bundle(bundle, tmp_path / "dist")
    unpacked = unpack_bundle(path, tmp_path / "zoo", trust_third_party=True)
    (unpacked / "notes.txt").write_text("mine")
    with pytest.raises(BundleArchiveError, match="already exists") as err:
        unpack_bundle(path, tmp_path / "zoo", trust_third_party=True)
    assert str(path) in str(err.value) and (unpacked / "notes.txt").is_file()
    assert unpack_bundle(path, tmp_path / "zoo", trust_third_party=True, overwrite=True) == unpacked
    assert not (unpacked / "notes.txt").exists()


def test_ill_arg(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    with pytest.raises(BundleArchiveError, match=r"not a bundle folder \(no configs/metadata.json\)"):
        pack_bundle(bundle / "docs", tmp_path / "dist")
    (bundle / "docs" / "link.md").symlink_to(REPO / "README.md")
    with pytest.raises(BundleArchiveError, match=r"link\.md: symbolic link inside the bundle"):
        pack_bundle(bundle, tmp_path / "dist")
    with pytest.raises(BundleArchiveError, match=r"absent\.zip: bundle zip not found"):
        unpack_bundle(tmp_path / "absent.zip", tmp_path / "zoo")
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(BundleArchiveError, match=r"text\.zip: not a zip file"):
        unpack_bundle(tmp_path / "text.zip", tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()

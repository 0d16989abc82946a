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

"""Unsafe bundles: zips with escaping, linked, stray or repeated members; checkpoints carrying a pickle payload;
configs naming code outside the allow-list. Each is refused naming the zip (or file) and the member, nothing is
written outside the destination, no staging folder is left, and no payload ever runs."""

from __future__ import annotations

import json
import os
import pickle
import stat
import zipfile
from pathlib import Path

import monai.bundle
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.handlers import CheckpointLoader

from monai_ext.engines.bundle_archive import BundleArchiveError, pack_bundle, unpack_bundle
from monai_ext.engines.config_trust import UntrustedConfigError
from tests.engines.test_bundle_archive import SURVIVAL, make_tiny_bundle
from tests.reliability.conftest import REPO

BUNDLES = sorted(path.name for path in (REPO / "bundles").iterdir() if (path / "configs" / "train.json").is_file())
REGULAR, LINK, FIFO = stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o644


class _Payload:
    """Unpickling this runs ``os.makedirs(marker)``: the marker's existence proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture
def good_zip(tmp_path: Path) -> Path:
    """A packed tiny trained survival bundle."""
    bundle, _ = make_tiny_bundle(tmp_path / "src")
    return pack_bundle(bundle, tmp_path / "dist")


def _rewrite(source: Path, target: Path, extra: list[tuple[str, bytes, int]], replace: dict[str, bytes] | None = None):
    """Copy the members of ``source`` into ``target`` (some replaced), then append ``(name, data, mode)`` members."""
    replace = replace or {}
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, replace.get(info.filename, old.read(info)))
        for name, data, mode in extra:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = mode << 16
            new.writestr(info, data)
    return target


def _assert_refused_cleanly(err: pytest.ExceptionInfo, zip_path: Path, dest: Path, root: Path) -> None:
    """The error names the zip; the destination holds nothing (no bundle, no staging); no stray file anywhere."""
    assert str(zip_path) in str(err.value)
    assert not dest.exists() or list(dest.iterdir()) == []
    assert not list(root.rglob("evil*")), "a member was written"


UNSAFE_MEMBERS = [
    ("dotdot at the top", "../evil.txt", REGULAR, "climbs out of the destination with '..'"),
    ("dotdot inside the bundle", f"{SURVIVAL}/configs/../../../evil.txt", REGULAR, "climbs out"),
    ("absolute path", "/tmp/evil_absolute.txt", REGULAR, "is an absolute path"),
    ("windows drive", "C:/evil.txt", REGULAR, "is an absolute path"),
    ("backslashes", f"{SURVIVAL}\\..\\..\\evil.txt", REGULAR, "backslash"),
    ("symbolic link", f"{SURVIVAL}/models/evil_link", LINK, "is a symbolic link"),
    ("named pipe", f"{SURVIVAL}/models/evil_pipe", FIFO, "is not a regular file or folder"),
    ("stray top-level file", "evil.txt", REGULAR, "lies outside the bundle folder"),
    ("repeated member", f"{SURVIVAL}/configs/train.json", REGULAR, "appears twice"),
]


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns while the test writes the repeated member
@pytest.mark.parametrize("name, member, mode, fragment", UNSAFE_MEMBERS, ids=[case[0] for case in UNSAFE_MEMBERS])
def test_unsafe_member_refuses_the_whole_zip(good_zip, tmp_path, name, member, mode, fragment):
    bad = _rewrite(good_zip, tmp_path / "bad.zip", [(member, b"/etc/passwd", mode)])
    dest = tmp_path / "zoo" / "inner"
    with pytest.raises(BundleArchiveError, match=fragment) as err:
        unpack_bundle(bad, dest, trust_third_party=True)
    assert repr(member) in str(err.value) and "nothing was extracted" in str(err.value)
    _assert_refused_cleanly(err, bad, dest, tmp_path)
    assert not Path("/tmp/evil_absolute.txt").exists()


def test_two_bundles_in_one_zip_refused(good_zip, tmp_path):
    bad = _rewrite(good_zip, tmp_path / "bad.zip", [("other_bundle/configs/train.json", b"{}", REGULAR)])
    with pytest.raises(BundleArchiveError, match=r"several top-level folders \['other_bundle', ") as err:
        unpack_bundle(bad, tmp_path / "zoo", trust_third_party=True)
    _assert_refused_cleanly(err, bad, tmp_path / "zoo", tmp_path)


def test_archive_expanding_past_the_limit_refused(good_zip, tmp_path):
    with pytest.raises(BundleArchiveError, match="above the limit of 1,000 bytes") as err:
        unpack_bundle(good_zip, tmp_path / "zoo", trust_third_party=True, max_bytes=1000)
    _assert_refused_cleanly(err, good_zip, tmp_path / "zoo", tmp_path)


def test_corrupt_member_refused_after_staging_is_removed(good_zip, tmp_path):
    content = b"notes: CRC-PROBE-0123456789"
    bad = _rewrite(good_zip, tmp_path / "bad.zip", [(f"{SURVIVAL}/docs/notes.txt", content, REGULAR)])
    bad.write_bytes(bad.read_bytes().replace(content, content[:-1] + b"X"))  # stored member: its CRC now fails
    with pytest.raises(
        BundleArchiveError, match=r"member 'pathology_survival_multimodal/docs/notes.txt' is corrupt"
    ) as err:
        unpack_bundle(bad, tmp_path / "zoo", trust_third_party=True)
    _assert_refused_cleanly(err, bad, tmp_path / "zoo", tmp_path)


def test_pickled_checkpoint_in_zip_refused_after_staging_is_removed(good_zip, tmp_path):
    marker = tmp_path / "code_ran"
    payload = tmp_path / "payload.pt"
    torch.save({"weight": _Payload(marker)}, payload)
    member = f"{SURVIVAL}/models/model.pt"
    bad = _rewrite(good_zip, tmp_path / "bad.zip", [], replace={member: payload.read_bytes()})
    dest = tmp_path / "zoo"
    with pytest.raises(BundleArchiveError, match="not a plain-tensor checkpoint") as err:
        unpack_bundle(bad, dest, trust_third_party=True)
    assert repr(member) in str(err.value) and "os.makedirs" in str(err.value)
    assert "weights_only` set to `False`" not in str(err.value)  # torch's advice to unpickle anyway is not passed on
    _assert_refused_cleanly(err, bad, dest, tmp_path)
    assert not marker.exists()


def test_third_party_config_outside_allow_list_refused(tmp_path):
    bundle, _ = make_tiny_bundle(tmp_path / "src")
    train = json.loads((bundle / "configs" / "train.json").read_text())
    train["loss"] = {"_target_": "subprocess.Popen", "args": ["id"]}
    (bundle / "configs" / "train.json").write_text(json.dumps(train))
    with pytest.raises(UntrustedConfigError, match=r"train\.json: loss#_target_: _target_ 'subprocess.Popen'"):
        pack_bundle(bundle, tmp_path / "dist", trust_third_party=False)
    zip_path = pack_bundle(bundle, tmp_path / "dist")  # its author packs it as first-party
    dest = tmp_path / "zoo"
    with pytest.raises(UntrustedConfigError) as err:
        unpack_bundle(zip_path, dest)
    assert err.value.findings == [
        "train.json: loss#_target_: _target_ 'subprocess.Popen' resolves to 'subprocess.Popen'"
    ]
    assert "configs" in err.value.source and list(dest.iterdir()) == []  # checked in staging, staging removed
    assert (unpack_bundle(zip_path, dest, trust_third_party=True) / "configs" / "train.json").is_file()


def _poisoned_bundle(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A bundle folder whose ``models/model.pt`` carries a pickle payload; returns it and the payload's marker."""
    bundle, marker = tmp_path / name, tmp_path / "code_ran"
    (bundle / "models").mkdir(parents=True)
    torch.save({"weight": _Payload(marker)}, bundle / "models" / "model.pt")
    return bundle, marker


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_checkpoint_loader_refuses_a_pickle_payload(tmp_path, name):
    """``evaluate.json``'s ``CheckpointLoader`` (MONAI passes ``weights_only=True``) never runs the payload."""
    bundle, marker = _poisoned_bundle(tmp_path, name)
    parser = ConfigParser()
    configs = REPO / "bundles" / name / "configs"
    parser.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])
    parser["bundle_root"] = str(bundle)
    parser["network_def"] = torch.nn.Linear(2, 1)
    loader = parser.get_parsed_content("validate#handlers#0")
    assert isinstance(loader, CheckpointLoader) and loader.load_path == str(bundle / "models" / "model.pt")
    with pytest.raises(pickle.UnpicklingError, match=r"os\.makedirs"):
        loader(Engine(lambda engine, batch: None))
    assert not marker.exists()


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_inference_load_refuses_a_pickle_payload(tmp_path, name):
    """``inference.json``'s ``initialize`` loads ``model.pt`` with ``torch.load(..., weights_only=True)``."""
    bundle, marker = _poisoned_bundle(tmp_path, name)
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["network_def"] = torch.nn.Linear(2, 1)
    step = next(index for index, expr in enumerate(parser.get("initialize")) if "model.pt" in expr)
    with pytest.raises(RuntimeError, match="Failed to evaluate ConfigExpression") as err:
        parser.get_parsed_content(f"initialize#{step}")
    assert isinstance(err.value.__cause__, pickle.UnpicklingError) and "os.makedirs" in str(err.value.__cause__)
    assert not marker.exists()


def test_monai_bundle_load_refuses_a_pickle_payload(tmp_path):
    bundle, marker = _poisoned_bundle(tmp_path / "zoo", SURVIVAL)
    with pytest.raises(pickle.UnpicklingError, match=r"os\.makedirs"):
        monai.bundle.load(name=SURVIVAL, bundle_dir=bundle.parent, model=torch.nn.Linear(2, 1), device="cpu")
    assert not marker.exists()

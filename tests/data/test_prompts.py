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

"""Class prompt files: JSON and CSV round trips, class order, and every malformed input refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_ext.data.dataset import SLIDE_STAGES
from monai_ext.data.prompts import DEMO_STAGE_PROMPTS, check_class_prompts, load_class_prompts, save_class_prompts

PROMPTS = {"b": ["second class, one", " second class, two "], "a": ["first class, one", "first class, two"]}


@pytest.mark.parametrize("suffix", [".json", ".csv", ".JSON"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    path = save_class_prompts(PROMPTS, tmp_path / f"prompts{suffix}")
    loaded = load_class_prompts(path)
    assert loaded == {"b": ["second class, one", "second class, two"], "a": ["first class, one", "first class, two"]}
    assert list(loaded) == ["b", "a"]
    assert list(load_class_prompts(path, classes=["a", "b"])) == ["a", "b"]


def test_reads_hand_written_files(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text('class,prompt,note\na,"first, with a comma",x\nb,second,\na,third,\nb,fourth,\n')
    assert load_class_prompts(tmp_path / "p.csv") == {"a": ["first, with a comma", "third"], "b": ["second", "fourth"]}
    (tmp_path / "p.json").write_text(json.dumps({"x": ["one"], "y": ["two"]}))
    assert load_class_prompts(tmp_path / "p.json", classes=("y", "x")) == {"y": ["two"], "x": ["one"]}


def test_demo_prompts_cover_the_slide_stages() -> None:
    checked = check_class_prompts(DEMO_STAGE_PROMPTS, SLIDE_STAGES)
    assert list(checked) == list(SLIDE_STAGES)
    texts = [text for items in checked.values() for text in items]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({}, "no class"),
        ({"a": ["one"], "b": ["one", "two"]}, "same number"),
        ({"a": ["one", " "]}, "non-empty descriptions"),
        ({"a": []}, "non-empty descriptions"),
        ({"a": "one"}, "list of descriptions"),
        ({"a": [3]}, "non-empty descriptions"),
    ],
)
def test_bad_prompts(tmp_path: Path, content: dict, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        load_class_prompts(path)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_class_prompts(tmp_path / "missing.json")
    (tmp_path / "p.txt").write_text("a: one")
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        load_class_prompts(tmp_path / "p.txt")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_class_prompts(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text('["a", "b"]')
    with pytest.raises(ValueError, match="JSON object"):
        load_class_prompts(tmp_path / "list.json")
    (tmp_path / "columns.csv").write_text("label,text\na,one\n")
    with pytest.raises(ValueError, match="'class' and 'prompt'"):
        load_class_prompts(tmp_path / "columns.csv")
    (tmp_path / "blank.csv").write_text("class,prompt\n,one\n")
    with pytest.raises(ValueError, match="empty 'class'"):
        load_class_prompts(tmp_path / "blank.csv")
    save_class_prompts(PROMPTS, tmp_path / "p.json")
    with pytest.raises(ValueError, match=r"missing \['c'\], unexpected \['b'\]"):
        load_class_prompts(tmp_path / "p.json", classes=["a", "c"])
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        save_class_prompts(PROMPTS, tmp_path / "p.yaml")

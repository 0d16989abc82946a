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

"""Class-text prompts as user files: several descriptions per class, the text side of HMF (Hierarchical Multimodal
Fusion of Whole Slide Images and Text for Patient-Level Cancer Staging, https://github.com/ErShiY/HMF).

Two file layouts are read by :func:`load_class_prompts`:

- JSON: ``{"negative": ["...", "..."], "itc": [...], ...}`` (class -> list of descriptions, in class order);
- CSV: columns ``class`` and ``prompt``, one row per description (classes in order of first appearance).

Every class needs the same number of non-empty descriptions, so that the embeddings form ``[K, P, E]``
(:meth:`monai_ext.data.text.TextEmbedder.class_prompt_embeddings`). :data:`DEMO_STAGE_PROMPTS` are our own
descriptions of the four lymph-node slide stages of CAMELYON17, used by the demo cohort.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["DEMO_STAGE_PROMPTS", "check_class_prompts", "load_class_prompts", "save_class_prompts"]

DEMO_STAGE_PROMPTS: dict[str, list[str]] = {
    "negative": [
        "a lymph node section with normal lymphoid architecture and no tumor cells",
        "reactive lymph node tissue, follicles and sinuses free of carcinoma",
        "benign nodal tissue without any epithelial tumor deposit",
    ],
    "itc": [
        "a few isolated tumor cells scattered singly in the subcapsular sinus",
        "tiny clusters of carcinoma cells no larger than 0.2 mm within the node",
        "single keratin-positive tumor cells without a cohesive deposit",
    ],
    "micro": [
        "a small metastatic deposit between 0.2 and 2 mm in the lymph node",
        "a micrometastasis forming a compact nest of carcinoma cells",
        "a limited focus of metastatic carcinoma, larger than isolated cells but under 2 mm",
    ],
    "macro": [
        "a large metastatic deposit larger than 2 mm replacing nodal tissue",
        "extensive sheets of carcinoma effacing the lymph node architecture",
        "a macrometastasis with confluent tumor occupying much of the section",
    ],
}


def check_class_prompts(
    prompts: Mapping[str, Sequence[str]], classes: Sequence[str] | None = None, *, source: str = "prompts"
) -> dict[str, list[str]]:
    """Validate class prompts and return them as ``{class: [descriptions]}`` in class order.

    Args:
        prompts: class name -> its descriptions.
        classes: expected class names, in the order wanted (e.g. ``SLIDE_STAGES``); None keeps the given order.
        source: name used in error messages (e.g. the file).

    Returns:
        a new dict with stripped descriptions, ordered as ``classes`` when given.

    Raises:
        ValueError: no class, a class without descriptions or with an empty one, classes with different numbers of
            descriptions, or class names that differ from ``classes``.
    """
    if not prompts:
        raise ValueError(f"{source}: no class found; give {{class name: [description, ...]}} for every class")
    cleaned: dict[str, list[str]] = {}
    for name, items in prompts.items():
        if isinstance(items, str) or not isinstance(items, Sequence):
            raise ValueError(f"{source}: class {name!r} must map to a list of descriptions, got {type(items).__name__}")
        texts = [item.strip() if isinstance(item, str) else "" for item in items]
        if not texts or not all(texts):
            raise ValueError(f"{source}: class {name!r} needs non-empty descriptions, got {list(items)!r}")
        cleaned[str(name)] = texts
    if classes is not None:
        missing, extra = sorted(set(classes) - set(cleaned)), sorted(set(cleaned) - set(classes))
        if missing or extra:
            raise ValueError(f"{source}: classes must be {list(classes)}; missing {missing}, unexpected {extra}")
        cleaned = {name: cleaned[name] for name in classes}
    counts = {name: len(texts) for name, texts in cleaned.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"{source}: every class needs the same number of descriptions, got {counts}")
    return cleaned


def load_class_prompts(path: str | Path, classes: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Read class prompts from a JSON or CSV file (see the module docstring for the layouts).

    Args:
        path: a ``.json`` or ``.csv`` file.
        classes: expected class names in the order wanted; None keeps the file's order.

    Returns:
        ``{class: [descriptions]}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another extension, malformed content, or prompts failing :func:`check_class_prompts`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"class prompt file {path} not found; write a JSON or CSV file (see monai_ext.data.prompts)"
        )
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}); expected {{class: [description, ...]}}") from error
        if not isinstance(content, dict):
            raise ValueError(
                f"{path}: expected a JSON object {{class: [description, ...]}}, got {type(content).__name__}"
            )
        return check_class_prompts(content, classes, source=str(path))
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"class", "prompt"} <= set(reader.fieldnames or ()):
                raise ValueError(f"{path}: needs columns 'class' and 'prompt', found {reader.fieldnames}")
            grouped: dict[str, list[str]] = {}
            for row in reader:
                grouped.setdefault((row["class"] or "").strip(), []).append(row["prompt"] or "")
        if "" in grouped:
            raise ValueError(f"{path}: some rows have an empty 'class'")
        return check_class_prompts(grouped, classes, source=str(path))
    raise ValueError(f"{path}: class prompts must be a .json or .csv file, got {suffix!r}")


def save_class_prompts(prompts: Mapping[str, Sequence[str]], path: str | Path) -> Path:
    """Write class prompts to ``path`` (``.json`` or ``.csv``, the layouts :func:`load_class_prompts` reads).

    Args:
        prompts: class name -> its descriptions (checked with :func:`check_class_prompts`).
        path: the file to write.

    Returns:
        the path written.

    Raises:
        ValueError: another extension, or invalid prompts.
    """
    path = Path(path)
    cleaned = check_class_prompts(prompts, source=str(path))
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(json.dumps(cleaned, indent=2) + "\n", encoding="utf-8")
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class", "prompt"])
            writer.writerows([name, text] for name, texts in cleaned.items() for text in texts)
    else:
        raise ValueError(f"{path}: class prompts must be a .json or .csv file, got {suffix!r}")
    return path

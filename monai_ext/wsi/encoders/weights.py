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

"""Local weight files for patch encoders: read, hash, clean the keys, load strictly. Nothing is ever downloaded.

Pickled checkpoints (``.pth``, ``.pt``, ``.bin``) are read with ``torch.load(weights_only=True)``, so a file that
carries arbitrary Python objects is refused instead of executed; ``.safetensors`` files are read with
``safetensors.torch.load_file``. The SHA-256 of the file is computed alongside and becomes part of the encoder's
identity, which feature files record.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
WRAPPER_KEYS = ("state_dict", "model")
STRIPPED_PREFIXES = ("module.", "model.", "_orig_mod.")
DROPPED_PREFIXES = ("head.", "fc.")
MAX_KEYS_IN_ERROR = 8


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (weight files run to gigabytes).

    Args:
        path: the file.
        chunk_bytes: read size.

    Returns:
        64 lowercase hex characters.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Return the tensor mapping inside a loaded checkpoint (bare, or under ``state_dict`` / ``model``)."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return _unwrap(inner, path)
        bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if not bad:
            return {str(k): v for k, v in obj.items()}
        raise ValueError(
            f"{path}: expected a state_dict (names -> tensors), found non-tensor entries {bad[:MAX_KEYS_IN_ERROR]}; "
            f"save the weights with torch.save(model.state_dict(), path)"
        )
    raise ValueError(
        f"{path}: expected a state_dict (names -> tensors), found a {type(obj).__name__}; "
        f"save the weights with torch.save(model.state_dict(), path)"
    )


def load_state_dict_file(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read a weight file into a CPU state_dict and hash it.

    A checkpoint whose tensors sit under a ``state_dict`` or ``model`` key is unwrapped. Keys are returned as
    stored; :func:`clean_state_dict` strips prefixes and drops classifier heads.

    Args:
        path: a ``.pth``, ``.pt``, ``.bin`` (pickled, read with ``weights_only=True``) or ``.safetensors`` file.

    Returns:
        ``(state_dict, sha256)``: tensors on the CPU, and the hex SHA-256 of the file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown suffix, a pickle holding anything other than tensors and plain containers (refused by
            ``weights_only=True``), or no state_dict inside.
        ImportError: a ``.safetensors`` file without the ``safetensors`` package.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass the path of a local copy of the weights")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(
                f"{path}: reading .safetensors needs the 'safetensors' package (pip install safetensors)"
            ) from err
        obj: object = load_file(str(path), device="cpu")
    elif suffix in PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path}: refused to load, it holds pickled Python objects beyond tensors (torch.load with "
                f"weights_only=True said: {str(err).splitlines()[0]}); re-save only the tensors with "
                f"torch.save(model.state_dict(), path)"
            ) from err
    else:
        raise ValueError(
            f"{path}: unknown weights format {suffix!r}; use one of {(*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX)}"
        )
    state_dict = _unwrap(obj, path)
    sha256 = file_sha256(path)
    logger.info("read %d tensors from %s (sha256 %s)", len(state_dict), path, sha256[:16])
    return state_dict, sha256


def clean_state_dict(
    state_dict: Mapping[str, torch.Tensor], ignore_prefixes: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes and drop keys the trunk does not hold.

    Args:
        state_dict: raw names -> tensors.
        ignore_prefixes: extra prefixes to drop after stripping, e.g. ``("layer4.",)`` for a ResNet truncated after
            ``layer3``.

    Returns:
        a new dict without leading ``module.``, ``model.`` or ``_orig_mod.`` (repeatedly, as DataParallel, wrappers
        and ``torch.compile`` nest them) and without ``head.*``, ``fc.*`` or ``ignore_prefixes`` keys.
    """
    dropped = (*DROPPED_PREFIXES, *ignore_prefixes)
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key
        while name.startswith(STRIPPED_PREFIXES):
            name = name.split(".", 1)[1]
        if not name.startswith(dropped):
            cleaned[name] = value
    return cleaned


def _first(keys: Iterable[str]) -> list[str]:
    return sorted(keys)[:MAX_KEYS_IN_ERROR]


def load_into(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path, *, assign: bool = False
) -> None:
    """Load a cleaned state_dict strictly, with an error that says what did not match.

    Args:
        module: the trunk to fill.
        state_dict: cleaned names -> tensors (see :func:`clean_state_dict`).
        source: the file the tensors came from, named in errors.
        assign: keep the given tensors instead of copying into existing ones (for modules built on the ``meta``
            device; dtypes are then the checkpoint's, cast them afterwards).

    Raises:
        ValueError: missing or unexpected keys, or shape mismatches, listing the first of each and the file.
    """
    expected = module.state_dict()
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & state_dict.keys())
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source}: weights do not fit the {type(module).__name__} architecture "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} wrong shapes). "
            f"First missing: {_first(missing)}; first unexpected: {_first(unexpected)}; "
            f"first wrong shapes: {mismatched[:MAX_KEYS_IN_ERROR]}. "
            f"Check that the file belongs to this encoder (same architecture and release)."
        )
    module.load_state_dict(state_dict, strict=True, assign=assign)

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

"""The per-slide feature file: ``features`` float ``[N, D]``, ``coords`` int ``[N, 2]`` and descriptive attributes.

Files are written under a temporary name and renamed once complete, and carry ``complete=True`` written last:
an h5 file killed mid-write can open and look whole, so "done" is decided from the attributes, never from the
file's existence. CLAM's feature files (``.h5`` with ``features``/``coords``, or a ``.pt`` tensor) load too.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

SCHEMA_VERSION = 1
REQUIRED_ATTRS = (
    "schema_version",
    "slide_id",
    "encoder",
    "patch_size",
    "mpp",
    "level",
    "coords_sha256",
    "n_patches",
    "complete",
)


class FeatureFileError(ValueError):
    """A feature file that is incomplete, malformed, or made with another encoder; the message names the file."""


class FeatureWriteError(OSError):
    """A feature file could not be written (disk full, file-size limit, I/O error).

    Nothing is left under the file's name nor under its temporary name; ``errno`` is the system's error number
    (``ENOSPC``, ``EFBIG``, ...) when the writer reported one, ``filename`` the feature file.
    """

    def __init__(self, path: Path, cause: BaseException) -> None:
        code = getattr(cause, "errno", None)
        if code is None:
            found = re.search(r"errno = (\d+)", str(cause))
            code = int(found.group(1)) if found else errno.EIO
        reason = os.strerror(code)
        super().__init__(
            code,
            f"{path}: could not write the feature file ({reason}: {cause}); nothing was kept under this name. "
            "Free disk space (or raise the file-size limit) and re-run: finished slides are skipped",
        )
        self.filename = str(path)

    def __str__(self) -> str:
        return self.strerror


@dataclass
class SlideFeatures:
    """Features of one slide.

    Attributes:
        features: float32 ``[N, D]``.
        coords: int64 ``[N, 2]`` level-0 (x, y) of each patch's top-left corner (``[0, 2]`` when unknown, as in
            CLAM ``.pt`` files).
        attrs: the file's attributes (empty for foreign files).
    """

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


def coords_sha256(coords: np.ndarray) -> str:
    """Hash of the patch coordinates (int64, C order): identifies the grid a file was made from."""
    return hashlib.sha256(np.ascontiguousarray(coords, dtype=np.int64).tobytes()).hexdigest()


def write_features(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    *,
    slide_id: str,
    encoder: str,
    patch_size: int,
    mpp: float,
    level: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a feature file atomically (temporary name, fsync, rename).

    Args:
        path: destination ``.h5``.
        features: float ``[N, D]``, finite.
        coords: int ``[N, 2]``.
        slide_id: the slide's identifier.
        encoder: encoder identity (name and weights hash).
        patch_size: patch side in pixels at ``mpp``.
        mpp: micrometers per pixel of the patches.
        level: pyramid level read.
        extra: further scalar attributes (e.g. ``n_broken``).

    Returns:
        the final path.
    """
    path = Path(path)
    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64)
    _check_arrays(path, features, coords)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    attrs = {
        "schema_version": SCHEMA_VERSION,
        "slide_id": slide_id,
        "encoder": encoder,
        "patch_size": int(patch_size),
        "mpp": float(mpp),
        "level": int(level),
        "coords_sha256": coords_sha256(coords),
        "n_patches": len(features),
        **(extra or {}),
    }
    try:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("features", data=features)
            h5.create_dataset("coords", data=coords)
            h5.attrs.update(attrs)
            h5.flush()
            h5.attrs["complete"] = True
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # h5py reports a failed write (disk full, EFBIG) as RuntimeError
        tmp.unlink(missing_ok=True)
        raise FeatureWriteError(path, err) from err
    return path


def read_attrs(path: str | Path) -> dict[str, Any] | None:
    """Attributes of a feature file, or None when it is missing or unreadable (never raises)."""
    try:
        with h5py.File(path, "r") as h5:
            return {key: _plain(value) for key, value in h5.attrs.items()}
    except (OSError, KeyError):
        return None


def is_complete(path: str | Path, expected: dict[str, Any]) -> bool:
    """Whether ``path`` is a finished feature file whose attributes match ``expected`` (e.g. encoder, mpp)."""
    attrs = read_attrs(path)
    if not attrs or attrs.get("complete") is not True or attrs.get("schema_version") != SCHEMA_VERSION:
        return False
    return all(attrs.get(key) == value for key, value in expected.items())


def read_features(path: str | Path, *, encoder: str | None = None, feature_dim: int | None = None) -> SlideFeatures:
    """Read and validate a feature file: ours (``.h5`` with attributes) or CLAM's (``.h5`` or ``.pt``).

    Args:
        path: the file.
        encoder: when given, the encoder identity the file must carry (files without one, e.g. CLAM's, pass).
        feature_dim: when given, the feature width the file must have.

    Raises:
        FileNotFoundError: missing file.
        FeatureFileError: incomplete file, wrong shapes, non-finite values, other encoder or width.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature file not found")
    if path.suffix == ".pt":
        try:
            tensor = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise FeatureFileError(
                f"{path}: not a plain tensor file (refused to unpickle code or corrupt): {err}"
            ) from err
        if isinstance(tensor, dict) and "features" in tensor:
            tensor = tensor["features"]
        if not isinstance(tensor, torch.Tensor):
            raise FeatureFileError(f"{path}: expected a tensor [N, D] (CLAM .pt), found {type(tensor).__name__}")
        loaded = SlideFeatures(tensor.float().numpy(), np.zeros((0, 2), np.int64))
    else:
        loaded = _read_h5(path)
    _check_arrays(path, loaded.features, loaded.coords if len(loaded.coords) else None)
    if encoder is not None and "encoder" in loaded.attrs and loaded.attrs["encoder"] != encoder:
        raise FeatureFileError(
            f"{path}: made with encoder {loaded.attrs['encoder']!r}, expected {encoder!r}; re-run preprocessing"
        )
    if feature_dim is not None and loaded.features.shape[1] != feature_dim:
        raise FeatureFileError(f"{path}: features have width {loaded.features.shape[1]}, expected {feature_dim}")
    return loaded


def _read_h5(path: Path) -> SlideFeatures:
    """Read our h5 (checking completeness and the coordinate hash) or a CLAM h5 (no attributes)."""
    try:
        with h5py.File(path, "r") as h5:
            if "features" not in h5:
                raise FeatureFileError(f"{path}: no 'features' dataset (found {sorted(h5.keys())})")
            features = np.asarray(h5["features"], dtype=np.float32)
            coords = np.asarray(h5["coords"], dtype=np.int64) if "coords" in h5 else np.zeros((0, 2), np.int64)
            attrs = {key: _plain(value) for key, value in h5.attrs.items()}
    except OSError as err:
        raise FeatureFileError(f"{path}: unreadable h5 file ({err})") from err
    if features.ndim == 3 and features.shape[0] == 1:  # CLAM writes [1, N, D] in some versions
        features = features[0]
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if "schema_version" in attrs:
        if attrs["schema_version"] != SCHEMA_VERSION:
            raise FeatureFileError(
                f"{path}: feature file schema version {attrs['schema_version']}, this version of monai_ext reads "
                f"{SCHEMA_VERSION}; re-run preprocessing for this slide"
            )
        missing = [key for key in REQUIRED_ATTRS if key not in attrs]
        if missing or attrs.get("complete") is not True:
            raise FeatureFileError(
                f"{path}: incomplete feature file (missing {missing or ['complete=True']}); "
                "re-run preprocessing for this slide"
            )
        if attrs["n_patches"] != len(features) or attrs["coords_sha256"] != coords_sha256(coords):
            raise FeatureFileError(f"{path}: patch count or coordinate hash does not match the attributes")
    return SlideFeatures(features, coords, attrs)


def _check_arrays(path: Path, features: np.ndarray, coords: np.ndarray | None) -> None:
    """Shapes [N, D] and [N, 2], finite features."""
    if features.ndim != 2:
        raise FeatureFileError(f"{path}: features must be [N, D], got shape {tuple(features.shape)}")
    if coords is not None and (coords.ndim != 2 or coords.shape != (features.shape[0], 2)):
        raise FeatureFileError(f"{path}: coords must be [{features.shape[0]}, 2], got {tuple(coords.shape)}")
    if not np.isfinite(features).all():
        raise FeatureFileError(f"{path}: features contain NaN or infinite values")


def _plain(value: Any) -> Any:
    """h5py attribute values as plain Python scalars and strings."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value

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

"""Radiology volumes (CT, MRI) as fixed-size float tensors ``[1, H, W, D]`` with MONAI transforms.

The pipeline follows MONAI's 3D preprocessing (https://arxiv.org/abs/2211.02701): ``LoadImage`` (nibabel for
NIfTI, ITK for DICOM series folders and the other formats ITK reads), ``EnsureChannelFirst``, ``Orientation`` to
RAS, ``Spacing`` to a common voxel size, intensity scaling, then ``ResizeWithPadOrCrop`` (centred) to a fixed
size. Intensities are scaled to ``[0, 1]``: a CT window in Hounsfield units (``intensity="ct"``) or the volume's
own percentiles (``intensity="percentile"``, for MRI or mixed sources); padding takes the value 0 (the bottom of
the window).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    LoadImage,
    Orientation,
    ResizeWithPadOrCrop,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    Spacing,
)

__all__ = ["INTENSITY_MODES", "load_volume", "radiology_transforms"]

logger = logging.getLogger(__name__)

INTENSITY_MODES = ("ct", "percentile")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def radiology_transforms(
    reader: str,
    *,
    spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
    size: Sequence[int] | None = (64, 64, 64),
    intensity: str | None = "percentile",
    window: tuple[float, float] = (-1000.0, 1000.0),
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> Compose:
    """The MONAI transform chain from a path to a ``[C, H, W, D]`` MetaTensor (see :func:`load_volume`).

    Args:
        reader: MONAI image reader name, ``"NibabelReader"`` or ``"ITKReader"``.
        spacing, size, intensity, window, percentiles: as in :func:`load_volume`.

    Raises:
        ValueError: unknown intensity mode, or a spacing, size, window or percentile pair that is not valid.
    """
    if intensity is not None and intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES} or None, got {intensity!r}")
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        raise ValueError(f"spacing must be three positive voxel sizes in mm (or None), got {spacing}")
    if size is not None and (len(size) != 3 or min(size) < 1):
        raise ValueError(f"size must be three positive voxel counts (or None), got {size}")
    if window[0] >= window[1]:
        raise ValueError(f"window must be (low, high) with low < high, got {window}")
    if not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    transforms = [
        LoadImage(reader=reader, image_only=True),
        EnsureChannelFirst(),
        Orientation(axcodes="RAS", labels=_RAS_LABELS),
    ]
    if spacing is not None:
        transforms.append(Spacing(pixdim=tuple(float(s) for s in spacing), mode="bilinear"))
    if intensity == "ct":
        transforms.append(ScaleIntensityRange(a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True))
    elif intensity == "percentile":
        transforms.append(
            ScaleIntensityRangePercentiles(lower=percentiles[0], upper=percentiles[1], b_min=0.0, b_max=1.0, clip=True)
        )
    if size is not None:
        transforms.append(ResizeWithPadOrCrop(spatial_size=tuple(int(s) for s in size)))
    return Compose(transforms)


def load_volume(
    path: str | Path,
    *,
    spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
    size: Sequence[int] | None = (64, 64, 64),
    intensity: str | None = "percentile",
    window: tuple[float, float] = (-1000.0, 1000.0),
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> torch.Tensor:
    """Read a CT or MRI volume and bring it to a common orientation, voxel size, intensity range and size.

    Args:
        path: a NIfTI file (``.nii``, ``.nii.gz``, read with nibabel), a folder holding one DICOM series, or
            another file ITK reads (``.dcm``, ``.nrrd``, ``.mha``, ...).
        spacing: output voxel size in mm along R, A, S; None keeps the file's (orientation is still RAS).
        size: output ``(H, W, D)`` after a centred pad (value 0) or crop; None keeps the resampled size.
        intensity: ``"ct"`` maps ``window`` (Hounsfield units) to ``[0, 1]`` and clips; ``"percentile"`` maps the
            volume's ``percentiles`` to ``[0, 1]`` and clips; None leaves intensities as read.
        window: CT window ``(low, high)`` in HU (the default spans air to dense bone).
        percentiles: ``(low, high)`` percentiles for ``"percentile"``.

    Returns:
        float32 ``[C, H, W, D]`` (``C = 1`` for a scalar volume), axes in RAS order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file or folder cannot be read as an image, it is not 3-D, or an argument is invalid.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"radiology volume {path} does not exist: check the path (or the cohort's data root)")
    if path.is_dir() and not any(child.is_file() for child in path.iterdir()):
        raise ValueError(f"radiology folder {path} is empty: expected the files of one DICOM series")
    reader = "NibabelReader" if path.name.lower().endswith(_NIFTI_SUFFIXES) else "ITKReader"
    transforms = radiology_transforms(
        reader, spacing=spacing, size=size, intensity=intensity, window=window, percentiles=percentiles
    )
    read, prepare = Compose(transforms.transforms[:2]), Compose(transforms.transforms[2:])
    try:
        volume = read(str(path))
    except Exception as error:  # MONAI wraps reader errors; name the file and the root cause
        cause = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise ValueError(
            f"radiology volume {path} could not be read with {reader} ({type(cause).__name__}: {cause}); expected "
            "a NIfTI file, a folder holding one DICOM series, or another 3-D format ITK reads"
        ) from error
    if volume.ndim != 4:
        raise ValueError(f"radiology volume {path} has shape {tuple(volume.shape[1:])}: expected a 3-D volume")
    volume = prepare(volume)
    logger.debug("loaded %s with %s: shape %s", path, reader, tuple(volume.shape))
    return volume.as_subclass(torch.Tensor).float()

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

"""Radiology volumes: NIfTI resampling vs nibabel, orientation by hand, DICOM series written with ITK, errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.processing import resample_to_output

from monai_ext.data.radiology import load_volume

# ITK's SWIG bindings emit DeprecationWarnings about their own builtin types on import: noise, not ours
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")

RAW = {"spacing": None, "size": None, "intensity": None}


def write_nifti(folder: Path, array: np.ndarray, affine: np.ndarray, name: str = "volume.nii.gz") -> Path:
    """A NIfTI file of ``array`` (voxel axes i, j, k) with the given voxel-to-world (RAS mm) affine."""
    path = folder / name
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), path)
    return path


def write_dicom_series(
    folder: Path, volume: np.ndarray, spacing: tuple[float, float, float], origin: tuple[float, float, float]
) -> Path:
    """One CT series, a DICOM file per slice written with ITK; ``volume`` is ``[z, y, x]`` int16, axes along LPS.

    The files are named in the reverse order of their position, so a reader has to sort them by geometry.
    """
    itk = pytest.importorskip("itk")
    folder.mkdir(parents=True, exist_ok=True)
    for k, plane in enumerate(volume):
        image = itk.image_from_array(np.ascontiguousarray(plane))
        image.SetSpacing(spacing[:2])
        tags = image.GetMetaDataDictionary()
        tags["0008|0060"] = "CT"
        tags["0008|0016"] = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
        tags["0020|000d"] = "1.2.826.0.1.3680043.2.1125.7.1"  # study
        tags["0020|000e"] = "1.2.826.0.1.3680043.2.1125.7.2"  # series
        tags["0008|0018"] = f"1.2.826.0.1.3680043.2.1125.7.3.{k}"  # instance
        tags["0020|0013"] = str(k + 1)
        tags["0020|0032"] = "\\".join(str(v) for v in (origin[0], origin[1], origin[2] + k * spacing[2]))
        tags["0020|0037"] = "1\\0\\0\\0\\1\\0"
        tags["0018|0050"] = str(spacing[2])
        io = itk.GDCMImageIO.New()
        io.KeepOriginalUIDOn()
        itk.imwrite(image, str(folder / f"slice_{len(volume) - k:03d}.dcm"), imageio=io)
    return folder


@pytest.mark.parametrize(
    "shape, voxel, flip",
    [
        ((20, 30, 10), (3.0, 2.0, 6.0), False),
        ((10, 13, 7), (2.2, 1.1, 4.9), True),
        ((11, 9, 5), (0.7, 1.3, 3.3), False),
    ],
)
def test_nifti_resampled_like_nibabel(tmp_path, shape, voxel, flip):
    """Orientation and spacing honoured: same grid and values as nibabel's own resampling to RAS at 1.5 mm."""
    array = np.random.default_rng(0).normal(size=shape)
    affine = np.diag([*(-np.array(voxel) if flip else voxel), 1.0])
    affine[:3, 3] = [5.0, -7.0, 11.0]
    path = write_nifti(tmp_path, array, affine)
    volume = load_volume(path, spacing=(1.5, 1.5, 1.5), size=None, intensity=None)
    expected_shape = tuple(round((n - 1) * v / 1.5) + 1 for n, v in zip(shape, voxel, strict=True))
    assert volume.dtype == torch.float32 and type(volume) is torch.Tensor
    assert tuple(volume.shape) == (1, *expected_shape)
    reference = resample_to_output(nib.load(path), (1.5, 1.5, 1.5), order=1).get_fdata()
    assert all(abs(a - b) <= 1 for a, b in zip(expected_shape, reference.shape, strict=True))  # nibabel rounds up
    inner = tuple(slice(1, min(a, b) - 2) for a, b in zip(expected_shape, reference.shape, strict=True))
    np.testing.assert_allclose(volume[0].numpy()[inner], reference[inner], atol=1e-4)


def test_orientation_to_ras_by_hand(tmp_path):
    """Voxel axis i runs towards Inferior, j towards Right, k towards Anterior: RAS order is (j, k, reversed i)."""
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.array([[0, 2.0, 0, 0], [0, 0, 3.0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 1]])
    volume = load_volume(write_nifti(tmp_path, array, affine), **RAW)
    np.testing.assert_array_equal(volume[0].numpy(), array[::-1].transpose(1, 2, 0))


def test_intensity_scaling(tmp_path):
    array = np.random.default_rng(1).uniform(-1500, 2500, size=(8, 9, 10))
    path = write_nifti(tmp_path, array, np.eye(4))
    ct = load_volume(path, spacing=None, size=None, intensity="ct", window=(-160.0, 240.0))
    np.testing.assert_allclose(ct[0].numpy(), np.clip((array - -160.0) / 400.0, 0, 1), atol=1e-5)
    scaled = load_volume(path, spacing=None, size=None, intensity="percentile", percentiles=(5.0, 95.0))
    low, high = np.percentile(array.astype(np.float32), [5.0, 95.0])
    np.testing.assert_allclose(scaled[0].numpy(), np.clip((array - low) / (high - low), 0, 1), atol=1e-4)


def test_centred_pad_and_crop(tmp_path):
    array = np.arange(9 * 70 * 64, dtype=np.float32).reshape(9, 70, 64)
    volume = load_volume(write_nifti(tmp_path, array, np.eye(4)), spacing=None, intensity=None, size=(6, 64, 67))
    expected = np.pad(array[1:7, 3:67, :], [(0, 0), (0, 0), (1, 2)])  # crops and pads split the difference
    np.testing.assert_array_equal(volume[0].numpy(), expected)


def test_default_pipeline_shape_and_range(tmp_path):
    array = np.random.default_rng(2).normal(size=(30, 40, 12)) * 100
    volume = load_volume(write_nifti(tmp_path, array, np.diag([1.0, 1.0, 5.0, 1.0])))
    assert tuple(volume.shape) == (1, 64, 64, 64) and volume.dtype == torch.float32
    assert float(volume.min()) >= 0.0 and float(volume.max()) <= 1.0 and float(volume.max()) > 0.9


def test_dicom_series_folder(tmp_path):
    volume = np.random.default_rng(3).integers(-1000, 1500, size=(8, 16, 12)).astype(np.int16)  # [z, y, x]
    folder = write_dicom_series(tmp_path / "series", volume, spacing=(0.8, 0.7, 2.5), origin=(10.0, 20.0, 30.0))
    raw = load_volume(folder, **RAW)
    # x runs towards patient Left and y towards Posterior (DICOM LPS): RAS reverses both
    np.testing.assert_array_equal(raw[0].numpy(), volume.transpose(2, 1, 0)[::-1, ::-1, :])
    resampled = load_volume(folder, spacing=(1.5, 1.5, 1.5), size=(16, 16, 16), intensity="ct")
    assert tuple(resampled.shape) == (1, 16, 16, 16)
    native = load_volume(folder, spacing=(1.5, 1.5, 1.5), size=None, intensity=None)
    expected = tuple(round((n - 1) * v / 1.5) + 1 for n, v in zip((12, 16, 8), (0.8, 0.7, 2.5), strict=True))
    assert tuple(native.shape[1:]) == expected


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"radiology volume .*absent\.nii\.gz does not exist"):
        load_volume(tmp_path / "absent.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(ValueError, match=r"broken\.nii\.gz could not be read with NibabelReader"):
        load_volume(broken)
    notes = tmp_path / "notes.dcm"
    notes.write_text("not DICOM")
    with pytest.raises(ValueError, match=r"notes\.dcm could not be read with ITKReader"):
        load_volume(notes)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is empty: expected the files of one DICOM series"):
        load_volume(tmp_path / "empty")
    flat = write_nifti(tmp_path, np.zeros((5, 6)), np.eye(4), "flat.nii.gz")
    with pytest.raises(ValueError, match=r"flat\.nii\.gz has shape \(5, 6\): expected a 3-D volume"):
        load_volume(flat)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"intensity": "zscore"}, "intensity must be one of"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be three positive"),
        ({"size": (64, 64)}, "size must be three positive"),
        ({"window": (100.0, -100.0)}, "window must be"),
        ({"percentiles": (50.0, 120.0)}, "percentiles must satisfy"),
    ],
)
def test_ill_arg(tmp_path, kwargs, match):
    path = write_nifti(tmp_path, np.zeros((4, 4, 4)), np.eye(4))
    with pytest.raises(ValueError, match=match):
        load_volume(path, **kwargs)

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

"""Opening slides: every bad input of the validation list raises its own class and names the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tifffile

from monai_ext.wsi.errors import (
    CorruptSlideError,
    ImplausibleMPPError,
    MissingMPPError,
    SlideError,
    SlideNotFoundError,
    SlideTooLargeError,
    UnsupportedSlideError,
)
from monai_ext.wsi.open import open_slide


def _assert_names_file(err: pytest.ExceptionInfo, path: Path) -> None:
    assert str(path) in str(err.value)
    assert err.value.path == path


def test_good_slide_opens_with_cucim_and_reports_pyramid(make_tiff):
    path = make_tiff(width=1024, height=768, n_levels=2, mpp=0.5)
    with open_slide(path) as slide:
        info = slide.info
        assert info.backend == "cucim"
        assert info.level_dimensions == ((1024, 768), (256, 192))
        assert info.level_downsamples == pytest.approx((1.0, 4.0))
        assert info.tile_sizes[0] == (256, 256)
        assert info.mpp == pytest.approx(0.5)
        assert info.level_mpp(1) == pytest.approx(2.0)
        region = slide.read_region((256, 0), 0, (64, 32))
        assert region.shape == (32, 64, 3)
        assert region.dtype.name == "uint8"


def test_missing_file(tmp_path):
    path = tmp_path / "absent.svs"
    with pytest.raises(SlideNotFoundError) as err:
        open_slide(path)
    _assert_names_file(err, path)
    assert isinstance(err.value, FileNotFoundError)


def test_not_a_slide(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("this is not an image")
    with pytest.raises(UnsupportedSlideError) as err:
        open_slide(path)
    _assert_names_file(err, path)


def test_unknown_compression_no_reader(make_tiff):
    path = make_tiff(n_levels=1)
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[0].tags["Compression"].overwrite(52479)  # a code neither cuCIM nor OpenSlide decodes
    with pytest.raises(UnsupportedSlideError) as err:
        open_slide(path)
    _assert_names_file(err, path)
    assert "52479" in str(err.value)


def test_deflate_tiff_goes_to_openslide_not_cucim(make_tiff):
    path = make_tiff(compression="zlib")  # cuCIM crashes the process on some deflate TIFFs
    with open_slide(path) as slide:
        assert slide.info.backend == "openslide"
        assert slide.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)


@pytest.mark.parametrize("cut_at", ["inside_level0_data", "at_second_page"])
def test_truncated_file(make_tiff, cut_at):
    path = make_tiff(width=2048, height=1536, n_levels=3)
    with tifffile.TiffFile(path) as tif:
        cut = tif.pages[0].dataoffsets[-1] if cut_at == "inside_level0_data" else tif.pages[1].offset
    data = path.read_bytes()[:cut]
    path.write_bytes(data)
    with pytest.raises(CorruptSlideError) as err:
        open_slide(path)
    _assert_names_file(err, path)
    assert "truncated" in str(err.value)


def test_inconsistent_pyramid(tmp_path, make_tiff):
    good = make_tiff(width=1024, height=768, n_levels=2)
    path = tmp_path / "skewed.tif"
    shutil.copy(good, path)
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[1].tags["ImageLength"].overwrite(96)  # level 1 becomes 256 x 96: 4x in x, 8x in y
    with pytest.raises(CorruptSlideError) as err:
        open_slide(path)
    _assert_names_file(err, path)
    assert "inconsistent pyramid" in str(err.value)


def test_missing_mpp_is_an_error_unless_the_manifest_gives_it(make_tiff):
    path = make_tiff(mpp=None)
    with pytest.raises(MissingMPPError) as err:
        open_slide(path)
    _assert_names_file(err, path)
    with open_slide(path, mpp=0.25) as slide:
        assert slide.info.mpp == pytest.approx(0.25)
        assert slide.info.mpp_source == "manifest"


@pytest.mark.parametrize("mpp", [0.05, 3.0])
def test_implausible_mpp(make_tiff, mpp):
    path = make_tiff(mpp=mpp)
    with pytest.raises(ImplausibleMPPError) as err:
        open_slide(path)
    _assert_names_file(err, path)


def test_pixel_budget_rejects_decompression_bomb_before_decoding(tmp_path, make_tiff):
    good = make_tiff(width=512, height=512, n_levels=1)
    path = tmp_path / "bomb.tif"
    shutil.copy(good, path)
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(300_000)
        tif.pages[0].tags["ImageLength"].overwrite(300_000)
    with pytest.raises(SlideTooLargeError) as err:
        open_slide(path)
    _assert_names_file(err, path)
    with pytest.raises(SlideTooLargeError):
        open_slide(good, max_pixels=100_000)


def test_every_error_is_a_slide_error():
    for cls in (
        SlideNotFoundError,
        UnsupportedSlideError,
        CorruptSlideError,
        MissingMPPError,
        ImplausibleMPPError,
        SlideTooLargeError,
    ):
        assert issubclass(cls, SlideError)


@pytest.mark.shared_data
def test_real_fixture_slides(shared_data):
    slides = shared_data / "fixtures" / "slides"
    with open_slide(slides / "small.svs") as slide:  # Aperio: MPP only in the description, cuCIM says 1.0 + ""
        assert slide.info.backend == "cucim"
        assert slide.info.mpp == pytest.approx(0.499)
    with open_slide(slides / "boxes_0.dcm") as slide:  # DICOM-WSI: OpenSlide fallback
        assert slide.info.backend == "openslide"
    with pytest.raises(ImplausibleMPPError):  # deflate TIFF (cuCIM would crash) declaring 352 um/px
        open_slide(slides / "boxes.tiff")
    with open_slide(slides / "boxes.tiff", mpp=0.5) as slide:
        assert slide.info.backend == "openslide"
        assert slide.read_region((0, 0), 0, (32, 32)).shape == (32, 32, 3)
    path = slides / "unopenable.tiff"
    with pytest.raises(UnsupportedSlideError) as err:
        open_slide(path)
    _assert_names_file(err, path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.svs"
    path.write_bytes(b"")
    with pytest.raises(UnsupportedSlideError) as err:
        open_slide(path)
    _assert_names_file(err, path)

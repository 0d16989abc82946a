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

"""Bad slides: each is refused with its own error class naming the file, before a native reader decodes it, or
ends with a ``failed`` / ``no_tissue`` status while the other slides of the batch go on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from monai_ext.data.cohort import Cohort, CohortError
from monai_ext.wsi import backends
from monai_ext.wsi.batch import SlideJob, write_status_table
from monai_ext.wsi.errors import (
    CorruptSlideError,
    ImplausibleMPPError,
    MissingMPPError,
    SlideNotFoundError,
    SlideTooLargeError,
    UnsupportedSlideError,
)
from monai_ext.wsi.extract import ExtractionConfig, extract_slide
from monai_ext.wsi.grid import make_grid
from monai_ext.wsi.open import DEFAULT_MAX_PIXELS, open_slide
from monai_ext.wsi.store import read_features
from monai_ext.wsi.synthetic import corrupt_tile
from monai_ext.wsi.tissue import detect_tissue
from tests.reliability.conftest import assert_names_file, write_shared_tile_tiff
from tests.wsi.conftest import write_tiff
from tests.wsi.test_extract import CONFIG, MeanColorEncoder

TIFF_HEADER_16_BYTES = b"II*\x00" + b"\x00" * 12


@pytest.fixture
def readers_forbidden(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make constructing cuCIM or OpenSlide readers fail the test; yields the list of attempts."""
    attempts: list[str] = []

    def refuse(self, path):
        attempts.append(f"{type(self).__name__}({path})")
        raise AssertionError(f"a native reader was opened on {path}")

    monkeypatch.setattr(backends.CuCIMBackend, "__init__", refuse)
    monkeypatch.setattr(backends.OpenSlideBackend, "__init__", refuse)
    return attempts


def test_missing_file(tmp_path):
    path = tmp_path / "absent.svs"
    with pytest.raises(SlideNotFoundError) as err:
        open_slide(path)
    assert_names_file(err.value, path)
    assert isinstance(err.value, FileNotFoundError)


def test_not_a_slide(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("this is not an image")
    with pytest.raises(UnsupportedSlideError) as err:
        open_slide(path)
    assert_names_file(err.value, path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.svs"
    path.write_bytes(b"")
    with pytest.raises(UnsupportedSlideError) as err:
        open_slide(path)
    assert_names_file(err.value, path)


def test_16_byte_tiff_header(tmp_path, readers_forbidden):
    path = tmp_path / "header_only.tif"
    path.write_bytes(TIFF_HEADER_16_BYTES)
    with pytest.raises(CorruptSlideError) as err:
        open_slide(path)
    assert_names_file(err.value, path)
    assert "without any image page" in str(err.value)
    assert readers_forbidden == []


def test_unknown_compression_no_reader(make_tiff):
    path = make_tiff(n_levels=1)
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[0].tags["Compression"].overwrite(52479)  # a code neither cuCIM nor OpenSlide decodes
    with pytest.raises(UnsupportedSlideError) as err:
        open_slide(path)
    assert_names_file(err.value, path)
    assert "52479" in str(err.value)


def test_deflate_tiff_goes_to_openslide_not_cucim(make_tiff):
    path = make_tiff(compression="zlib")  # cuCIM crashes the process on some deflate TIFFs
    with open_slide(path) as slide:
        assert slide.info.backend == "openslide"
        assert slide.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)


@pytest.mark.parametrize("cut_at", ["inside_level0_data", "at_second_page", "60%", "20%"])
def test_truncated_file(make_tiff, readers_forbidden, cut_at):
    path = make_tiff(width=2048, height=1536, n_levels=3)
    data = path.read_bytes()
    with tifffile.TiffFile(path) as tif:
        cuts = {
            "inside_level0_data": tif.pages[0].dataoffsets[-1],
            "at_second_page": tif.pages[1].offset,
            "60%": int(len(data) * 0.6),
            "20%": int(len(data) * 0.2),
        }
    path.write_bytes(data[: cuts[cut_at]])
    with pytest.raises(CorruptSlideError) as err:
        open_slide(path)
    assert_names_file(err.value, path)
    assert "truncated" in str(err.value)
    assert readers_forbidden == []


def test_inconsistent_pyramid(tmp_path, make_tiff):
    good = make_tiff(width=1024, height=768, n_levels=2)
    path = tmp_path / "skewed.tif"
    shutil.copy(good, path)
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[1].tags["ImageLength"].overwrite(96)  # level 1 becomes 256 x 96: 4x in x, 8x in y
    with pytest.raises(CorruptSlideError) as err:
        open_slide(path)
    assert_names_file(err.value, path)
    assert "inconsistent pyramid" in str(err.value)


def test_missing_mpp_is_an_error_unless_the_manifest_gives_it(make_tiff):
    path = make_tiff(mpp=None)
    with pytest.raises(MissingMPPError) as err:
        open_slide(path)
    assert_names_file(err.value, path)
    with open_slide(path, mpp=0.25) as slide:
        assert slide.info.mpp == pytest.approx(0.25)
        assert slide.info.mpp_source == "manifest"


@pytest.mark.parametrize("mpp", [0.05, 0.099, 2.01, 3.0])
def test_implausible_mpp(make_tiff, mpp):
    path = make_tiff(mpp=mpp)
    with pytest.raises(ImplausibleMPPError) as err:
        open_slide(path)
    assert_names_file(err.value, path)


@pytest.mark.parametrize("mpp", [0.1, 2.0])
def test_mpp_range_bounds_are_plausible(make_tiff, mpp):
    with open_slide(make_tiff(mpp=mpp)) as slide:
        assert slide.info.mpp == pytest.approx(mpp)


def test_implausible_manifest_mpp_names_the_file(make_tiff):
    path = make_tiff(mpp=None)
    with pytest.raises(ImplausibleMPPError) as err:
        open_slide(path, mpp=5.0)
    assert_names_file(err.value, path)
    assert "manifest" in str(err.value)


def test_cucim_spacing_1_with_empty_unit_is_missing_not_1(make_tiff):
    path = make_tiff(mpp=None)
    image = backends.CuImage(str(path))
    assert list(image.spacing()[:2]) == [1.0, 1.0] and list(image.spacing_units()[:2]) == ["", ""]
    assert backends.CuCIMBackend(path).declared_mpp() is None
    with pytest.raises(MissingMPPError):
        open_slide(path)


def test_pixel_budget_rejects_decompression_bomb_before_decoding(tmp_path, make_tiff):
    good = make_tiff(width=512, height=512, n_levels=1)
    path = tmp_path / "bomb.tif"
    shutil.copy(good, path)
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(300_000)
        tif.pages[0].tags["ImageLength"].overwrite(300_000)
    with pytest.raises(SlideTooLargeError) as err:
        open_slide(path)
    assert_names_file(err.value, path)
    with pytest.raises(SlideTooLargeError):
        open_slide(good, max_pixels=100_000)


@pytest.mark.parametrize(
    "width, height, error, fragment",
    [
        (2**31 - 1, 2**31 - 1, SlideTooLargeError, "above the budget"),
        (2**31 - 1, 16, CorruptSlideError, "tile table lists 4"),  # under the pixel budget: caught by the tile count
    ],
)
def test_declared_2_31_dimensions_refused_before_any_reader(
    tmp_path, make_tiff, readers_forbidden, width, height, error, fragment
):
    good = make_tiff(width=512, height=512, n_levels=1)
    path = tmp_path / "declared_huge.tif"
    shutil.copy(good, path)
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(height)
    with pytest.raises(error) as err:
        open_slide(path)
    assert_names_file(err.value, path)
    assert fragment in str(err.value)
    assert readers_forbidden == []


@pytest.fixture
def reader_log(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record every reader opened (file name) and every region read (file name, level, pixels)."""
    log: dict[str, list] = {"opened": [], "reads": []}
    for cls in (backends.CuCIMBackend, backends.OpenSlideBackend):

        def recording_init(self, path, _init=cls.__init__):
            log["opened"].append(Path(path).name)
            _init(self, path)

        def recording_read(self, location, level, size, _read=cls.read_region):
            log["reads"].append((Path(self.path).name, level, size[0] * size[1]))
            return _read(self, location, level, size)

        monkeypatch.setattr(cls, "__init__", recording_init)
        monkeypatch.setattr(cls, "read_region", recording_read)
    return log


@pytest.mark.parametrize("max_pixels", [DEFAULT_MAX_PIXELS, 2**32 - 1])
def test_consistent_65536_slide_is_never_decoded_whole(tmp_path, make_tiff, reader_log, max_pixels):
    """65536 x 65536 decodes to 12 GiB: within the pixel budget only its smallest level is read; above the budget
    it is refused before a reader opens it. Either way the worker goes on with the next slide."""
    huge = write_shared_tile_tiff(tmp_path / "huge.tif", [65536, 16384, 4096])
    good = make_tiff("good.tif", width=2048, height=1536)
    config = ExtractionConfig(**{**CONFIG.__dict__, "max_pixels": max_pixels})
    result = extract_slide(huge, tmp_path / "out", MeanColorEncoder(), config)
    huge_reads = [(level, pixels) for name, level, pixels in reader_log["reads"] if name == "huge.tif"]
    if max_pixels == DEFAULT_MAX_PIXELS:
        assert result.status == "no_tissue"  # uniform glass
        assert {level for level, _ in huge_reads} == {2}  # the 4096 px level: 0.4 % of level 0
        assert sum(pixels for _, pixels in huge_reads) == 4096 * 4096
    else:
        assert result.status == "failed" and result.reason.startswith("SlideTooLargeError")
        assert str(huge) in result.reason and "65536 x 65536" in result.reason
        assert "huge.tif" not in reader_log["opened"] and huge_reads == []
    assert extract_slide(good, tmp_path / "out", MeanColorEncoder(), config).status == "done"


def test_every_bad_slide_gets_a_status_and_the_batch_goes_on(make_tiff, tmp_path):
    good = make_tiff("good.tif", width=2048, height=1536)
    blank = write_tiff(tmp_path / "blank.tif", np.full((768, 1024, 3), 238, np.uint8))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(TIFF_HEADER_16_BYTES)
    absent = tmp_path / "absent.svs"
    out = tmp_path / "out"
    slides = (good, blank, broken, absent)
    results = {p.stem: extract_slide(p, out, MeanColorEncoder(), CONFIG) for p in slides}
    assert results["good"].status == "done" and results["good"].n_patches > 0
    assert results["blank"].status == "no_tissue"
    for name, error in (("broken", "CorruptSlideError"), ("absent", "SlideNotFoundError")):
        assert results[name].status == "failed"
        assert results[name].reason.startswith(error) and results[name].slide_path in results[name].reason
    loaded = read_features(out / "features" / "good.h5", encoder="mean_color@test", feature_dim=6)
    assert len(loaded.features) == results["good"].n_patches
    assert (out / "qc" / "good.png").is_file() and (out / "qc" / "blank.png").is_file()
    assert sorted(path.name for path in (out / "features").iterdir()) == ["good.h5"]
    table = write_status_table(out, [SlideJob(p, p.stem) for p in slides])
    assert list(table["status"]) == ["done", "no_tissue", "failed", "failed"]


def test_no_tissue_slide_never_reaches_a_model(tmp_path, make_tiff):
    """A no-tissue slide gets no feature file; a manifest that still lists it is refused, naming the slide."""
    out = tmp_path / "out"
    good = extract_slide(make_tiff("good.tif", width=2048, height=1536), out, MeanColorEncoder(), CONFIG)
    blank_slide = write_tiff(tmp_path / "blank.tif", np.full((768, 1024, 3), 238, np.uint8))
    blank = extract_slide(blank_slide, out, MeanColorEncoder(), CONFIG)
    assert (good.status, blank.status) == ("done", "no_tissue")
    assert blank.features_path == "" and not (out / "features" / "blank.h5").exists()
    manifest = pd.DataFrame(
        {
            "case_id": ["P1", "P2"],
            "slide_id": ["good", "blank"],
            "features_path": ["features/good.h5", "features/blank.h5"],
            "label": [0, 1],
        }
    )
    manifest.to_csv(out / "manifest.csv", index=False)
    with pytest.raises(CohortError) as err:
        Cohort.from_csv(out / "manifest.csv", task="classification", encoder="mean_color@test")
    assert "file not found" in str(err.value) and "slide_id blank" in str(err.value)
    assert str(out / "features" / "blank.h5") in str(err.value)


def test_broken_tile_patch_absent_and_counted(make_tiff, tmp_path):
    path = make_tiff("slide.tif", width=2048, height=1536)
    with open_slide(path) as slide:
        grid = make_grid(slide.info, detect_tissue(slide), target_mpp=0.5, patch_size=256, min_tissue_fraction=0.25)
    victim = tuple(int(v) for v in grid.coords[len(grid) // 2])
    corrupt_tile(path, level=0, x=victim[0] + 10, y=victim[1] + 10)
    config = ExtractionConfig(**{**CONFIG.__dict__, "max_broken_fraction": 0.5})
    result = extract_slide(path, tmp_path / "out", MeanColorEncoder(), config)
    assert result.status == "done"
    assert result.n_broken == 1 and result.n_patches == len(grid) - 1
    loaded = read_features(tmp_path / "out" / "features" / "slide.h5")
    assert victim not in {tuple(c) for c in loaded.coords.tolist()}
    assert loaded.attrs["n_broken"] == 1
    assert (loaded.features[:, :3] > 0).all(), "no black patch may reach the encoder"
    write_status_table(tmp_path / "out", [SlideJob(path, "slide")])
    status = pd.read_csv(tmp_path / "out" / "status.csv")
    assert status.loc[0, "status"] == "done" and status.loc[0, "n_broken"] == 1
    assert status.loc[0, "n_patches"] == len(grid) - 1


def test_too_many_broken_tiles_fail_the_slide(make_tiff, tmp_path):
    path = make_tiff("slide.tif", width=2048, height=1536)
    with open_slide(path) as slide:
        grid = make_grid(slide.info, detect_tissue(slide), target_mpp=0.5, patch_size=256, min_tissue_fraction=0.25)
    for x, y in grid.coords[:4]:
        corrupt_tile(path, level=0, x=int(x), y=int(y))
    config = ExtractionConfig(**{**CONFIG.__dict__, "max_broken_fraction": 0.05})
    result = extract_slide(path, tmp_path / "out", MeanColorEncoder(), config)
    assert result.status == "failed" and "BrokenTilesError" in result.reason and str(path) in result.reason
    assert not (tmp_path / "out" / "features" / "slide.h5").exists()


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
    assert_names_file(err.value, path)

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

"""Opening slides: a good slide's pyramid and spacing; one error class per refusal.

The bad inputs themselves (missing, truncated, oversized, ... files) are tested in ``tests/reliability``.
"""

from __future__ import annotations

import pytest

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

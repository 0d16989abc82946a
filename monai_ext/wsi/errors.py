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

"""One exception class per reason a slide cannot be processed; every message names the file.

All derive from :class:`SlideError`, so a pipeline can catch one class, record ``type(err).__name__`` and the
message in its status table, and go on with the next slide.
"""

from __future__ import annotations

from pathlib import Path


class SlideError(Exception):
    """A slide that cannot be processed. ``path`` is the offending file; the message starts with it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide file does not exist."""


class UnsupportedSlideError(SlideError):
    """No available reader (cuCIM, OpenSlide) can open the file, or its encoding is not supported."""


class CorruptSlideError(SlideError):
    """Truncated file or inconsistent pyramid (levels that do not shrink, tiles pointing past the end of the file)."""


class MissingMPPError(SlideError):
    """The file declares no pixel spacing and none was given (e.g. in the manifest's ``mpp`` column)."""


class ImplausibleMPPError(SlideError):
    """The declared pixel spacing is outside the plausible range for a whole-slide image."""


class SlideTooLargeError(SlideError):
    """The declared pixel count exceeds the budget (protects against decompression bombs, on which cuCIM crashes)."""


class BrokenTilesError(SlideError):
    """Too many patches overlapped tiles that failed to decode (returned as zeros by the reader)."""

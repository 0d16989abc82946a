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
"""Silence the native-library banner that nvImageCodec prints when it loads on a machine without CUDA.

MONAI imports ``nvidia.nvimgcodec`` when it is installed (cuCIM pulls it in), and that library writes
"Failed to load nvjpeg library!" lines straight to file descriptor 2 on CPU-only machines. They are noise for
our users, so the package pre-imports it once with the descriptor pointed at ``/dev/null``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at ``/dev/null`` for the duration of the block (catches C-level prints too)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def preload_quietly(module_names: tuple[str, ...] = ("nvidia.nvimgcodec",)) -> None:
    """Import the named modules with native stderr silenced; a module that is not installed is skipped."""
    for name in module_names:
        if name in sys.modules:
            continue
        with native_stderr_silenced(), contextlib.suppress(ImportError):
            importlib.import_module(name)


class NativeOutputWatch:
    """Text written to file descriptors 1 and 2 while :func:`native_output_watch` is active."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self._offset = 0

    def new_text(self) -> str:
        """What was written since the previous call."""
        self._sink.seek(self._offset)
        data = self._sink.read()
        self._offset += len(data)
        return data.decode(errors="replace")


@contextlib.contextmanager
def native_output_watch() -> Iterator[NativeOutputWatch]:
    """Send file descriptors 1 and 2 to a temporary file for the duration of the block and let the caller read it.

    Used around cuCIM reads: its JPEG decoder reports a broken tile only by printing, and the print is both noise
    for the user and the signal we need. Whatever was written is logged at debug level when the block ends.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield NativeOutputWatch(sink)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                logger.debug("native library output while reading: %s", text[:2000])

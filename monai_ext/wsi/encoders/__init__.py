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

"""Patch encoders: a registry of named architectures, local weight loading, and the module that encodes patches.

Use :func:`build_encoder` (``list_encoders()`` for the names). Architectures are plain PyTorch with timm-compatible
parameter names; weights come from local files only.
"""

from __future__ import annotations

from monai_ext.wsi.encoders.registry import (
    EncoderSpec,
    PatchEncoder,
    build_encoder,
    build_encoder_from_spec,
    build_trunk,
    get_encoder_spec,
    list_encoders,
)
from monai_ext.wsi.encoders.weights import clean_state_dict, file_sha256, load_into, load_state_dict_file

__all__ = [
    "EncoderSpec",
    "PatchEncoder",
    "build_encoder",
    "build_encoder_from_spec",
    "build_trunk",
    "clean_state_dict",
    "file_sha256",
    "get_encoder_spec",
    "list_encoders",
    "load_into",
    "load_state_dict_file",
]

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

"""Pack a bundle into a MONAI model-zoo zip, or unpack a bundle zip safely.

Usage:
    python scripts/package_bundle.py bundles/pathology_survival_multimodal --out dist/ [--include_weights True]
        [--weights_url https://...] [--trust_third_party False]
    python scripts/package_bundle.py unpack dist/pathology_survival_multimodal_v0.1.0.zip --dest models_zoo/
        [--trust_third_party False]

Packing writes ``<out>/<name>_v<version>.zip`` with the bundle folder as its top-level member, without
``demo_data/``, ``eval/`` and resume checkpoints; with ``--include_weights False`` the weights are listed in
``large_files.yml`` (path, url, sha256) instead. Unpacking refuses unsafe members, pickled checkpoints and (unless
``--trust_third_party True``) configs that name code outside the allow-list, and leaves nothing behind when it does.
A zip also works with MONAI directly: ``python -m monai.bundle download --name <name> --bundle_dir <dir>
--url file:///abs/path/<zip>``, then ``monai.bundle.load(name=<name>, bundle_dir=<dir>, ...)``.
"""

from __future__ import annotations

import logging
import sys

import fire

from monai_ext.engines.bundle_archive import pack_bundle, unpack_bundle
from monai_ext.engines.config_trust import DEFAULT_ALLOWED_PREFIXES


def pack(
    bundle: str,
    out: str = "dist",
    include_weights: bool = True,
    weights_url: str = "",
    trust_third_party: bool = True,
    allowed_prefixes: tuple[str, ...] = DEFAULT_ALLOWED_PREFIXES,
) -> str:
    """Zip a bundle folder.

    Args:
        bundle: the bundle folder (e.g. bundles/pathology_survival_multimodal).
        out: output folder of the zip.
        include_weights: put models/*.pt and models/*.ts in the zip, or list them in large_files.yml.
        weights_url: url written in large_files.yml for the weights left out.
        trust_third_party: False checks the configs against allowed_prefixes before packing.
        allowed_prefixes: module prefixes a checked config may name.

    Returns:
        the path of the zip.
    """
    return str(
        pack_bundle(
            bundle,
            out,
            include_weights=include_weights,
            weights_url=weights_url,
            trust_third_party=trust_third_party,
            allowed_prefixes=tuple(allowed_prefixes),
        )
    )


def unpack(
    zip_path: str,
    dest: str = ".",
    trust_third_party: bool = False,
    allowed_prefixes: tuple[str, ...] = DEFAULT_ALLOWED_PREFIXES,
    overwrite: bool = False,
) -> str:
    """Extract a bundle zip into dest/<name>, all or nothing.

    Args:
        zip_path: the bundle zip.
        dest: folder that receives the bundle folder.
        trust_third_party: True skips the allow-list check of the configs (bundles whose author you trust).
        allowed_prefixes: module prefixes the configs may name.
        overwrite: replace an existing dest/<name>.

    Returns:
        the extracted bundle folder.
    """
    return str(
        unpack_bundle(
            zip_path,
            dest,
            trust_third_party=trust_third_party,
            allowed_prefixes=tuple(allowed_prefixes),
            overwrite=overwrite,
        )
    )


def main(argv: list[str] | None = None) -> None:
    """``pack`` when the first argument is a bundle folder, else the ``pack`` / ``unpack`` commands."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] not in ("pack", "unpack", "--help", "-h"):
        args = ["pack", *args]
    fire.Fire({"pack": pack, "unpack": unpack}, command=args)


if __name__ == "__main__":
    main()

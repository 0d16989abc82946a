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

"""Pack a bundle into a MONAI model-zoo zip, and unpack a bundle zip safely.

The zip holds the bundle folder as its one top-level member (``<name>/configs/...``, ``<name>/models/model.pt``,
``<name>/docs/README.md``, ``<name>/LICENSE``), as the model zoo and ``monai.bundle.download`` expect. Generated
folders (``demo_data/``, ``eval/``, ``models/resume_*`` checkpoints) are left out. Without the weights, the zip
lists them in ``large_files.yml`` (MONAI's format: path, url, sha256) so that ``monai.bundle download_large_files``
can fetch and verify them.

Unpacking refuses the whole archive, before anything reaches the destination, when a member is an absolute path,
climbs out with ``..``, is a link or a special file, lies outside the bundle folder, or is repeated; when the
archive expands beyond a size limit; when a ``models/*.pt`` file is not a plain-tensor checkpoint (a pickle
payload is never run: ``torch.load(weights_only=True)``); and, for third-party bundles, when a config names code
outside an allow-list (:mod:`monai_ext.engines.config_trust`). Members go to a staging folder beside the
destination, which is renamed into place only when all is well, and removed otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import posixpath
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch

from monai_ext.engines.config_trust import DEFAULT_ALLOWED_PREFIXES, check_bundle_configs

__all__ = [
    "LARGE_FILES_NAME",
    "MAX_UNPACKED_BYTES",
    "BundleArchiveError",
    "bundle_members",
    "pack_bundle",
    "unpack_bundle",
]

logger = logging.getLogger(__name__)

LARGE_FILES_NAME = "large_files.yml"
MAX_UNPACKED_BYTES = 16 << 30
SKIPPED_FOLDERS = ("demo_data", "eval")
SKIPPED_NAMES = ("__pycache__", ".ipynb_checkpoints", ".DS_Store")
WEIGHT_SUFFIXES = (".pt", ".ts")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same bundle always packs to the same bytes
_COPY_BLOCK = 1 << 20


class BundleArchiveError(ValueError):
    """A bundle folder that cannot be packed, or a zip that is refused; the message names the file and member."""


def bundle_members(bundle_dir: str | Path) -> list[str]:
    """Files of a bundle that belong in its zip, as sorted POSIX paths relative to ``bundle_dir``.

    Left out: ``demo_data/``, ``eval/``, ``models/resume_*``, caches (``__pycache__``) and temporary files
    (``*.partial``, ``*.tmp``).

    Raises:
        BundleArchiveError: a symbolic link inside the bundle (its target could be anything on this machine).
    """
    root = Path(bundle_dir)
    members = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        parts = relative.parts
        if parts[0] in SKIPPED_FOLDERS or any(part in SKIPPED_NAMES for part in parts):
            continue
        if path.is_symlink():
            raise BundleArchiveError(f"{path}: symbolic link inside the bundle; replace it with the file it points to")
        if not path.is_file() or path.suffix in (".partial", ".tmp", ".pyc"):
            continue
        if parts[0] == "models" and path.name.startswith("resume_"):
            continue
        members.append(relative.as_posix())
    return members


def pack_bundle(
    bundle_dir: str | Path,
    out_dir: str | Path,
    *,
    include_weights: bool = True,
    weights_url: str = "",
    trust_third_party: bool = True,
    allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
) -> Path:
    """Zip a bundle in the MONAI model-zoo layout.

    Args:
        bundle_dir: the bundle folder (with ``configs/metadata.json``); its name is the zip's top-level folder.
        out_dir: where ``<name>_v<version>.zip`` is written (atomically).
        include_weights: put ``models/*.pt`` and ``models/*.ts`` in the zip; otherwise list them, with their
            sha256, in ``large_files.yml``.
        weights_url: where the weights will be published (the ``url`` of ``large_files.yml``; may be empty).
        trust_third_party: False checks the configs against ``allowed_prefixes`` first (for repackaging a
            bundle written by someone else); True packs them as they are (first-party bundles).
        allowed_prefixes: module prefixes a checked config may name.

    Returns:
        the path of the zip.

    Raises:
        BundleArchiveError: not a bundle folder, or a symbolic link inside it.
        monai_ext.engines.config_trust.UntrustedConfigError: a checked config names code outside the allow-list.
    """
    root = Path(bundle_dir).resolve()
    metadata = root / "configs" / "metadata.json"
    if not metadata.is_file():
        raise BundleArchiveError(f"{root}: not a bundle folder (no configs/metadata.json)")
    if not trust_third_party:
        check_bundle_configs(root, allowed_prefixes=allowed_prefixes)
    version = json.loads(metadata.read_text()).get("version")
    members = bundle_members(root)
    weights = [name for name in members if name.startswith("models/") and name.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        logger.warning("%s: no trained weights under models/; the zip holds the configs only", root)
    large_files = None
    if not include_weights:
        members = [name for name in members if name not in weights]
        large_files = _large_files_yml(root, weights, weights_url)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (f"{root.name}_v{version}.zip" if version else f"{root.name}.zip")
    tmp = target.with_name(f".{target.name}.partial")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in members:
                _add_file(archive, f"{root.name}/{name}", (root / name).read_bytes())
            if large_files is not None:
                _add_file(archive, f"{root.name}/{LARGE_FILES_NAME}", large_files.encode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("packed %d files of %s into %s", len(members), root, target)
    return target


def unpack_bundle(
    zip_path: str | Path,
    dest_dir: str | Path,
    *,
    trust_third_party: bool = False,
    allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES,
    overwrite: bool = False,
    max_bytes: int = MAX_UNPACKED_BYTES,
) -> Path:
    """Extract a bundle zip into ``dest_dir/<name>`` after checking every member; all or nothing.

    Args:
        zip_path: the bundle zip (one top-level folder, the bundle).
        dest_dir: the folder that receives the bundle folder (e.g. the ``bundle_dir`` of ``monai.bundle.load``).
        trust_third_party: False (default) checks the configs against ``allowed_prefixes`` before the bundle is
            moved into place; True skips that check, for bundles whose author you trust.
        allowed_prefixes: module prefixes the configs may name.
        overwrite: replace an existing ``dest_dir/<name>``; otherwise that is an error.
        max_bytes: the most bytes the archive may expand to.

    Returns:
        the extracted bundle folder.

    Raises:
        BundleArchiveError: not a zip, an unsafe or stray member, too large, a checkpoint that is not plain
            tensors, or an existing destination; the message names the zip and the member.
        monai_ext.engines.config_trust.UntrustedConfigError: a config names code outside the allow-list.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise BundleArchiveError(f"{zip_path}: bundle zip not found")
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise BundleArchiveError(f"{zip_path}: not a zip file ({err})") from err
    dest_dir = Path(dest_dir)
    with archive:
        name = _check_members(zip_path, archive.infolist(), max_bytes)
        final = dest_dir / name
        if final.exists() and not overwrite:
            raise BundleArchiveError(f"{zip_path}: {final} already exists; remove it or pass overwrite=True")
        dest_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=dest_dir))
        try:
            _extract(zip_path, archive, staging)
            bundle = staging / name
            if not (bundle / "configs" / "metadata.json").is_file():
                raise BundleArchiveError(f"{zip_path}: {name}/configs/metadata.json is missing: not a MONAI bundle")
            _check_weights(zip_path, bundle)
            if not trust_third_party:
                check_bundle_configs(bundle, allowed_prefixes=allowed_prefixes)
            if final.exists():
                shutil.rmtree(final)
            os.replace(bundle, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("unpacked %s into %s", zip_path, final)
    return final


def _add_file(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    """One regular file (mode 644, fixed date) in the zip."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def _large_files_yml(root: Path, weights: list[str], url: str) -> str:
    """MONAI's ``large_files.yml``: one entry (path, url, sha256) per weights file left out of the zip."""
    lines = ["large_files:"]
    for name in weights:
        digest = hashlib.sha256()
        with open(root / name, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(_COPY_BLOCK), b""):
                digest.update(block)
        lines += [
            f"  - path: {json.dumps(name)}",
            f"    url: {json.dumps(url)}",
            f"    hash_val: {json.dumps(digest.hexdigest())}",
            '    hash_type: "sha256"',
        ]
    return "\n".join(lines if weights else ["large_files: []"]) + "\n"


def _check_members(zip_path: Path, infos: list[zipfile.ZipInfo], max_bytes: int) -> str:
    """Refuse unsafe, stray or repeated members and oversized archives; return the bundle's folder name."""
    if not infos:
        raise BundleArchiveError(f"{zip_path}: empty zip, not a bundle")
    seen: set[str] = set()
    tops: set[str] = set()
    declared = 0
    for info in infos:
        problem = _member_problem(info)
        if problem:
            raise BundleArchiveError(f"{zip_path}: member {info.filename!r} {problem}; nothing was extracted")
        normal = posixpath.normpath(info.filename)
        if normal in seen:
            raise BundleArchiveError(f"{zip_path}: member {info.filename!r} appears twice; nothing was extracted")
        seen.add(normal)
        tops.add(normal.split("/")[0])
        if "/" not in normal and not info.is_dir():
            raise BundleArchiveError(
                f"{zip_path}: member {info.filename!r} lies outside the bundle folder (a bundle zip holds one "
                "top-level folder, <name>/); nothing was extracted"
            )
        declared += info.file_size
    if len(tops) != 1:
        raise BundleArchiveError(
            f"{zip_path}: several top-level folders {sorted(tops)}; a bundle zip holds one; nothing was extracted"
        )
    if declared > max_bytes:
        raise BundleArchiveError(
            f"{zip_path}: expands to {declared:,} bytes, above the limit of {max_bytes:,} bytes; nothing was extracted"
        )
    return tops.pop()


def _member_problem(info: zipfile.ZipInfo) -> str:
    """Why a member is unsafe, or an empty string."""
    name = info.filename
    mode = info.external_attr >> 16
    if not name or "\\" in name or "\x00" in name:
        return "has an empty name, a backslash or a NUL byte"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "climbs out of the destination with '..'"
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "is not a regular file or folder"
    return ""


def _extract(zip_path: Path, archive: zipfile.ZipFile, staging: Path) -> None:
    """Write every member under ``staging`` (reads stop at each member's declared size, checked beforehand)."""
    for info in archive.infolist():
        target = staging / posixpath.normpath(info.filename)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with archive.open(info) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, _COPY_BLOCK)
        except (zipfile.BadZipFile, zlib.error) as err:
            raise BundleArchiveError(
                f"{zip_path}: member {info.filename!r} is corrupt ({err}); nothing was extracted"
            ) from err


def _check_weights(zip_path: Path, bundle: Path) -> None:
    """Every ``models/*.pt`` must load with ``weights_only=True``: a pickle payload is refused, never run."""
    for path in sorted((bundle / "models").glob("*.pt")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
            member = f"{bundle.name}/{path.relative_to(bundle).as_posix()}"
            raise BundleArchiveError(
                f"{zip_path}: member {member!r} is not a plain-tensor checkpoint (refused to unpickle code, or "
                f"corrupt): {_load_failure(err)}; nothing was extracted"
            ) from err


def _load_failure(err: BaseException) -> str:
    """The informative line of a ``torch.load`` error, without its advice to retry with ``weights_only=False``."""
    skipped = ("Weights only load failed", "Check the documentation")
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith(skipped)]
    return lines[0] if lines else type(err).__name__

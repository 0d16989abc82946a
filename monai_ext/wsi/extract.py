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

"""One slide to one feature file: open and validate, detect tissue, grid, read in batches, encode, store.

The outcome of every slide is a :class:`SlideResult` with status ``done``, ``no_tissue`` or ``failed`` and a
reason; a bad slide never raises out of :func:`extract_slide`, so a folder run always finishes. Outputs under
``out_dir``: ``features/<slide_id>.h5``, ``qc/<slide_id>.png`` and ``status/<slide_id>.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_ext.wsi.errors import BrokenTilesError, SlideError
from monai_ext.wsi.grid import PatchGrid, make_grid
from monai_ext.wsi.open import DEFAULT_MAX_PIXELS, open_slide
from monai_ext.wsi.reader import PatchDataset, patch_loader
from monai_ext.wsi.store import is_complete, read_attrs, write_features
from monai_ext.wsi.tissue import TissueConfig, check_known_keys, detect_tissue, save_qc_png

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractionConfig:
    """Parameters of feature extraction (``configs/wsi.json``).

    Attributes:
        mpp: target micrometers per pixel of the patches.
        patch_size: patch side in pixels at ``mpp``.
        min_tissue_fraction: minimum tissue share of a patch.
        batch_size: patches per batched read and per encoder call.
        num_threads: cuCIM decoder threads per batched read.
        loader_workers: ``DataLoader`` worker processes (0 reads in the main process).
        max_broken_fraction: a slide fails when more than this share of its patches hit undecodable tiles.
        max_pixels: decompression-bomb guard, see :func:`open_slide`.
        tissue: tissue detection parameters.
    """

    mpp: float = 0.5
    patch_size: int = 256
    min_tissue_fraction: float = 0.25
    batch_size: int = 64
    num_threads: int = 2
    loader_workers: int = 0
    max_broken_fraction: float = 0.05
    max_pixels: int = DEFAULT_MAX_PIXELS
    tissue: TissueConfig = field(default_factory=TissueConfig)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExtractionConfig:
        """Build from a dict (e.g. the JSON file); unknown keys are an error listing the known ones."""
        values = dict(values)
        check_known_keys(cls, values, "extraction")
        if "tissue" in values:
            values["tissue"] = TissueConfig.from_dict(values["tissue"])
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path, **overrides: Any) -> ExtractionConfig:
        """Load ``path`` (e.g. ``configs/wsi.json``) and apply keyword overrides."""
        with open(path) as handle:
            values = json.load(handle)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls.from_dict(values)


@dataclass
class SlideResult:
    """Outcome of one slide (one row of the status table)."""

    slide_id: str
    slide_path: str
    status: str
    reason: str = ""
    n_patches: int = 0
    n_broken: int = 0
    backend: str = ""
    seconds: float = 0.0
    features_path: str = ""


class SlideOutputs:
    """Paths of a slide's outputs under ``out_dir``."""

    def __init__(self, out_dir: str | Path, slide_id: str) -> None:
        out_dir = Path(out_dir)
        self.features = out_dir / "features" / f"{slide_id}.h5"
        self.qc = out_dir / "qc" / f"{slide_id}.png"
        self.status = out_dir / "status" / f"{slide_id}.json"

    def write_status(self, result: SlideResult) -> None:
        """Write the slide's status JSON atomically.

        Raises:
            OSError: the record could not be written (e.g. disk full); the message names it, and neither its
                temporary file nor a partial record is left behind.
        """
        self.status.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status.with_name(self.status.name + ".tmp")
        try:
            tmp.write_text(json.dumps(asdict(result), indent=1))
            tmp.replace(self.status)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise OSError(
                err.errno, f"{self.status}: could not write the slide's status record ({err}); free disk space"
            ) from err


def expected_attrs(config: ExtractionConfig, encoder_identity: str) -> dict[str, Any]:
    """Attributes a finished feature file must carry to be reused for this configuration."""
    return {
        "encoder": encoder_identity,
        "patch_size": config.patch_size,
        "mpp": float(config.mpp),
        "min_tissue_fraction": float(config.min_tissue_fraction),
    }


def extract_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    encoder: torch.nn.Module,
    config: ExtractionConfig,
    *,
    slide_id: str | None = None,
    mpp: float | None = None,
    device: str | torch.device = "cpu",
    resume: bool = True,
) -> SlideResult:
    """Turn one slide into a feature file, a QC picture and a status record.

    Args:
        slide_path: the slide file.
        out_dir: output folder.
        encoder: a patch encoder (uint8 ``[B, 3, P, P]`` -> ``[B, D]``) with an ``identity`` string.
        config: extraction parameters.
        slide_id: identifier used for file names (default: the file stem).
        mpp: manifest pixel spacing, when the file lacks one or is wrong.
        device: where the encoder runs.
        resume: skip the slide when a finished feature file for this configuration exists.

    Returns:
        the :class:`SlideResult`; failures are reported there, not raised.
    """
    slide_path = Path(slide_path)
    slide_id = slide_id or slide_path.stem
    outputs = SlideOutputs(out_dir, slide_id)
    attrs = expected_attrs(config, encoder.identity)
    if resume and is_complete(outputs.features, {**attrs, "slide_id": slide_id}):
        result = SlideResult(
            slide_id,
            str(slide_path),
            "done",
            "already extracted",
            n_patches=int(_attr(outputs.features, "n_patches")),
            n_broken=int(_attr(outputs.features, "n_broken")),
            features_path=str(outputs.features),
        )
        outputs.write_status(result)
        return result
    start = time.perf_counter()
    try:
        result = _extract(slide_path, slide_id, outputs, encoder, config, attrs, mpp, torch.device(device))
    except SlideError as err:
        result = SlideResult(slide_id, str(slide_path), "failed", f"{type(err).__name__}: {err}")
    except (OSError, RuntimeError, ValueError) as err:
        logger.debug("unexpected failure on %s", slide_path, exc_info=True)
        result = SlideResult(slide_id, str(slide_path), "failed", f"{type(err).__name__}: {slide_path}: {err}")
    result.seconds = round(time.perf_counter() - start, 3)
    outputs.write_status(result)
    return result


def _extract(
    slide_path: Path,
    slide_id: str,
    outputs: SlideOutputs,
    encoder: torch.nn.Module,
    config: ExtractionConfig,
    attrs: dict[str, Any],
    mpp: float | None,
    device: torch.device,
) -> SlideResult:
    """The pipeline proper; raises on bad slides."""
    with open_slide(slide_path, mpp=mpp, max_pixels=config.max_pixels) as slide:
        info = slide.info
        tissue = detect_tissue(slide, config.tissue)
        grid = make_grid(
            info,
            tissue,
            target_mpp=config.mpp,
            patch_size=config.patch_size,
            min_tissue_fraction=config.min_tissue_fraction,
        )
    outputs.qc.parent.mkdir(parents=True, exist_ok=True)
    save_qc_png(outputs.qc, tissue, grid.coords, grid.size_level0)
    if len(grid) == 0:
        reason = "no tissue detected" if not tissue.mask.any() else "no patch with enough tissue fits the slide"
        return SlideResult(slide_id, str(slide_path), "no_tissue", reason, backend=info.backend)
    features, coords, n_broken = encode_grid(slide_path, grid, encoder, config, mpp=mpp, device=device)
    write_features(
        outputs.features,
        features,
        coords,
        slide_id=slide_id,
        encoder=attrs["encoder"],
        patch_size=config.patch_size,
        mpp=config.mpp,
        level=grid.level,
        extra={
            "min_tissue_fraction": attrs["min_tissue_fraction"],
            "n_broken": n_broken,
            "backend": info.backend,
            "slide_mpp": info.mpp,
            "tile_aligned": grid.tile_aligned,
        },
    )
    reason = f"{n_broken} patches dropped: undecodable tiles" if n_broken else ""
    return SlideResult(
        slide_id,
        str(slide_path),
        "done",
        reason,
        n_patches=len(features),
        n_broken=n_broken,
        backend=info.backend,
        features_path=str(outputs.features),
    )


def encode_grid(
    slide_path: Path,
    grid: PatchGrid,
    encoder: torch.nn.Module,
    config: ExtractionConfig,
    *,
    mpp: float | None = None,
    device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Read the grid's patches in batches and encode them.

    Returns:
        features float32 ``[N, D]``, coords int64 ``[N, 2]`` of the kept patches, and the number of broken patches.

    Raises:
        BrokenTilesError: more than ``config.max_broken_fraction`` of the patches hit undecodable tiles.
    """
    device = device or torch.device("cpu")
    dataset = PatchDataset(slide_path, grid, mpp=mpp, batch_size=config.batch_size, num_threads=config.num_threads)
    allowed_broken = config.max_broken_fraction * len(grid)
    features, coords, n_broken = [], [], 0
    use_amp = device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        for batch in patch_loader(dataset, num_workers=config.loader_workers):
            n_broken += len(batch["broken_coords"])
            if n_broken > allowed_broken:
                raise BrokenTilesError(
                    slide_path,
                    f"{n_broken} of {len(grid)} patches hit undecodable tiles (limit "
                    f"{config.max_broken_fraction:.0%}); the file is damaged, re-export or re-scan it",
                )
            if len(batch["image"]) == 0:
                continue
            images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            features.append(encoder(images).float().cpu().numpy())
            coords.append(batch["coords"].numpy())
    if not features:
        return np.zeros((0, getattr(encoder, "feature_dim", 0)), np.float32), np.zeros((0, 2), np.int64), n_broken
    return np.concatenate(features), np.concatenate(coords), n_broken


def _attr(path: Path, key: str) -> Any:
    """One attribute of a finished feature file (0 when absent)."""
    return (read_attrs(path) or {}).get(key, 0)

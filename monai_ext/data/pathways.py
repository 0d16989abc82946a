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

"""Gene-set compositions (pathways, gene families) and the gene-table columns that belong to each.

Shipped compositions (``monai_ext/resources/pathways``):

- ``"hallmarks"``: the 50 MSigDB Hallmark gene sets (Liberzon et al. 2015, https://doi.org/10.1016/j.cels.2015.12.004)
  as used by SurvPath (https://arxiv.org/abs/2304.06819);
- ``"combine"``: 331 Reactome + Hallmark pathways of SurvPath;
- ``"mcat"``: MCAT's 6 gene families (https://arxiv.org/abs/2109.09520): tumor suppressors, oncogenes, protein
  kinases, cell differentiation markers, transcription factors, cytokines and growth factors.

Two CSV layouts exist and both are read: *signatures* (one column per pathway, gene symbols in the cells, padded
with empty cells) and *membership* (``*_comps.csv``: one row per gene, first column the symbol, one 0/1 column per
pathway). The ``hallmarks_comps`` and ``combine_comps`` membership tables are shipped as well.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import IO

import pandas as pd

from monai_ext.data.omics import gene_symbol

__all__ = [
    "SHIPPED",
    "PathwayReport",
    "load_composition",
    "pathway_gene_index",
    "read_composition",
]

logger = logging.getLogger(__name__)

SHIPPED = {
    "hallmarks": "hallmarks_signatures.csv",
    "combine": "combine_signatures.csv",
    "mcat": "mcat_signatures.csv",
    "hallmarks_comps": "hallmarks_comps.csv",
    "combine_comps": "combine_comps.csv",
}
LAYOUTS = ("auto", "signatures", "membership")


def read_composition(source: str | Path | IO[str], layout: str = "auto") -> dict[str, list[str]]:
    """Read a composition CSV into ``{pathway: [gene symbols]}`` (file order, duplicates removed).

    Args:
        source: path or open text file.
        layout: ``"signatures"``, ``"membership"`` or ``"auto"`` (membership when every column after the first
            holds only 0 and 1).

    Raises:
        ValueError: unknown layout, or a table that fits neither layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    table = pd.read_csv(source)
    values = table.iloc[:, 1:]
    is_membership = values.shape[1] > 0 and all(
        pd.api.types.is_numeric_dtype(values[column]) and values[column].isin([0, 1]).all() for column in values
    )
    if layout == "auto":
        layout = "membership" if is_membership else "signatures"
    if layout == "membership":
        if not is_membership:
            raise ValueError(f"{source}: a membership table needs 0/1 values in every column after the gene column")
        genes = table.iloc[:, 0].astype(str).str.strip()
        return {str(pathway): list(dict.fromkeys(genes[values[pathway] == 1])) for pathway in values.columns}
    composition = {}
    for pathway in table.columns:
        cells = table[pathway].dropna()
        if not all(isinstance(cell, str) for cell in cells):
            raise ValueError(f"{source}: pathway column {pathway!r} holds non-text cells; is it a membership table?")
        composition[str(pathway)] = list(dict.fromkeys(cell.strip() for cell in cells if cell.strip()))
    return composition


def load_composition(name: str | Path) -> dict[str, list[str]]:
    """A shipped composition by name (see :data:`SHIPPED`), or a composition CSV by path.

    Raises:
        ValueError: neither a shipped name nor an existing file.
    """
    if str(name) in SHIPPED:
        resource = files("monai_ext") / "resources" / "pathways" / SHIPPED[str(name)]
        with resource.open("r") as handle:
            return read_composition(handle)
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"unknown composition {str(name)!r}: use one of {sorted(SHIPPED)} or a path to a CSV file")
    return read_composition(path)


@dataclass
class PathwayReport:
    """What :func:`pathway_gene_index` kept and dropped.

    Attributes:
        kept: pathways kept, in composition order.
        dropped: pathways dropped, with the number of their genes found in the gene list.
        unused_columns: gene-list columns that belong to no kept pathway.
    """

    kept: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    unused_columns: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{len(self.kept)} pathways kept, {len(self.dropped)} dropped for too few genes, "
            f"{len(self.unused_columns)} columns in no kept pathway"
        )


def pathway_gene_index(
    gene_list: Sequence[str],
    composition: str | Path | Mapping[str, Sequence[str]],
    min_genes: int = 1,
) -> tuple[list[tuple[str, list[int]]], PathwayReport]:
    """Column indices of ``gene_list`` that belong to each pathway, matched by gene symbol.

    A column matches a pathway gene when its name without the ``_rnaseq``/``_cnv``/``_mut`` suffix equals the
    symbol, so a gene present in several modalities contributes all its columns (as in MCAT's gene families).

    Args:
        gene_list: the gene-table columns, in model input order (e.g. ``GeneScaler.genes``).
        composition: a shipped name, a CSV path, or ``{pathway: [symbols]}``.
        min_genes: pathways with fewer distinct genes present are dropped (and reported).

    Returns:
        ``[(pathway, sorted column indices), ...]`` in composition order, and a :class:`PathwayReport`.

    Raises:
        ValueError: ``min_genes`` < 1, or no pathway left.
    """
    if min_genes < 1:
        raise ValueError(f"min_genes must be >= 1, got {min_genes}")
    if not isinstance(composition, Mapping):
        composition = load_composition(composition)
    columns_of: dict[str, list[int]] = {}
    for j, column in enumerate(gene_list):
        columns_of.setdefault(gene_symbol(str(column)), []).append(j)
    index, report, used = [], PathwayReport(), set()
    for pathway, symbols in composition.items():
        present = [symbol for symbol in dict.fromkeys(symbols) if symbol in columns_of]
        if len(present) < min_genes:
            report.dropped[pathway] = len(present)
            continue
        columns = sorted(j for symbol in present for j in columns_of[symbol])
        index.append((pathway, columns))
        report.kept.append(pathway)
        used.update(columns)
    report.unused_columns = [str(column) for j, column in enumerate(gene_list) if j not in used]
    if report.dropped:
        logger.warning("%d pathway(s) dropped with fewer than %d genes present", len(report.dropped), min_genes)
    if not index:
        raise ValueError(
            f"no pathway has {min_genes} or more of the {len(gene_list)} genes given; check the gene names "
            f"(symbols such as TP53, optionally with _rnaseq/_cnv/_mut) and min_genes"
        )
    return index, report

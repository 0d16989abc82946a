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

"""Clinical variables as a float vector: an encoder fitted on the training fold only, saved as JSON.

Three kinds of column, each encoded with statistics of the training rows alone (so nothing leaks from the
validation or test patients):

- numeric (age, ...): ``(x - mean) / std`` with the training mean and population std; a missing value is
  replaced by the training median and flagged in a ``<column>__missing`` indicator (one per numeric column,
  always present, so the layout does not depend on whether training happened to have gaps). This is the
  mean-imputation-plus-indicator scheme analysed by Le Morvan et al. (https://arxiv.org/abs/2106.00311).
- categorical (sex, grade, subtype, ...): one-hot over the categories seen in training plus a
  ``<column>__unknown`` slot that receives missing values and values never seen in training (logged once per
  column, never an error at inference).
- ordinal (stage, ...): the rank in a given order scaled to ``[0, 1]``; missing or unlisted values take the
  training median rank and set ``<column>__missing``.

Values are matched as text, so ``1``, ``1.0`` and ``"1"`` are the same category, and empty strings count as
missing.
"""

from __future__ import annotations

import json
import logging
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ClinicalEncoder"]

logger = logging.getLogger(__name__)

_FORMAT = "monai_ext.clinical_encoder"
_VERSION = 1
MISSING_SUFFIX = "__missing"
UNKNOWN_SUFFIX = "__unknown"


def _category_key(value: Any) -> str | None:
    """The text a value is matched by, or None when it is missing (None, NaN, NaT, empty string)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        if not np.isfinite(value):
            return None
        return str(int(value)) if float(value).is_integer() else str(float(value))
    if pd.isna(value):
        return None
    return str(value)


def _keys(series: pd.Series) -> list[str | None]:
    return [_category_key(value) for value in series.tolist()]


class ClinicalEncoder:
    """Encode clinical columns into a float32 vector with statistics of the training rows only.

    Example::

        encoder = ClinicalEncoder().fit(table, ["age", "sex", "stage"], case_ids=train_ids,
                                        categorical=["sex"], ordinal={"stage": ["I", "II", "III", "IV"]})
        features, observed = encoder.transform(table)  # [N, C] float32, [N] bool
        encoder.save("clinical_encoder.json")
    """

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.numeric: dict[str, dict[str, float]] = {}
        self.categorical: dict[str, list[str]] = {}
        self.ordinal: dict[str, dict[str, Any]] = {}
        self.n_train = 0
        self._reported: set[str] = set()

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load`) has run."""
        return bool(self.columns)

    @property
    def feature_names(self) -> list[str]:
        """Name of each output column, in order: ``age``, ``age__missing``, ``sex=F``, ``sex__unknown``, ..."""
        self._check_fitted()
        names: list[str] = []
        for column in self.columns:
            if column in self.categorical:
                names += [f"{column}={category}" for category in self.categorical[column]]
                names.append(f"{column}{UNKNOWN_SUFFIX}")
            else:
                names += [column, f"{column}{MISSING_SUFFIX}"]
        return names

    @property
    def n_features(self) -> int:
        """Width ``C`` of the encoded vector."""
        return len(self.feature_names)

    def fit(
        self,
        table: pd.DataFrame,
        columns: Sequence[str],
        *,
        categorical: Sequence[str] = (),
        ordinal: Mapping[str, Sequence[Any]] | None = None,
        case_ids: Sequence[Any] | None = None,
    ) -> ClinicalEncoder:
        """Learn the encoding from the training rows.

        Args:
            table: clinical table ``[N, *]`` (rows are patients, index ``case_id`` when ``case_ids`` is used).
            columns: the columns to encode, in output order; those not in ``categorical`` or ``ordinal`` are
                numeric.
            categorical: columns one-hot encoded over their training categories plus an unknown slot.
            ordinal: column -> ordered values (lowest first), e.g. ``{"stage": ["I", "II", "III", "IV"]}``.
            case_ids: the training rows (index labels of ``table``); None uses every row, so pass the training
                fold's ids when ``table`` holds the whole cohort.

        Raises:
            KeyError: columns or case ids absent from the table.
            ValueError: empty selection, repeated columns, a column declared twice, a numeric column with
                non-numeric or no observed training values, an ordinal training value not in its order list.
        """
        columns = [str(column) for column in columns]
        ordinal = {str(key): list(order) for key, order in (ordinal or {}).items()}
        categorical = [str(column) for column in categorical]
        self._check_declaration(table, columns, categorical, ordinal)
        if case_ids is not None:
            case_ids = list(case_ids)
            unknown = [case for case in case_ids if case not in table.index]
            if unknown:
                raise KeyError(f"{len(unknown)} training case id(s) not in the clinical table, first {unknown[:10]}")
            table = table.loc[case_ids]
        if table.empty:
            raise ValueError(f"cannot fit a ClinicalEncoder on an empty table (shape {table.shape})")
        numeric: dict[str, dict[str, float]] = {}
        categories: dict[str, list[str]] = {}
        ranks: dict[str, dict[str, Any]] = {}
        for column in columns:
            if column in categorical:
                categories[column] = sorted({key for key in _keys(table[column]) if key is not None})
            elif column in ordinal:
                ranks[column] = self._fit_ordinal(table[column], column, ordinal[column])
            else:
                numeric[column] = self._fit_numeric(table[column], column)
        self.columns, self.numeric, self.categorical, self.ordinal = columns, numeric, categories, ranks
        self.n_train = len(table)
        self._reported = set()
        return self

    def transform(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Encode every row of ``table``.

        Args:
            table: clinical table ``[N, *]`` holding every fitted column (other columns are ignored).

        Returns:
            ``features`` float32 ``[N, C]`` in :attr:`feature_names` order, and ``observed`` bool ``[N]``: True
            where the row had at least one observed value among the fitted columns (a categorical value counts
            even when unseen in training; a numeric or ordinal value counts when it parses or is in the order).
            An all-missing row is encoded with training medians and unknown slots: mask it out, do not trust it.

        Raises:
            KeyError: a fitted column is absent from the table.
        """
        self._check_fitted()
        absent = [column for column in self.columns if column not in table.columns]
        if absent:
            raise KeyError(f"clinical column(s) {absent} used at fit time are absent from the table; add them")
        blocks: list[np.ndarray] = []
        observed = np.zeros(len(table), dtype=bool)
        for column in self.columns:
            keys = _keys(table[column])
            if column in self.categorical:
                blocks.append(self._encode_categorical(keys, column))
                observed |= np.array([key is not None for key in keys], dtype=bool)
                continue
            if column in self.ordinal:
                blocks.append(self._encode_ordinal(keys, column))
            else:
                blocks.append(self._encode_numeric(table[column], keys, column))
            observed |= blocks[-1][:, 1] == 0
        features = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(table), 0))
        return features.astype(np.float32), observed

    def transform_frame(self, table: pd.DataFrame) -> pd.DataFrame:
        """Encode ``table`` and keep the observed rows, as the float table the multimodal dataset takes.

        Returns:
            DataFrame ``[N_observed, C]`` with ``table``'s index and :attr:`feature_names` columns; patients
            without a row get ``clinical_mask=False`` in :class:`monai_ext.data.dataset.MultimodalDataset`.
        """
        features, observed = self.transform(table)
        return pd.DataFrame(features[observed], index=table.index[observed], columns=self.feature_names)

    def save(self, path: str | Path) -> Path:
        """Write the columns and training statistics as JSON."""
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": _FORMAT,
            "version": _VERSION,
            "n_train": self.n_train,
            "columns": self.columns,
            "numeric": self.numeric,
            "categorical": self.categorical,
            "ordinal": self.ordinal,
        }
        path.write_text(json.dumps(state, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ClinicalEncoder:
        """Read an encoder written by :meth:`save`.

        Raises:
            ValueError: not a clinical encoder file, or a column without statistics.
        """
        path = Path(path)
        state = json.loads(path.read_text())
        if state.get("format") != _FORMAT or state.get("version") != _VERSION:
            raise ValueError(f"{path}: not a {_FORMAT} v{_VERSION} file")
        encoder = cls()
        encoder.columns = list(state["columns"])
        encoder.numeric = {key: dict(value) for key, value in state["numeric"].items()}
        encoder.categorical = {key: list(value) for key, value in state["categorical"].items()}
        encoder.ordinal = {key: dict(value) for key, value in state["ordinal"].items()}
        encoder.n_train = int(state["n_train"])
        described = set(encoder.numeric) | set(encoder.categorical) | set(encoder.ordinal)
        if not encoder.columns or described != set(encoder.columns):
            raise ValueError(f"{path}: columns {encoder.columns} do not match their statistics {sorted(described)}")
        return encoder

    @staticmethod
    def _check_declaration(
        table: pd.DataFrame, columns: list[str], categorical: list[str], ordinal: dict[str, list[Any]]
    ) -> None:
        if not columns:
            raise ValueError("no column to encode: pass columns=[...]")
        repeated = sorted({column for column in columns if columns.count(column) > 1})
        if repeated:
            raise ValueError(f"column(s) {repeated} listed more than once")
        both = sorted(set(categorical) & set(ordinal))
        if both:
            raise ValueError(f"column(s) {both} declared both categorical and ordinal; choose one")
        undeclared = sorted((set(categorical) | set(ordinal)) - set(columns))
        if undeclared:
            raise ValueError(f"categorical/ordinal column(s) {undeclared} are not in columns={columns}")
        absent = [column for column in columns if column not in table.columns]
        if absent:
            raise KeyError(f"clinical column(s) {absent} are absent from the table (it has {list(table.columns)})")
        for column, order in ordinal.items():
            keys = [_category_key(value) for value in order]
            if not keys or None in keys or len(set(keys)) != len(keys):
                raise ValueError(f"ordinal order for {column!r} must be non-empty, unique and non-missing: {order}")

    @staticmethod
    def _fit_numeric(series: pd.Series, column: str) -> dict[str, float]:
        present = series[[key is not None for key in _keys(series)]]
        values = pd.to_numeric(present, errors="coerce").to_numpy(dtype=float)
        bad = present[~np.isfinite(values)].unique().tolist()
        if bad:
            raise ValueError(
                f"numeric column {column!r} has non-numeric training values {bad[:5]}; declare it categorical or "
                "ordinal, or clean it"
            )
        if values.size == 0:
            raise ValueError(f"numeric column {column!r} has no observed training value; drop it")
        std = float(values.std())
        return {"mean": float(values.mean()), "std": std if std > 0 else 1.0, "median": float(np.median(values))}

    @staticmethod
    def _fit_ordinal(series: pd.Series, column: str, order: list[Any]) -> dict[str, Any]:
        levels = [_category_key(value) for value in order]
        keys = [key for key in _keys(series) if key is not None]
        unlisted = sorted(set(keys) - set(levels))
        if unlisted:
            raise ValueError(f"ordinal column {column!r} has training values {unlisted} not in its order {levels}")
        if not keys:
            raise ValueError(f"ordinal column {column!r} has no observed training value; drop it")
        ranks = np.array([levels.index(key) for key in keys], dtype=float) / max(len(levels) - 1, 1)
        return {"levels": levels, "median": float(np.median(ranks))}

    def _encode_numeric(self, series: pd.Series, keys: list[str | None], column: str) -> np.ndarray:
        stats = self.numeric[column]
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        missing = ~np.isfinite(values)
        unparsable = sorted({key for key, gap in zip(keys, missing, strict=True) if gap and key is not None})
        if unparsable:
            self._report_once(column, f"non-numeric value(s) {unparsable[:5]} treated as missing")
        filled = np.where(missing, stats["median"], values)
        return np.stack([(filled - stats["mean"]) / stats["std"], missing.astype(float)], axis=1)

    def _encode_ordinal(self, keys: list[str | None], column: str) -> np.ndarray:
        levels, median = self.ordinal[column]["levels"], self.ordinal[column]["median"]
        unlisted = sorted({key for key in keys if key is not None and key not in levels})
        if unlisted:
            self._report_once(column, f"value(s) {unlisted[:5]} not in the order {levels}, treated as missing")
        scale = max(len(levels) - 1, 1)
        ranks = np.array([levels.index(key) / scale if key in levels else np.nan for key in keys], dtype=float)
        missing = np.isnan(ranks)
        return np.stack([np.where(missing, median, ranks), missing.astype(float)], axis=1)

    def _encode_categorical(self, keys: list[str | None], column: str) -> np.ndarray:
        categories = self.categorical[column]
        slot = {category: j for j, category in enumerate(categories)}
        unseen = sorted({key for key in keys if key is not None and key not in slot})
        if unseen:
            self._report_once(column, f"value(s) {unseen[:5]} unseen in training go to {column}{UNKNOWN_SUFFIX}")
        onehot = np.zeros((len(keys), len(categories) + 1))
        onehot[np.arange(len(keys)), [slot.get(key, len(categories)) for key in keys]] = 1.0
        return onehot

    def _report_once(self, column: str, message: str) -> None:
        if column not in self._reported:
            self._reported.add(column)
            logger.warning("clinical column %r: %s", column, message)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("ClinicalEncoder is not fitted: call fit(train_table, columns) or load(path) first")

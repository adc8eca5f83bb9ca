"""Checking a site's CSV against its task spec, before any of it reaches a model.

Every problem is reported as one line naming the file, the column and how many rows are
affected, with what to do about it. Member values are never echoed: the file holds personal
health data, and error text ends up in logs that leave the site.
"""

from __future__ import annotations

import codecs
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fitfed.spec import BooleanFeature, CategoricalFeature, NumericFeature, TaskSpec

_OTHER_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


class SiteDataError(ValueError):
    """A site's data file cannot be used; ``problems`` holds one line per problem found."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + ("\n  ".join([""] + problems) if len(problems) > 1 else problems[0]))


@dataclass(frozen=True)
class ValidatedTable:
    """A site's rows after validation: typed feature columns plus a 0/1 ``label`` column.

    Attributes:
        frame: feature columns (numeric as float, categorical as canonical strings, boolean as 0/1)
            and ``label``; id and ignored columns removed; rows with missing values dropped.
        source: the file that was read.
        rows_read: data rows in the file.
        rows_dropped: rows dropped for missing values (allowed by the spec's tolerance).
    """

    frame: pd.DataFrame
    source: Path
    rows_read: int
    rows_dropped: int


def read_site_csv(path: str | Path, spec: TaskSpec) -> ValidatedTable:
    """Read and validate one site's CSV.

    Raises:
        SiteDataError: with every problem found, each naming the column and number of rows.
    """
    path = Path(path)
    raw = _read_raw(path, spec)
    problems = _check_columns(raw, spec)
    if problems:
        raise SiteDataError(path, problems)
    missing = _missing_mask(raw, spec)
    typed, problems = _typed_columns(raw, spec, missing)
    problems += _check_missing(missing, spec)
    problems += _check_ids(raw, spec)
    if problems:
        raise SiteDataError(path, problems)
    keep = ~missing.any(axis=1)
    frame = typed[keep].reset_index(drop=True)
    problems = _check_trainable(frame, spec, dropped=int((~keep).sum()))
    if problems:
        raise SiteDataError(path, problems)
    return ValidatedTable(frame=frame, source=path, rows_read=len(raw), rows_dropped=int((~keep).sum()))


def _read_raw(path: Path, spec: TaskSpec) -> pd.DataFrame:
    """Read every cell as text; turn each way a file can be unreadable into one clear problem."""
    if not path.exists():
        raise SiteDataError(path, ["file not found. Check the data path in the site's fitfed configuration."])
    if not path.is_file():
        raise SiteDataError(path, ["is not a file. Point the site's fitfed configuration at the CSV file itself."])
    try:
        head = path.read_bytes()[:65536]
    except OSError as e:
        raise SiteDataError(
            path, [f"cannot be read ({e.strerror}). Give the FLARE client's user read access."]
        ) from None
    if not head.strip():
        raise SiteDataError(path, ["is empty. Export the member table with a header row and at least one data row."])
    try:
        # Incremental decoding: a multi-byte character cut at the 64 KiB boundary is not an error.
        first_line = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False).splitlines()[0]
    except UnicodeDecodeError:
        raise SiteDataError(
            path, ["is not UTF-8 text. Re-save it as 'CSV UTF-8' (in Excel) or convert it with iconv."]
        ) from None
    _check_delimiter(path, first_line, spec)
    try:
        # header=None: pandas would otherwise rename a repeated header name ('a' -> 'a.1') and, when the first
        # data row has an extra field, silently turn the first column into the index and shift every value.
        raw = pd.read_csv(
            path, header=None, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True
        )
    except UnicodeDecodeError:
        raise SiteDataError(path, ["is not UTF-8 text throughout. Re-save it as 'CSV UTF-8'."]) from None
    except (pd.errors.ParserError, csv.Error) as e:
        raise SiteDataError(path, [f"is not a well-formed CSV ({_parser_detail(e)}). Re-export it."]) from None
    header = [str(c).strip() for c in raw.iloc[0]]
    raw = raw.iloc[1:].reset_index(drop=True)
    if raw.empty:
        raise SiteDataError(path, ["has a header but no data rows. Export the member rows too."])
    raw = raw.apply(lambda col: col.str.strip())
    raw.columns = header
    return raw


def _check_delimiter(path: Path, header: str, spec: TaskSpec) -> None:
    if "," in header:
        return
    for delimiter, word in _OTHER_DELIMITERS.items():
        if delimiter in header:
            raise SiteDataError(
                path, [f"columns are separated by {word}, not commas. Re-export it as comma-separated (CSV)."]
            )
    if len(spec.columns) > 1:
        raise SiteDataError(path, ["header has a single column. Re-export it as comma-separated (CSV) with a header."])


def _parser_detail(error: Exception) -> str:
    """Keep pandas' position information (line and field counts), never the line's content."""
    text = str(error)
    return text.split(". ")[-1].strip() if "Expected" in text else type(error).__name__


def _check_columns(raw: pd.DataFrame, spec: TaskSpec) -> list[str]:
    problems = []
    present = list(raw.columns)
    missing = [c for c in spec.columns if c not in present]
    unexpected = [c for c in present if c not in spec.columns]
    duplicated = sorted({c for c in present if present.count(c) > 1})
    if missing:
        problems.append(f"missing column(s) {missing}: the '{spec.name}' task needs every column of its spec.")
    if unexpected:
        problems.append(
            f"unexpected column(s) {unexpected}: remove them, or list them under ignore_columns in the task spec."
        )
    if duplicated:
        problems.append(f"column(s) {duplicated} appear more than once in the header: keep one of each.")
    return problems


def _missing_mask(raw: pd.DataFrame, spec: TaskSpec) -> pd.DataFrame:
    used = [f.name for f in spec.features] + [spec.label.column]
    markers = {"", spec.missing_marker}
    return raw[used].isin(markers)


def _typed_columns(raw: pd.DataFrame, spec: TaskSpec, missing: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Convert each used column to its type; count the rows that do not fit, per column."""
    typed: dict[str, pd.Series] = {}
    problems: list[str] = []
    for feature in spec.features:
        present = ~missing[feature.name]
        values, problem = _convert(raw[feature.name], present, feature)
        typed[feature.name] = values
        if problem:
            problems.append(problem)
    label = spec.label
    present = ~missing[label.column]
    canonical = raw[label.column].map(_canonical_cell)
    bad = int((present & ~canonical.isin(label.values)).sum())
    if bad:
        problems.append(
            f"column '{label.column}' (label): {bad} row(s) have a value outside {label.values}. "
            "Fix the export or the spec's label.values."
        )
    typed["label"] = canonical.isin(label.positive).astype(np.int64)
    return pd.DataFrame(typed), problems


def _convert(
    column: pd.Series, present: pd.Series, feature: NumericFeature | CategoricalFeature | BooleanFeature
) -> tuple[pd.Series, str | None]:
    name = feature.name
    if isinstance(feature, NumericFeature):
        values = pd.to_numeric(column.where(present), errors="coerce")
        not_number = int((present & ~np.isfinite(values)).sum())  # 'inf' and '1e999' parse, but are unusable
        if not_number:
            return values, f"column '{name}': {not_number} row(s) are not numbers. Fix them or mark them missing."
        if feature.integer:
            fractional = int((present & (values % 1 != 0)).sum())
            if fractional:
                return values, f"column '{name}': {fractional} row(s) are not whole numbers, as the spec requires."
        low = feature.min if feature.min is not None else -np.inf
        high = feature.max if feature.max is not None else np.inf
        outside = int((present & ((values < low) | (values > high))).sum())
        if outside:
            return values, (
                f"column '{name}': {outside} row(s) are outside the valid range [{feature.min}, {feature.max}]. "
                "Check units and data entry."
            )
        return values.astype(float), None
    if isinstance(feature, CategoricalFeature):
        values = column.map(_canonical_cell)
        bad = int((present & ~values.isin(feature.values)).sum())
        if bad:
            return values, (
                f"column '{name}': {bad} row(s) have a value outside the allowed {feature.values}. "
                "Map them onto the allowed values (check spelling and case)."
            )
        return values, None
    lowered = column.str.lower().map(_canonical_cell)
    values = lowered.isin(feature.true_values).astype(np.int64)
    bad = int((present & ~lowered.isin(feature.true_values + feature.false_values)).sum())
    if bad:
        allowed = feature.true_values + feature.false_values
        return values, f"column '{name}': {bad} row(s) are not yes/no values (allowed: {allowed})."
    return values, None


def _canonical_cell(value: str) -> str:
    """Spell numbers one way, so '1', '1.0' and ' 1' are the same category."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value


def _check_missing(missing: pd.DataFrame, spec: TaskSpec) -> list[str]:
    rows_missing = int(missing.any(axis=1).sum())
    if not rows_missing:
        return []
    per_column = {c: int(n) for c, n in missing.sum().items() if n}
    if spec.preprocessing.missing_rows == "reject":
        return [f"{rows_missing} row(s) have missing values {per_column} and the spec allows none. Fill them in."]
    fraction = rows_missing / len(missing)
    if missing[spec.label.column].any():
        label_rows = per_column[spec.label.column]
        if label_rows / len(missing) > spec.preprocessing.max_missing_fraction:
            return [f"column '{spec.label.column}' (label): {label_rows} row(s) have no label. Fill them in."]
    if fraction > spec.preprocessing.max_missing_fraction:
        return [
            f"{rows_missing} of {len(missing)} row(s) ({fraction:.0%}) have missing values, more than the spec's "
            f"tolerance of {spec.preprocessing.max_missing_fraction:.0%}; missing per column: {per_column}. "
            "Fill them in, or raise preprocessing.max_missing_fraction in the spec."
        ]
    return []


def _check_ids(raw: pd.DataFrame, spec: TaskSpec) -> list[str]:
    problems = []
    for column in spec.id_columns:
        duplicated = int(raw[column].duplicated(keep=False).sum())
        if duplicated:
            problems.append(
                f"column '{column}' (id): {duplicated} row(s) share an id with another row. "
                "Remove duplicate members before joining."
            )
        empty = int(raw[column].isin(["", spec.missing_marker]).sum())
        if empty:
            problems.append(f"column '{column}' (id): {empty} row(s) have no id.")
    return problems


def _check_trainable(frame: pd.DataFrame, spec: TaskSpec, dropped: int) -> list[str]:
    label = frame["label"]
    after = f" after dropping {dropped} row(s) with missing values" if dropped else ""
    if label.nunique() < 2:
        only = "positive" if len(label) and label.iloc[0] == 1 else "negative"
        return [
            f"column '{spec.label.column}' (label): all {len(label)} row(s){after} are {only}; "
            "a site needs both classes to train and evaluate."
        ]
    train_rows = int(len(frame) * (1 - spec.split.test_fraction))
    if train_rows < spec.min_train_rows:
        return [
            f"only {len(frame)} usable row(s){after}, giving {train_rows} training row(s); "
            f"the '{spec.name}' task needs at least {spec.min_train_rows}."
        ]
    return []

"""Task specs: the typed description of a tabular binary-classification task.

A spec is the contract every site's CSV must meet. It travels inside the job, so all
sites encode features identically (same one-hot columns, same order) without ever
sharing data. Built-in specs live in ``fitfed/specs/*.yaml``; any other task is a
YAML file of the same shape.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUILTIN_TASKS = ("churn", "heart_disease")


class SpecError(ValueError):
    """A task spec that cannot be used, with the file and field that are wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericFeature(_Strict):
    """A number within an optional valid range; standardised with the site's own training statistics."""

    name: str
    kind: Literal["numeric"] = "numeric"
    min: float | None = None
    max: float | None = None
    integer: bool = False

    @model_validator(mode="after")
    def _range_ordered(self) -> NumericFeature:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min={self.min!r} is greater than max={self.max!r}")
        return self


class CategoricalFeature(_Strict):
    """One of a fixed list of values; one-hot encoded over exactly that list, in that order."""

    name: str
    kind: Literal["categorical"] = "categorical"
    values: list[str]

    @field_validator("values", mode="before")
    @classmethod
    def _as_strings(cls, values: list[object]) -> list[str]:
        return [_canonical(v) for v in values]

    @model_validator(mode="after")
    def _enough_distinct_values(self) -> CategoricalFeature:
        if len(set(self.values)) != len(self.values) or len(self.values) < 2:
            raise ValueError(f"feature {self.name!r}: values must be at least 2 distinct entries, got {self.values!r}")
        return self


class BooleanFeature(_Strict):
    """A yes/no flag; encoded as 0/1."""

    name: str
    kind: Literal["boolean"] = "boolean"
    true_values: list[str] = ["1", "true", "yes"]
    false_values: list[str] = ["0", "false", "no"]

    @field_validator("true_values", "false_values", mode="before")
    @classmethod
    def _as_strings(cls, values: list[object]) -> list[str]:
        return [_canonical(v).lower() for v in values]


Feature = Annotated[NumericFeature | CategoricalFeature | BooleanFeature, Field(discriminator="kind")]


class LabelSpec(_Strict):
    """The label column; rows whose label is in ``positive`` are class 1, the others in ``values`` class 0."""

    column: str
    positive: list[str]
    values: list[str]

    @field_validator("positive", "values", mode="before")
    @classmethod
    def _as_strings(cls, values: list[object]) -> list[str]:
        return [_canonical(v) for v in values]

    @model_validator(mode="after")
    def _positive_within_values(self) -> LabelSpec:
        unknown = sorted(set(self.positive) - set(self.values))
        if unknown:
            raise ValueError(f"label.positive has {unknown!r} that are not in label.values={self.values!r}")
        if set(self.positive) == set(self.values):
            raise ValueError("label.positive covers every label value: there is no negative class")
        return self


class Preprocessing(_Strict):
    """How validated rows become tensors, per site."""

    standardize: bool = True
    one_hot_drop_first: bool = False
    missing_rows: Literal["drop", "reject"] = "drop"
    max_missing_fraction: float = Field(default=0.05, ge=0.0, le=1.0)


class SplitSpec(_Strict):
    """Each site's own train/test split, stratified on the label."""

    test_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    seed: int = 0


class TaskSpec(_Strict):
    """A tabular binary-classification task.

    Args:
        name: snake_case task name.
        description: one line for humans.
        features: the model's inputs, in order.
        label: the label column and its positive values.
        id_columns: identifier columns: must be unique, never reach the model.
        ignore_columns: columns present in the files that the task does not use.
        missing_marker: the text that marks a missing value (besides an empty cell).
        min_train_rows: fewest rows a site needs after cleaning to take part.
        preprocessing: encoding and missing-value policy.
        split: the per-site train/test split.

    Example:
        >>> spec = load_spec("churn")
        >>> spec.label.column
        'churned'
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    features: list[Feature] = Field(min_length=1)
    label: LabelSpec
    id_columns: list[str] = []
    ignore_columns: list[str] = []
    missing_marker: str = ""
    min_train_rows: int = Field(default=20, ge=2)
    preprocessing: Preprocessing = Preprocessing()
    split: SplitSpec = SplitSpec()

    @model_validator(mode="after")
    def _columns_unique(self) -> TaskSpec:
        names = [f.name for f in self.features] + [self.label.column] + self.id_columns + self.ignore_columns
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"column(s) {duplicates!r} appear more than once across features, label, id_columns and ignore_columns"
            )
        return self

    @property
    def columns(self) -> list[str]:
        """Every column a site's CSV must have."""
        return self.id_columns + [f.name for f in self.features] + [self.label.column] + self.ignore_columns

    def encoded_feature_names(self) -> list[str]:
        """Model input names after one-hot encoding, in the order the model sees them."""
        names: list[str] = []
        for feature in self.features:
            if isinstance(feature, CategoricalFeature):
                kept = feature.values[1:] if self.preprocessing.one_hot_drop_first else feature.values
                names.extend(f"{feature.name}={value}" for value in kept)
            else:
                names.append(feature.name)
        return names

    def fingerprint(self) -> str:
        """A short hash that changes whenever anything that affects encoding changes."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _canonical(value: object) -> str:
    """Spell a YAML scalar the way it appears in a CSV cell (1.0 -> '1', True -> 'true')."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def load_spec(name_or_path: str | Path) -> TaskSpec:
    """Load a built-in spec by name, or a spec YAML file by path.

    Raises:
        SpecError: the file is missing, is not YAML, or does not describe a valid task.
    """
    if str(name_or_path) in BUILTIN_TASKS:
        source = f"built-in spec {name_or_path!r}"
        text = resources.files("fitfed.specs").joinpath(f"{name_or_path}.yaml").read_text()
    else:
        path = Path(name_or_path)
        source = str(path)
        if not path.is_file():
            raise SpecError(
                f"{source}: no such spec file. Pass a built-in task ({', '.join(BUILTIN_TASKS)}) or a YAML spec path."
            )
        text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not valid YAML ({e}).") from None
    return spec_from_dict(raw, source=source)


def spec_from_dict(raw: object, *, source: str = "task spec") -> TaskSpec:
    """Validate a spec that arrived as a mapping (from YAML, or inside a job's config)."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of spec fields, found {type(raw).__name__}.")
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}" for err in e.errors())
        raise SpecError(f"{source}: invalid task spec: {problems}") from None

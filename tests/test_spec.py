import re
from pathlib import Path

import pytest
import yaml

from fitfed.spec import BooleanFeature, CategoricalFeature, NumericFeature, SpecError, load_spec, spec_from_dict


def _toy() -> dict:
    """A made-up three-feature task, nothing like the built-ins."""
    return {
        "name": "toy_task",
        "features": [
            {"name": "weight", "kind": "numeric", "min": 0, "max": 300},
            {"name": "plan", "kind": "categorical", "values": [1, 2.0, "gold"]},
            {"name": "smoker", "kind": "boolean"},
        ],
        "label": {"column": "outcome", "positive": ["left"], "values": ["stayed", "left"]},
        "id_columns": ["member_id"],
        "ignore_columns": ["notes"],
    }


def _write(tmp_path: Path, raw: object, name: str = "toy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["churn", "heart_disease"])
def test_builtin_specs_load_by_name(name):
    # Execute
    spec = load_spec(name)

    # Assert
    assert spec.name == name


def test_heart_disease_encodes_13_inputs_with_first_cp_and_restecg_level_dropped():
    # Execute
    names = load_spec("heart_disease").encoded_feature_names()

    # Assert
    assert names == [
        "age", "sex", "cp=2", "cp=3", "cp=4", "trestbps", "chol", "fbs",
        "restecg=1", "restecg=2", "thalach", "exang", "oldpeak",
    ]  # fmt: skip


def test_churn_encodes_16_inputs_with_every_level_kept():
    # Execute
    names = load_spec("churn").encoded_feature_names()

    # Assert
    assert len(names) == 16
    assert names[1:4] == ["gender=female", "gender=male", "gender=other"]
    assert names[5:8] == ["contract_months=1", "contract_months=6", "contract_months=12"]


def test_fingerprint_is_stable_and_changes_with_any_field():
    # Prepare
    spec = load_spec("churn")
    raw = spec.model_dump(mode="json")
    raw["split"]["seed"] = 1

    # Execute
    again = load_spec("churn").fingerprint()
    round_trip = spec_from_dict(spec.model_dump(mode="json")).fingerprint()
    other_seed = spec_from_dict(raw).fingerprint()
    other_rows = spec.model_copy(update={"min_train_rows": spec.min_train_rows + 1}).fingerprint()

    # Assert
    assert re.fullmatch(r"[0-9a-f]{16}", spec.fingerprint())
    assert again == round_trip == spec.fingerprint()
    assert other_seed != spec.fingerprint()
    assert other_rows != spec.fingerprint()
    assert load_spec("heart_disease").fingerprint() != spec.fingerprint()


def test_spec_file_from_any_path_loads(tmp_path):
    # Prepare
    path = _write(tmp_path, _toy())

    # Execute
    spec = load_spec(path)

    # Assert
    assert spec.name == "toy_task"
    assert [type(f) for f in spec.features] == [NumericFeature, CategoricalFeature, BooleanFeature]
    assert spec.features[1].values == ["1", "2", "gold"]  # YAML 2.0 is spelled as a CSV cell would be
    assert spec.columns == ["member_id", "weight", "plan", "smoker", "outcome", "notes"]
    assert spec.encoded_feature_names() == ["weight", "plan=1", "plan=2", "plan=gold", "smoker"]
    assert spec.preprocessing.missing_rows == "drop"  # defaults filled in


def test_drop_first_removes_the_first_level_of_each_categorical(tmp_path):
    # Prepare
    raw = _toy()
    raw["preprocessing"] = {"one_hot_drop_first": True}

    # Execute
    names = load_spec(_write(tmp_path, raw)).encoded_feature_names()

    # Assert
    assert names == ["weight", "plan=2", "plan=gold", "smoker"]


def test_missing_file_is_a_spec_error(tmp_path):
    # Prepare
    path = tmp_path / "nope.yaml"

    # Execute / Assert
    with pytest.raises(SpecError, match=re.escape(f"{path}: no such spec file. Pass a built-in task (churn, heart")):
        load_spec(path)


def test_invalid_yaml_is_a_spec_error(tmp_path):
    # Prepare
    path = tmp_path / "broken.yaml"
    path.write_text("name: toy\nfeatures: [unclosed\n")

    # Execute / Assert
    with pytest.raises(SpecError, match=re.escape(f"{path}: not valid YAML (")):
        load_spec(path)


def test_yaml_that_is_not_a_mapping_is_a_spec_error(tmp_path):
    # Prepare
    path = _write(tmp_path, ["name", "toy"])

    # Execute / Assert
    with pytest.raises(SpecError, match="expected a mapping of spec fields, found list"):
        load_spec(path)


def test_min_above_max_names_the_feature_and_both_bounds(tmp_path):
    # Prepare
    raw = _toy()
    raw["features"][0].update(min=5, max=1)

    # Execute / Assert
    with pytest.raises(SpecError, match=r"invalid task spec: .*feature 'weight': min=5\.0 is greater than max=1\.0"):
        load_spec(_write(tmp_path, raw))


@pytest.mark.parametrize(
    ("field", "value", "duplicate"),
    [
        ("id_columns", ["weight"], "weight"),
        ("ignore_columns", ["outcome"], "outcome"),
        ("ignore_columns", ["notes", "notes"], "notes"),
    ],
)
def test_a_column_used_twice_is_a_spec_error(tmp_path, field, value, duplicate):
    # Prepare
    raw = _toy()
    raw[field] = value

    # Execute / Assert
    with pytest.raises(SpecError, match=re.escape(f"column(s) ['{duplicate}'] appear more than once across features")):
        load_spec(_write(tmp_path, raw))


def test_duplicate_feature_name_is_a_spec_error():
    # Prepare
    raw = _toy()
    raw["features"].append({"name": "smoker", "kind": "boolean"})

    # Execute / Assert
    with pytest.raises(SpecError, match=re.escape("column(s) ['smoker'] appear more than once")):
        spec_from_dict(raw)


def test_label_positive_outside_values_is_a_spec_error(tmp_path):
    # Prepare
    raw = _toy()
    raw["label"]["positive"] = ["churned"]

    # Execute / Assert
    with pytest.raises(
        SpecError, match=re.escape("label.positive has ['churned'] that are not in label.values=['stayed', 'left']")
    ):
        load_spec(_write(tmp_path, raw))


def test_label_positive_covering_every_value_is_a_spec_error(tmp_path):
    # Prepare
    raw = _toy()
    raw["label"]["positive"] = ["left", "stayed"]

    # Execute / Assert
    with pytest.raises(SpecError, match="label.positive covers every label value: there is no negative class"):
        load_spec(_write(tmp_path, raw))


@pytest.mark.parametrize("values", [["gold"], [1, 1.0]])
def test_categorical_needs_two_distinct_values(tmp_path, values):
    # Prepare
    raw = _toy()
    raw["features"][1]["values"] = values

    # Execute / Assert
    with pytest.raises(SpecError, match=r"feature 'plan': values must be at least 2 distinct entries"):
        load_spec(_write(tmp_path, raw))


def test_unknown_top_level_field_is_a_spec_error(tmp_path):
    # Prepare
    raw = _toy()
    raw["lable"] = {"column": "outcome"}
    path = _write(tmp_path, raw)

    # Execute / Assert
    with pytest.raises(SpecError, match=re.escape(f"{path}: invalid task spec: lable: Extra inputs are not permitted")):
        load_spec(path)


def test_unknown_feature_field_is_a_spec_error(tmp_path):
    # Prepare
    raw = _toy()
    raw["features"][0]["maximum"] = 300

    # Execute / Assert
    with pytest.raises(SpecError, match=r"features\.0\.numeric\.maximum: Extra inputs are not permitted"):
        load_spec(_write(tmp_path, raw))


def test_bad_name_and_empty_features_are_spec_errors():
    # Prepare
    raw = _toy()
    raw["name"] = "Toy Task"
    raw["features"] = []

    # Execute
    with pytest.raises(SpecError) as error:
        spec_from_dict(raw, source="job config")

    # Assert
    message = str(error.value)
    assert message.startswith("job config: invalid task spec: ")
    assert "name: String should match pattern" in message
    assert "features: List should have at least 1 item" in message

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fitfed.datasets.heart_disease import write_sites
from fitfed.preprocessing import encode, split_rows, to_site_split
from fitfed.spec import TaskSpec, load_spec, spec_from_dict
from fitfed.validation import ValidatedTable, read_site_csv

HEART = load_spec("heart_disease")


def _spec(
    *, drop_first: bool = False, standardize: bool = True, test_fraction: float = 0.25, seed: int = 0
) -> TaskSpec:
    return spec_from_dict(
        {
            "name": "toy",
            "features": [
                {"name": "x", "kind": "numeric"},
                {"name": "colour", "kind": "categorical", "values": ["red", "blue", "green"]},
                {"name": "flag", "kind": "boolean"},
                {"name": "const", "kind": "numeric"},
            ],
            "label": {"column": "y", "positive": [1], "values": [0, 1]},
            "min_train_rows": 2,
            "preprocessing": {"one_hot_drop_first": drop_first, "standardize": standardize},
            "split": {"test_fraction": test_fraction, "seed": seed},
        }
    )


TRAIN = pd.DataFrame(
    {
        "x": [1.0, 1.0, 3.0, 3.0],  # mean 2, population std 1
        "colour": ["blue", "red", "green", "blue"],
        "flag": [1, 0, 0, 1],
        "const": [5.0, 5.0, 5.0, 5.0],
        "label": [0, 1, 0, 1],
    }
)
TEST = pd.DataFrame({"x": [2.0, 5.0], "colour": ["green", "red"], "flag": [0, 1], "const": [7.0, 5.0], "label": [1, 0]})


@pytest.fixture(scope="module")
def heart_tables(tmp_path_factory) -> dict[str, ValidatedTable]:
    paths = write_sites(tmp_path_factory.mktemp("heart"))
    return {p.stem: read_site_csv(p, HEART) for p in paths}


@pytest.mark.parametrize(
    ("site", "train_rows", "test_rows"),
    [("cleveland", 199, 104), ("hungarian", 172, 89), ("switzerland", 30, 16), ("va", 85, 45)],
)
def test_heart_disease_split_matches_flamby_sizes(heart_tables, site, train_rows, test_rows):
    # Execute
    train, test = split_rows(heart_tables[site].frame, HEART)

    # Assert
    assert (len(train), len(test)) == (train_rows, test_rows)
    assert set(train.index).isdisjoint(test.index)
    assert sorted([*train.index, *test.index]) == list(range(len(heart_tables[site].frame)))


@pytest.mark.parametrize("seed", range(5))
def test_split_is_stratified_on_the_label(seed):
    # Prepare: 4 positives, 4 negatives, half held out
    spec = _spec(test_fraction=0.5, seed=seed)
    frame = pd.DataFrame({"x": np.arange(8.0), "label": [0, 1] * 4})

    # Execute
    train, test = split_rows(frame, spec)

    # Assert
    assert train["label"].tolist().count(1) == 2 and len(train) == 4
    assert test["label"].tolist().count(1) == 2 and len(test) == 4
    assert list(train.index) == sorted(train.index)


def test_split_is_reproducible_for_a_seed_and_changes_with_it():
    # Prepare
    frame = pd.DataFrame({"x": np.arange(40.0), "label": [0, 1] * 20})

    # Execute
    first, _ = split_rows(frame, _spec(seed=3))
    again, _ = split_rows(frame, _spec(seed=3))
    other, _ = split_rows(frame, _spec(seed=4))

    # Assert
    assert list(first.index) == list(again.index)
    assert list(first.index) != list(other.index)


def test_split_without_enough_rows_per_class_falls_back_to_unstratified():
    # Prepare: only 2 positives, too few to stratify
    frame = pd.DataFrame({"x": np.arange(8.0), "label": [1, 1, 0, 0, 0, 0, 0, 0]})

    # Execute
    train, test = split_rows(frame, _spec(test_fraction=0.5))

    # Assert
    assert (len(train), len(test)) == (4, 4)


def test_numerics_are_standardised_with_training_statistics():
    # Prepare
    spec = _spec()

    # Execute
    train = encode(TRAIN, spec, TRAIN)
    test = encode(TEST, spec, TRAIN)

    # Assert: x uses the train mean 2 and population std 1, for train and test rows alike
    assert train[:, 0].tolist() == [-1.0, -1.0, 1.0, 1.0]
    assert test[:, 0].tolist() == [0.0, 3.0]


def test_zero_std_column_is_centred_not_divided_by_zero():
    # Execute
    train = encode(TRAIN, _spec(), TRAIN)
    test = encode(TEST, _spec(), TRAIN)

    # Assert
    assert np.isfinite(train).all() and np.isfinite(test).all()
    assert train[:, -1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert test[:, -1].tolist() == [2.0, 0.0]


def test_one_hot_columns_follow_spec_order_and_boolean_stays_0_1():
    # Execute
    encoded = encode(TEST, _spec(), TRAIN)

    # Assert: columns x, colour=red, colour=blue, colour=green, flag, const
    assert encoded.shape == (2, 6)
    assert encoded[:, 1:4].tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert encoded[:, 4].tolist() == [0.0, 1.0]


def test_drop_first_removes_the_first_spec_level():
    # Prepare
    spec = _spec(drop_first=True)

    # Execute
    encoded = encode(TRAIN, spec, TRAIN)

    # Assert: columns x, colour=blue, colour=green, flag, const
    assert spec.encoded_feature_names() == ["x", "colour=blue", "colour=green", "flag", "const"]
    assert encoded[:, 1:3].tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    assert encoded[:, 3].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_without_standardisation_numerics_pass_through():
    # Execute
    encoded = encode(TEST, _spec(standardize=False), TRAIN)

    # Assert
    assert encoded[:, 0].tolist() == [2.0, 5.0]
    assert encoded[:, -1].tolist() == [7.0, 5.0]


def test_to_site_split_gives_float32_tensors_named_as_the_spec(heart_tables):
    # Execute
    split = to_site_split(heart_tables["cleveland"], HEART)

    # Assert
    assert split.feature_names == HEART.encoded_feature_names()
    assert split.num_features == 13
    assert split.x_train.shape == (199, 13) and split.x_test.shape == (104, 13)
    assert split.y_train.shape == (199,) and split.y_test.shape == (104,)
    for tensor in (split.x_train, split.y_train, split.x_test, split.y_test):
        assert tensor.dtype == torch.float32
    assert set(split.y_train.tolist()) == {0.0, 1.0}
    age = split.x_train[:, split.feature_names.index("age")]
    assert math.isclose(age.mean().item(), 0.0, abs_tol=1e-5)
    assert math.isclose(age.std(correction=0).item(), 1.0, abs_tol=1e-5)


def test_to_site_split_on_a_toy_table():
    # Prepare
    frame = pd.concat([TRAIN, TEST], ignore_index=True)
    table = ValidatedTable(frame=frame, source=Path("toy.csv"), rows_read=6, rows_dropped=0)
    spec = _spec(test_fraction=0.5)

    # Execute
    split = to_site_split(table, spec)

    # Assert
    assert split.x_train.shape == (3, 6) and split.x_test.shape == (3, 6)
    assert split.x_train.dtype == split.y_test.dtype == torch.float32
    assert sorted(split.y_train.tolist() + split.y_test.tolist()) == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert math.isclose(split.x_train[:, 0].mean().item(), 0.0, abs_tol=1e-6)

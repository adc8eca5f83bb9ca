from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fitfed.datasets.churn import club_names, synthesize_clubs, write_clubs
from fitfed.spec import BooleanFeature, CategoricalFeature, NumericFeature, load_spec

SPEC = load_spec("churn")


@pytest.fixture(scope="module")
def eight_clubs() -> dict[str, pd.DataFrame]:
    return synthesize_clubs(8, seed=0)


def test_club_names_are_readable_and_stable():
    # Execute
    names = club_names(3)

    # Assert
    assert names == ["club_01", "club_02", "club_03"]
    assert club_names(100)[:3] == names
    assert club_names(100)[-1] == "club_100"


def test_same_seed_gives_identical_frames_and_club_does_not_depend_on_num_clubs():
    # Execute
    first = synthesize_clubs(2, seed=7)
    again = synthesize_clubs(2, seed=7)
    more = synthesize_clubs(5, seed=7)
    other_seed = synthesize_clubs(2, seed=8)

    # Assert
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])
        pd.testing.assert_frame_equal(first[name], more[name])
    assert not first["club_01"].equals(other_seed["club_01"])


def test_columns_are_the_spec_columns_in_order(eight_clubs):
    # Assert
    for frame in eight_clubs.values():
        assert list(frame.columns) == SPEC.columns


def test_every_value_meets_the_spec(eight_clubs):
    # Prepare
    data = pd.concat(eight_clubs.values(), ignore_index=True)

    # Assert
    assert not data.isna().any().any()
    for feature in SPEC.features:
        column = data[feature.name]
        if isinstance(feature, NumericFeature):
            assert column.between(feature.min, feature.max).all(), feature.name
            if feature.integer:
                assert pd.api.types.is_integer_dtype(column), feature.name
        elif isinstance(feature, CategoricalFeature):
            assert set(column.astype(str)) <= set(feature.values), feature.name
        elif isinstance(feature, BooleanFeature):
            assert set(column) <= {0, 1} and pd.api.types.is_integer_dtype(column), feature.name
    assert set(data["churned"].astype(str)) <= set(SPEC.label.values)


def test_member_ids_are_marked_synthetic_and_unique(eight_clubs):
    # Assert
    for name, frame in eight_clubs.items():
        assert frame["member_id"].is_unique
        assert frame["member_id"].str.fullmatch(rf"SYN-{name}-\d{{6}}").all()


def test_months_to_contract_end_fits_the_contract(eight_clubs):
    # Prepare
    data = pd.concat(eight_clubs.values(), ignore_index=True)

    # Assert
    assert (data["months_to_contract_end"] <= data["contract_months"]).all()
    assert set(data.loc[data["contract_months"] == 1, "months_to_contract_end"]) <= {0, 1}


def test_clubs_differ_in_size_and_churn_rate(eight_clubs):
    # Prepare
    sizes = [len(frame) for frame in eight_clubs.values()]
    churn_rates = [frame["churned"].mean() for frame in eight_clubs.values()]

    # Assert
    assert max(sizes) > 3 * min(sizes)
    assert max(churn_rates) - min(churn_rates) > 0.1


def test_label_is_learnable_but_not_separable(eight_clubs):
    # Prepare
    frame = eight_clubs["club_01"]
    features = frame.drop(columns=["member_id", "churned"])
    x = pd.get_dummies(features, columns=["gender", "contract_months"]).astype(float)
    x_train, x_test, y_train, y_test = train_test_split(
        x, frame["churned"], test_size=0.25, stratify=frame["churned"], random_state=0
    )
    scaler = StandardScaler().fit(x_train)

    # Execute
    model = LogisticRegression(max_iter=1000).fit(scaler.transform(x_train), y_train)
    auc = roc_auc_score(y_test, model.predict_proba(scaler.transform(x_test))[:, 1])

    # Assert
    assert 0.75 < auc < 0.98


def test_write_clubs_writes_csvs_and_a_synthetic_readme(tmp_path: Path):
    # Execute
    paths = write_clubs(tmp_path / "clubs", num_clubs=3, seed=0)

    # Assert
    assert [p.name for p in paths] == ["club_01.csv", "club_02.csv", "club_03.csv"]
    expected = synthesize_clubs(3, seed=0)
    for path in paths:
        written = pd.read_csv(path)
        pd.testing.assert_frame_equal(written, expected[path.stem], check_dtype=False)
        assert pd.api.types.is_integer_dtype(written["age"])
    readme = (tmp_path / "clubs" / "README.md").read_text()
    assert "SYNTHETIC" in readme
    assert "no real person" in readme
    assert all(name in readme for name in expected)


def test_write_clubs_refuses_to_overwrite_unless_asked(tmp_path: Path):
    # Prepare
    write_clubs(tmp_path, num_clubs=2, seed=0)
    before = (tmp_path / "club_01.csv").read_bytes()

    # Execute / Assert
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_clubs(tmp_path, num_clubs=2, seed=1)
    assert (tmp_path / "club_01.csv").read_bytes() == before
    write_clubs(tmp_path, num_clubs=2, seed=1, overwrite=True)
    assert (tmp_path / "club_01.csv").read_bytes() != before


@pytest.mark.parametrize("num_clubs", [0, -3, 501])
def test_write_clubs_refuses_bad_num_clubs(tmp_path: Path, num_clubs: int):
    # Execute / Assert
    with pytest.raises(ValueError, match=rf"num_clubs={num_clubs}\b.*1 to 500"):
        write_clubs(tmp_path, num_clubs=num_clubs, seed=0)
    assert not any(tmp_path.iterdir())


def test_negative_seed_is_refused():
    # Execute / Assert
    with pytest.raises(ValueError, match=r"seed=-1\b"):
        synthesize_clubs(1, seed=-1)


def test_visits_last_month_track_usual_visits_and_drop_for_churners(eight_clubs):
    # Prepare
    data = pd.concat(eight_clubs.values(), ignore_index=True)

    # Execute
    correlation = np.corrcoef(data["avg_visits_per_week"], data["avg_visits_per_week_last_month"])[0, 1]
    by_label = data.groupby("churned")["avg_visits_per_week_last_month"].mean()

    # Assert
    assert correlation > 0.5
    assert by_label[1] < by_label[0]

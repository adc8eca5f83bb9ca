import re
from pathlib import Path

import pytest

from fitfed.datasets.churn import write_clubs
from fitfed.datasets.heart_disease import SITES, write_sites
from fitfed.spec import TaskSpec, load_spec, spec_from_dict
from fitfed.validation import SiteDataError, read_site_csv

SECRET = "ZZSECRET123"
HEADER = "member_id,age,weight,plan,smoker,outcome,notes"
GOOD_ROWS = [
    "m1,30,70.5,1,yes,left,a",
    "m2,41,80,2,no,stayed,b",
    "m3,52,90,gold,1,left,c",
    "m4,63,60.25,1.0,false,stayed,d",
]


def _spec(**overrides: object) -> TaskSpec:
    raw: dict = {
        "name": "toy",
        "features": [
            {"name": "age", "kind": "numeric", "min": 0, "max": 120, "integer": True},
            {"name": "weight", "kind": "numeric", "min": 0, "max": 300},
            {"name": "plan", "kind": "categorical", "values": [1, 2, "gold"]},
            {"name": "smoker", "kind": "boolean"},
        ],
        "label": {"column": "outcome", "positive": ["left"], "values": ["stayed", "left"]},
        "id_columns": ["member_id"],
        "ignore_columns": ["notes"],
        "min_train_rows": 2,
        "preprocessing": {"max_missing_fraction": 0.25},
    }
    raw.update(overrides)
    return spec_from_dict(raw)


SPEC = _spec()


def _csv(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "club.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _replace(row: int, column: str, value: str) -> list[str]:
    """GOOD_ROWS with one cell changed."""
    rows = [r.split(",") for r in GOOD_ROWS]
    rows[row][HEADER.split(",").index(column)] = value
    return [",".join(r) for r in rows]


def _single_problem(path: Path, spec: TaskSpec = SPEC) -> str:
    """Read ``path`` expecting exactly one problem; return the whole message."""
    with pytest.raises(SiteDataError) as error:
        read_site_csv(path, spec)
    assert len(error.value.problems) == 1, error.value.problems
    assert error.value.path == path
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    return message


# --- files that cannot be read as a CSV -------------------------------------------------------------------------


def test_missing_file(tmp_path):
    # Prepare
    path = tmp_path / "nope.csv"

    # Execute
    message = _single_problem(path)

    # Assert
    assert message == f"{path}: file not found. Check the data path in the site's fitfed configuration."


def test_directory_instead_of_file(tmp_path):
    # Execute
    message = _single_problem(tmp_path)

    # Assert
    assert "is not a file. Point the site's fitfed configuration at the CSV file itself." in message


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_empty_file(tmp_path, content):
    # Prepare
    path = tmp_path / "club.csv"
    path.write_bytes(content)

    # Execute
    message = _single_problem(path)

    # Assert
    assert "is empty. Export the member table with a header row" in message


def test_header_only_file(tmp_path):
    # Prepare
    path = _csv(tmp_path, [])

    # Execute
    message = _single_problem(path)

    # Assert
    assert "has a header but no data rows" in message


def test_latin1_file_is_reported_as_not_utf8_without_its_content(tmp_path):
    # Prepare
    path = tmp_path / "club.csv"
    path.write_bytes("\n".join([HEADER, *_replace(0, "notes", f"café {SECRET}")]).encode("latin-1"))

    # Execute
    message = _single_problem(path)

    # Assert
    assert "is not UTF-8 text. Re-save it as 'CSV UTF-8'" in message
    assert SECRET not in message
    assert "caf" not in message


def test_utf8_character_cut_by_the_64kib_sniff_is_not_an_encoding_error(tmp_path):
    # Prepare: pad the first row so that byte 65535 is the first byte of a two-byte 'é'
    prefix = (HEADER + "\nm0,30,70,1,yes,left,").encode()
    filler = b"x" * (65535 - len(prefix))
    rows = [(prefix + filler).decode() + "é", *GOOD_ROWS]
    path = tmp_path / "club.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert path.read_bytes()[65535:65537] == "é".encode()

    # Execute
    table = read_site_csv(path, SPEC)

    # Assert
    assert table.rows_read == 5


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    # Prepare
    path = tmp_path / "club.csv"
    path.write_text("\n".join([HEADER, *GOOD_ROWS]), encoding="utf-8-sig")

    # Execute
    table = read_site_csv(path, SPEC)

    # Assert
    assert table.rows_read == 4


@pytest.mark.parametrize(("delimiter", "word"), [(";", "semicolons"), ("\t", "tabs")])
def test_other_delimiters_are_named(tmp_path, delimiter, word):
    # Prepare
    rows = [r.replace(",", delimiter) for r in _replace(0, "notes", SECRET)]
    path = _csv(tmp_path, rows, header=HEADER.replace(",", delimiter))

    # Execute
    message = _single_problem(path)

    # Assert
    assert f"columns are separated by {word}, not commas. Re-export it as comma-separated (CSV)." in message
    assert SECRET not in message


@pytest.mark.parametrize("row", [0, 2])
def test_row_with_an_extra_field_is_a_malformed_csv_without_content(tmp_path, row):
    # Prepare: on the first data row pandas would otherwise shift every column silently
    rows = list(GOOD_ROWS)
    rows[row] += f",{SECRET}"
    path = _csv(tmp_path, rows)

    # Execute
    message = _single_problem(path)

    # Assert
    line = row + 2
    assert message == (
        f"{path}: is not a well-formed CSV (C error: Expected 7 fields in line {line}, saw 8). Re-export it."
    )


# --- header problems ---------------------------------------------------------------------------------------------


def test_missing_columns_are_listed(tmp_path):
    # Prepare
    rows = [",".join(r.split(",")[:2] + r.split(",")[3:]) for r in GOOD_ROWS]
    path = _csv(tmp_path, rows, header="member_id,age,plan,smoker,outcome,notes")

    # Execute
    message = _single_problem(path)

    # Assert
    assert "missing column(s) ['weight']: the 'toy' task needs every column of its spec." in message


def test_unexpected_columns_are_listed_without_their_values(tmp_path):
    # Prepare
    rows = [f"{r},{SECRET}@example.org" for r in GOOD_ROWS]
    path = _csv(tmp_path, rows, header=HEADER + ",email")

    # Execute
    message = _single_problem(path)

    # Assert
    assert "unexpected column(s) ['email']: remove them, or list them under ignore_columns" in message
    assert SECRET not in message


def test_duplicate_header_column_is_named(tmp_path):
    # Prepare
    rows = [f"{r},{SECRET}" for r in GOOD_ROWS]
    path = _csv(tmp_path, rows, header=HEADER + ",plan")

    # Execute
    message = _single_problem(path)

    # Assert
    assert "column(s) ['plan'] appear more than once in the header: keep one of each." in message
    assert "plan.1" not in message
    assert SECRET not in message


def test_missing_and_unexpected_columns_are_reported_together(tmp_path):
    # Prepare
    path = _csv(tmp_path, GOOD_ROWS, header=HEADER.replace("weight", "weight_kg"))

    # Execute
    with pytest.raises(SiteDataError) as error:
        read_site_csv(path, SPEC)

    # Assert
    assert len(error.value.problems) == 2
    assert str(error.value).startswith(f"{path}: \n  missing column(s) ['weight']")
    assert "\n  unexpected column(s) ['weight_kg']" in str(error.value)


# --- cell problems -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "bad", "expected"),
    [
        ("weight", SECRET, "column 'weight': 1 row(s) are not numbers. Fix them or mark them missing."),
        ("weight", "inf", "column 'weight': 1 row(s) are not numbers."),
        ("age", "41.987654", "column 'age': 1 row(s) are not whole numbers, as the spec requires."),
        ("weight", "987654", "column 'weight': 1 row(s) are outside the valid range [0.0, 300.0]. Check units"),
        ("plan", SECRET, "column 'plan': 1 row(s) have a value outside the allowed ['1', '2', 'gold']."),
        ("plan", "Gold", "column 'plan': 1 row(s) have a value outside the allowed ['1', '2', 'gold']."),
        ("smoker", SECRET, "column 'smoker': 1 row(s) are not yes/no values (allowed: ['1', 'true', 'yes', '0',"),
        ("outcome", SECRET, "column 'outcome' (label): 1 row(s) have a value outside ['stayed', 'left']."),
    ],
)
def test_bad_cell_names_column_and_row_count_but_not_the_value(tmp_path, column, bad, expected):
    # Prepare
    path = _csv(tmp_path, _replace(1, column, bad))

    # Execute
    message = _single_problem(path)

    # Assert
    assert expected in message
    assert bad not in message
    assert "987654" not in message


def test_out_of_range_counts_every_bad_row(tmp_path):
    # Prepare
    rows = _replace(0, "weight", "987654")
    rows[3] = rows[3].replace("60.25", "-1")
    path = _csv(tmp_path, rows)

    # Execute
    message = _single_problem(path)

    # Assert
    assert "column 'weight': 2 row(s) are outside the valid range" in message
    assert "987654" not in message


def test_problems_in_several_columns_come_in_one_error(tmp_path):
    # Prepare
    rows = _replace(0, "plan", SECRET)
    rows[1] = rows[1].replace(",no,", f",{SECRET},")
    path = _csv(tmp_path, rows)

    # Execute
    with pytest.raises(SiteDataError) as error:
        read_site_csv(path, SPEC)

    # Assert
    assert [p.split(":")[0] for p in error.value.problems] == ["column 'plan'", "column 'smoker'"]
    assert SECRET not in str(error.value)


# --- missing values ----------------------------------------------------------------------------------------------


def test_missing_values_beyond_tolerance(tmp_path):
    # Prepare: 2 of 4 rows (50%) miss a value; the spec tolerates 25%
    rows = _replace(0, "weight", "")
    rows[2] = rows[2].replace(",1,left,", ",,left,").replace(",c", f",{SECRET}")
    path = _csv(tmp_path, rows)

    # Execute
    message = _single_problem(path)

    # Assert
    assert (
        "2 of 4 row(s) (50%) have missing values, more than the spec's tolerance of 25%; "
        "missing per column: {'weight': 1, 'smoker': 1}."
    ) in message
    assert SECRET not in message


def test_missing_values_within_tolerance_drop_the_rows(tmp_path):
    # Prepare: 1 of 4 rows (25%) misses a value, marked with the spec's marker
    spec = _spec(missing_marker="?")
    path = _csv(tmp_path, _replace(1, "age", "?"))

    # Execute
    table = read_site_csv(path, spec)

    # Assert
    assert (table.rows_read, table.rows_dropped, len(table.frame)) == (4, 1, 3)
    assert table.frame["age"].tolist() == [30.0, 52.0, 63.0]


def test_missing_rows_reject_allows_none(tmp_path):
    # Prepare
    spec = _spec(preprocessing={"missing_rows": "reject"})
    path = _csv(tmp_path, _replace(3, "plan", ""))

    # Execute
    message = _single_problem(path, spec)

    # Assert
    assert "1 row(s) have missing values {'plan': 1} and the spec allows none. Fill them in." in message


def test_too_many_missing_labels_are_named(tmp_path):
    # Prepare
    rows = _replace(0, "outcome", "")
    rows[1] = rows[1].replace(",stayed,", ",,")
    path = _csv(tmp_path, rows)

    # Execute
    message = _single_problem(path)

    # Assert
    assert "column 'outcome' (label): 2 row(s) have no label. Fill them in." in message


# --- trainability and ids ----------------------------------------------------------------------------------------


def test_single_class_label(tmp_path):
    # Prepare
    path = _csv(tmp_path, [r.replace("stayed", "left") for r in GOOD_ROWS])

    # Execute
    message = _single_problem(path)

    # Assert
    assert "column 'outcome' (label): all 4 row(s) are positive; a site needs both classes" in message


def test_single_class_after_dropping_rows_says_so(tmp_path):
    # Prepare: the only two 'stayed' rows lose a value
    spec = _spec(preprocessing={"max_missing_fraction": 0.5})
    rows = _replace(1, "weight", "")
    rows[3] = rows[3].replace("60.25", "")
    path = _csv(tmp_path, rows)

    # Execute
    message = _single_problem(path, spec)

    # Assert
    assert "all 2 row(s) after dropping 2 row(s) with missing values are positive" in message


def test_too_few_rows(tmp_path):
    # Prepare
    spec = _spec(min_train_rows=10)
    path = _csv(tmp_path, GOOD_ROWS)

    # Execute
    message = _single_problem(path, spec)

    # Assert
    assert "only 4 usable row(s), giving 3 training row(s); the 'toy' task needs at least 10." in message


def test_duplicate_ids_are_counted_not_shown(tmp_path):
    # Prepare
    rows = _replace(0, "member_id", SECRET)
    rows[2] = rows[2].replace("m3", SECRET)
    path = _csv(tmp_path, rows)

    # Execute
    message = _single_problem(path)

    # Assert
    assert "column 'member_id' (id): 2 row(s) share an id with another row." in message
    assert SECRET not in message


def test_empty_id(tmp_path):
    # Prepare
    path = _csv(tmp_path, _replace(2, "member_id", ""))

    # Execute
    message = _single_problem(path)

    # Assert
    assert message == f"{path}: column 'member_id' (id): 1 row(s) have no id."


# --- what a valid file becomes -----------------------------------------------------------------------------------


def test_valid_file_becomes_typed_frame(tmp_path):
    # Prepare
    rows = _replace(0, "smoker", " yes ")
    rows[1] = rows[1].replace(",no,", ", NO,")
    path = _csv(tmp_path, rows)

    # Execute
    table = read_site_csv(path, SPEC)

    # Assert
    frame = table.frame
    assert (table.source, table.rows_read, table.rows_dropped) == (path, 4, 0)
    assert list(frame.columns) == ["age", "weight", "plan", "smoker", "label"]  # no member_id, no notes
    assert frame["age"].tolist() == [30.0, 41.0, 52.0, 63.0]
    assert frame["weight"].tolist() == [70.5, 80.0, 90.0, 60.25]
    assert frame["plan"].tolist() == ["1", "2", "gold", "1"]  # '1.0' and '1' are the same category
    assert frame["smoker"].tolist() == [1, 0, 1, 0]
    assert frame["label"].tolist() == [1, 0, 1, 0]


def test_numeric_labels_map_to_0_and_1(tmp_path):
    # Prepare
    spec = _spec(label={"column": "outcome", "positive": [2, 3], "values": [0, 1, 2, 3]})
    labels = ["3.0", "0", "2", "1"]
    rows = [r.replace(",left,", f",{y},").replace(",stayed,", f",{y},") for r, y in zip(GOOD_ROWS, labels, strict=True)]
    path = _csv(tmp_path, rows)

    # Execute
    table = read_site_csv(path, spec)

    # Assert
    assert table.frame["label"].tolist() == [1, 0, 1, 0]


def test_churn_club_file_reads_and_a_bad_age_is_caught(tmp_path):
    # Prepare
    spec = load_spec("churn")
    (path,) = write_clubs(tmp_path, 1, seed=0)
    lines = path.read_text().splitlines()
    columns = lines[0].split(",")
    cells = lines[5].split(",")
    cells[columns.index("age")] = "987654"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([*lines[:5], ",".join(cells), *lines[6:]]) + "\n")

    # Execute
    table = read_site_csv(path, spec)
    message = _single_problem(bad, spec)

    # Assert
    assert table.rows_dropped == 0 and len(table.frame) == table.rows_read > 0
    assert "column 'age': 1 row(s) are outside the valid range [16.0, 100.0]" in message
    assert "987654" not in message


@pytest.fixture(scope="module")
def heart_csvs(tmp_path_factory) -> dict[str, Path]:
    return {p.stem: p for p in write_sites(tmp_path_factory.mktemp("heart"))}


@pytest.mark.parametrize(
    ("site", "rows_read", "usable"),
    [("cleveland", 303, 303), ("hungarian", 294, 261), ("switzerland", 123, 46), ("va", 200, 130)],
)
def test_heart_disease_sites_give_flamby_row_counts(heart_csvs, site, rows_read, usable):
    # Execute
    table = read_site_csv(heart_csvs[site], load_spec("heart_disease"))

    # Assert
    assert sorted(heart_csvs) == sorted(SITES)
    assert (table.rows_read, len(table.frame), table.rows_dropped) == (rows_read, usable, rows_read - usable)
    assert not table.frame.isna().any().any()
    assert set(table.frame["label"]) == {0, 1}


def test_error_text_is_one_line_per_problem(tmp_path):
    # Prepare
    path = _csv(tmp_path, _replace(0, "weight", SECRET))

    # Execute
    message = _single_problem(path)

    # Assert
    assert "\n" not in message
    assert re.fullmatch(rf"{re.escape(str(path))}: column 'weight': 1 row\(s\) are not numbers\..*", message)

"""Over a run, a club rejected or an outlier in most rounds is flagged; Krum's routine non-selection is not."""

from __future__ import annotations

from fitfed.aggregation.summary import club_records


def _krum_round(selected: str, outliers: list[str]) -> dict:
    clubs = ["a", "b", "c", "d", "evil"]
    return {
        "clubs": clubs,
        "selected": [selected],
        "rejected": {c: "not selected by krum(num_faulty=1)" for c in clubs if c != selected},
        "outliers": outliers,
        "clipped": {},
    }


def test_krum_flags_the_persistent_outlier_not_the_clubs_it_merely_did_not_pick():
    # Prepare: three rounds; "evil" is an outlier in two
    reports = [_krum_round("a", ["evil"]), _krum_round("b", ["evil"]), _krum_round("c", [])]

    # Execute
    records = {r.club: r for r in club_records(reports)}

    # Assert
    assert records["evil"].flagged and records["evil"].outlier == 2 and records["evil"].rejected == 3
    assert not any(records[c].flagged for c in "abcd")
    assert records["evil"].describe() == (
        "evil: rejected in 3 of 3 rounds (not selected by krum(num_faulty=1)); an outlier in 2 of 3 rounds"
    )


def test_multikrum_rejection_in_most_rounds_flags_a_club():
    # Prepare: Multi-Krum keeps 4 of 5, so leaving a club out is a cause
    round_ = {"clubs": ["a", "b", "c", "d", "x"], "selected": ["a", "b", "c", "d"], "outliers": [], "clipped": {},
              "rejected": {"x": "not selected by multikrum(num_faulty=1)"}}  # fmt: skip
    honest = {**round_, "selected": ["a", "b", "c", "x"], "rejected": {"d": "not selected by multikrum(num_faulty=1)"}}

    # Execute
    records = {r.club: r for r in club_records([round_, round_, honest])}

    # Assert
    assert records["x"].flagged and records["x"].suspect == 2
    assert not records["d"].flagged


def test_nan_rejections_and_clipping_are_counted():
    # Prepare
    reports = [
        {"clubs": ["a"], "selected": ["a"], "rejected": {"b": "update(s) from club(s) 'b' ... hold NaN or Inf"},
         "outliers": [], "clipped": {"a": 0.5}},
        {"clubs": ["a", "b"], "selected": ["a", "b"], "rejected": {}, "outliers": [], "clipped": {}},
    ]  # fmt: skip

    # Execute
    records = {r.club: r for r in club_records(reports)}

    # Assert: b rejected in 1 of 2 rounds is not "most"
    assert records["b"].rejected == 1 and records["b"].rounds == 2 and not records["b"].flagged
    assert records["b"].reason == "NaN or Inf in its update"
    assert records["a"].clipped == 1 and records["a"].describe() == "a: clipped in 1 of 2 rounds"

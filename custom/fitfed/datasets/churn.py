"""SYNTHETIC fitness-club membership tables for the ``churn`` task spec.

No real club has shared data yet, so demos, tests and benchmarks need stand-in sites. Each
club gets its own member table in exactly the ``churn`` spec's shape. The marginals loosely
follow the public "Model Fitness" gym churn table, and the clubs are deliberately non-IID
(different sizes, age mixes, contract mixes and churn base rates), because that is the
setting federated learning has to cope with.

The label is drawn from a logistic model of the member's features (short contract, few
recent visits, short tenure and no group classes raise churn) plus a club intercept that
hits the club's base rate. Drawing it as a Bernoulli variable rather than thresholding the
score is the label noise: a model can learn the signal but cannot separate the classes.

Every club draws from its own generator seeded by ``(seed, club index)``, so club k's
table is the same whether 3 or 300 clubs are synthesised. Nothing here describes a real
person; member ids start with ``SYN-`` so nobody mistakes them for real ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fitfed.spec import load_spec

logger = logging.getLogger(__name__)

_MAX_CLUBS = 500
_CONTRACTS = np.array([1, 6, 12])
# Effect of each contract length on the churn log-odds: month-to-month members leave most.
_CONTRACT_EFFECT = {1: 1.2, 6: -0.3, 12: -1.4}


@dataclass(frozen=True)
class _ClubProfile:
    """What makes one club differ from the others (the source of non-IID data)."""

    num_members: int
    age_center: float
    female_share: float
    contract_probs: np.ndarray
    group_share: float
    near_share: float
    partner_share: float
    friend_share: float
    churn_rate: float


def club_names(num_clubs: int) -> list[str]:
    """Readable site names for ``num_clubs`` clubs: ``club_01``, ``club_02``, ...

    The width never depends on ``num_clubs`` (``club_100`` follows ``club_99``), so club k
    keeps its name, and therefore its member ids, however many clubs are synthesised.

    Raises:
        ValueError: ``num_clubs`` is not between 1 and 500.

    Example:
        >>> club_names(3)
        ['club_01', 'club_02', 'club_03']

    """
    _check_num_clubs(num_clubs)
    return [f"club_{k:02d}" for k in range(1, num_clubs + 1)]


def synthesize_clubs(num_clubs: int, seed: int) -> dict[str, pd.DataFrame]:
    """Synthesise one SYNTHETIC member table per club, in the ``churn`` spec's column order.

    Args:
        num_clubs: how many clubs (sites), 1 to 500.
        seed: non-negative base seed; club k uses the generator seeded by ``[seed, k]``.

    Returns:
        Club name -> DataFrame with ``load_spec("churn").columns``: ``member_id``, the 12
        features and ``churned``. Integer and boolean columns hold ints, booleans as 0/1.

    Raises:
        ValueError: ``num_clubs`` is out of range or ``seed`` is negative.

    Example:
        >>> frames = synthesize_clubs(2, seed=0)
        >>> list(frames)
        ['club_01', 'club_02']

    """
    names = club_names(num_clubs)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid: expected a non-negative integer such as 0.")
    columns = load_spec("churn").columns
    return {name: _synthesize_club(name, k, int(seed))[columns] for k, name in enumerate(names, start=1)}


def write_clubs(out_dir: Path, num_clubs: int, seed: int, *, overwrite: bool = False) -> list[Path]:
    """Write ``<club>.csv`` per club plus a ``README.md`` data card saying the data is SYNTHETIC.

    Args:
        out_dir: folder to write into; created if missing.
        num_clubs: how many clubs, 1 to 500.
        seed: non-negative base seed (see :func:`synthesize_clubs`).
        overwrite: replace club CSVs and the README left by an earlier run.

    Returns:
        The CSV paths, in club order.

    Raises:
        ValueError: ``num_clubs`` is out of range or ``seed`` is negative.
        FileExistsError: a file to be written exists and ``overwrite`` is False.

    """
    out_dir = Path(out_dir)
    frames = synthesize_clubs(num_clubs, seed)
    paths = [out_dir / f"{name}.csv" for name in frames]
    readme = out_dir / "README.md"
    existing = [p for p in [*paths, readme] if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(p.name for p in existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise FileExistsError(
            f"{out_dir} already holds {len(existing)} file(s) this would replace ({shown}); "
            "pass overwrite=True to replace them, or choose another out_dir."
        )
    _warn_stale_clubs(out_dir, set(paths))
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, frame in zip(paths, frames.values(), strict=True):
        # Fixed float format and line ending: the same (num_clubs, seed) gives byte-identical files.
        frame.to_csv(path, index=False, float_format="%.2f", lineterminator="\n")
    readme.write_text(_readme_text(frames, seed), encoding="utf-8")
    return paths


def _check_num_clubs(num_clubs: int) -> None:
    if isinstance(num_clubs, bool) or not isinstance(num_clubs, int | np.integer) or not 1 <= num_clubs <= _MAX_CLUBS:
        raise ValueError(f"num_clubs={num_clubs!r} is out of range: expected an integer from 1 to {_MAX_CLUBS}.")


def _warn_stale_clubs(out_dir: Path, new_paths: set[Path]) -> None:
    """Warn about club CSVs from an earlier, larger run: sites would pick up clubs the README omits."""
    stale = sorted(p.name for p in out_dir.glob("club_*.csv") if p not in new_paths)
    if stale:
        logger.warning(
            "%s still holds %d club file(s) from an earlier run (%s); they are not in the new README. "
            "Delete them if they should not take part.",
            out_dir,
            len(stale),
            ", ".join(stale[:5]),
        )


def _synthesize_club(name: str, index: int, seed: int) -> pd.DataFrame:
    """One club's table; every random draw comes from the club's own generator, in a fixed order."""
    rng = np.random.default_rng([seed, index])
    profile = _draw_profile(rng)
    columns = {**_draw_membership(rng, profile), **_draw_activity(rng, profile)}
    columns["churned"] = _draw_labels(rng, columns, profile.churn_rate)
    columns["member_id"] = np.array([f"SYN-{name}-{i:06d}" for i in range(1, profile.num_members + 1)])
    return pd.DataFrame(columns)


def _draw_profile(rng: np.random.Generator) -> _ClubProfile:
    """Club-level traits: size log-uniform in 300-4000, churn base rate 10%-40%, own age and contract mix."""
    contract_weights = np.array([0.55, 0.2, 0.25]) * rng.uniform(0.5, 1.5, size=3)
    return _ClubProfile(
        num_members=int(np.exp(rng.uniform(np.log(300), np.log(4000)))),
        age_center=rng.uniform(29.0, 40.0),
        female_share=rng.uniform(0.4, 0.58),
        contract_probs=contract_weights / contract_weights.sum(),
        group_share=rng.uniform(0.3, 0.55),
        near_share=rng.uniform(0.7, 0.95),
        partner_share=rng.uniform(0.3, 0.6),
        friend_share=rng.uniform(0.2, 0.4),
        churn_rate=rng.uniform(0.1, 0.4),
    )


def _draw_membership(rng: np.random.Generator, profile: _ClubProfile) -> dict[str, np.ndarray]:
    """Who the members are and what they signed: demographics, contract, tenure, referral flags."""
    n = profile.num_members
    # 18 plus a gamma tail: most members near the club's centre, a few up to 70, none below 18.
    age = 18 + rng.gamma(4.0, (profile.age_center - 18) / 4.0, size=n)
    male_share = 0.98 - profile.female_share
    gender = rng.choice(["female", "male", "other"], size=n, p=[profile.female_share, male_share, 0.02])
    contract = rng.choice(_CONTRACTS, size=n, p=profile.contract_probs)
    # Counted in whole months left: 0 (ends now) up to the full contract (just signed).
    to_end = rng.integers(0, contract + 1)
    # A member has been around at least as long as the current contract has run.
    tenure = np.maximum(np.floor(rng.gamma(1.1, 4.5, size=n)), contract - to_end)
    return {
        "age": np.clip(np.round(age), 18, 70).astype(int),
        "gender": gender,
        "tenure_months": np.clip(tenure, 0, 60).astype(int),
        "contract_months": contract,
        "months_to_contract_end": to_end.astype(int),
        "near_location": (rng.random(n) < profile.near_share).astype(int),
        "partner_company": (rng.random(n) < profile.partner_share).astype(int),
        "friend_promo": (rng.random(n) < profile.friend_share).astype(int),
    }


def _draw_activity(rng: np.random.Generator, profile: _ClubProfile) -> dict[str, np.ndarray]:
    """How members use the club: visits (usual and last month), group classes, extra spend."""
    n = profile.num_members
    group = (rng.random(n) < profile.group_share).astype(int)
    visits = np.clip(rng.gamma(3.5, 0.55, size=n) + 0.3 * group, 0.0, 7.0)
    # Last month scatters around the usual rate; members drifting away show it here first.
    last_month = np.clip(visits * np.exp(rng.normal(-0.05, 0.35, size=n)), 0.0, 7.0)
    return {
        "avg_visits_per_week": np.round(visits, 2),
        "avg_visits_per_week_last_month": np.round(last_month, 2),
        "group_classes": group,
        "additional_spend_per_month": np.round(np.clip(rng.gamma(2.0, 75.0, size=n), 0.0, 2000.0), 2),
    }


def _churn_score(c: dict[str, np.ndarray]) -> np.ndarray:
    """Churn log-odds before the club intercept; the signs follow gym-churn folklore."""
    contract_effect = np.vectorize(_CONTRACT_EFFECT.__getitem__)(c["contract_months"])
    return (
        contract_effect
        - 0.12 * c["months_to_contract_end"]
        - 0.9 * np.log1p(c["tenure_months"])
        - 1.5 * c["avg_visits_per_week_last_month"]
        + 0.6 * c["avg_visits_per_week"]
        - 0.8 * c["group_classes"]
        - 0.05 * (c["age"] - 30)
        - 0.4 * c["near_location"]
        - 0.4 * c["partner_company"]
        - 0.4 * c["friend_promo"]
        - 0.004 * c["additional_spend_per_month"]
    )


def _draw_labels(rng: np.random.Generator, columns: dict[str, np.ndarray], churn_rate: float) -> np.ndarray:
    """Bernoulli labels whose expected mean is the club's churn base rate."""
    score = _churn_score(columns)
    # Bisection on the intercept: the mean churn probability rises monotonically with it.
    low, high = -30.0, 30.0
    for _ in range(60):
        mid = (low + high) / 2
        if np.mean(_sigmoid(score + mid)) < churn_rate:
            low = mid
        else:
            high = mid
    return (rng.random(score.size) < _sigmoid(score + low)).astype(int)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _readme_text(frames: dict[str, pd.DataFrame], seed: int) -> str:
    """Render the data card: it says loudly that the data is synthetic, and how to regenerate it."""
    rows = [f"| {name} | {len(df)} | {df['churned'].mean():.1%} |" for name, df in frames.items()]
    return "\n".join(
        [
            "# SYNTHETIC fitness-club churn data",
            "",
            "**This data is SYNTHETIC.** It was generated by `fitfed` (`fitfed.datasets.churn`) and contains "
            "no real person: every row is drawn from a random model, and every `member_id` starts with `SYN-`.",
            "",
            f"- Task spec: `churn`; seed: {seed}; number of clubs: {len(frames)}.",
            f"- Regenerate: `fitfed.datasets.churn.write_clubs(out_dir, num_clubs={len(frames)}, seed={seed})`.",
            "- One comma-separated file per club (`<club>.csv`), header row, no index.",
            "",
            "| club | rows | churn rate |",
            "|---|---:|---:|",
            *rows,
            "",
        ]
    )

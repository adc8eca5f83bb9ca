"""The real four-hospital UCI Heart Disease data (FLamby's Fed-Heart-Disease), as one CSV per hospital.

The raw UCI files ship inside the package with their licence and attribution
(``heart_disease_raw/README.md``, CC BY 4.0). They have no header, so this module only
adds one: everything else (dropped columns, missing rows, split, encoding) is the
``heart_disease`` task spec's job, exactly as for any other task.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

SITES = ("cleveland", "hungarian", "switzerland", "va")
COLUMNS = tuple("age sex cp trestbps chol fbs restecg thalach exang oldpeak slope ca thal num".split())
MD5 = {
    "cleveland": "2d91a8ff69cfd9616aa47b59d6f843db",
    "hungarian": "22e96bee155b5973568101c93b3705f6",
    "switzerland": "9a87f7577310b3917730d06ba9349e20",
    "va": "4249d03ca7711e84f4444768c9426170",
}


def raw_file(site: str) -> bytes:
    """The hospital's file exactly as published, checked against its md5."""
    if site not in SITES:
        raise ValueError(f"site={site!r} is not one of the heart_disease hospitals {list(SITES)}")
    data = resources.files("fitfed.datasets").joinpath(f"heart_disease_raw/processed.{site}.data").read_bytes()
    digest = hashlib.md5(data).hexdigest()
    if digest != MD5[site]:
        raise ValueError(f"bundled file for {site!r} has md5 {digest}, expected {MD5[site]}: reinstall fitfed")
    return data


def write_sites(out_dir: Path) -> list[Path]:
    """Write ``<hospital>.csv`` (the raw rows under a header) for each hospital, plus the attribution."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for site in SITES:
        path = out_dir / f"{site}.csv"
        path.write_bytes(",".join(COLUMNS).encode() + b"\n" + raw_file(site))
        paths.append(path)
    readme = resources.files("fitfed.datasets").joinpath("heart_disease_raw/README.md").read_text()
    (out_dir / "README.md").write_text(readme)
    return paths

"""The embedded warehouse: Delta tables under ``<state>/warehouse/<catalog>/<schema>/<table>``.

Written with ``deltalake`` (delta-rs), so any Delta reader (Spark, DuckDB, Polars, pandas via
``deltalake``) opens them. ``warehouse/catalog.json`` indexes the tables by their three-part
names, the way Unity Catalog would.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder

from databricks_bridge.audit_rows import SCHEMA, to_arrow

INDEX_FILE = "catalog.json"


class LocalWarehouse:
    """Delta tables in a folder, named ``catalog.schema.table``.

    Args:
        root: the warehouse folder (``<state>/warehouse``).
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def table_path(self, name: str) -> Path:
        """Where table ``catalog.schema.table`` lives."""
        return self.root.joinpath(*name.split("."))

    def existing_ids(self, name: str, job_ids: list[str]) -> set[str]:
        """The event ids the table already holds for some jobs (a training's; empty for a new table)."""
        path = self.table_path(name)
        if not (path / "_delta_log").is_dir():
            return set()
        literals = ", ".join("'" + job_id.replace("'", "''") + "'" for job_id in job_ids)
        found = self._query(name, f"SELECT event_id FROM t WHERE job_id IN ({literals})")
        return {str(i) for i in found["event_id"].to_pylist()}

    def merge_audit_rows(self, name: str, rows: list[dict[str, Any]]) -> int:
        """MERGE rows on ``event_id``, inserting only unseen ones; returns how many were inserted."""
        if not rows:
            return 0
        table = self._table(name)
        merged = (
            table.merge(to_arrow(rows), "t.event_id = s.event_id", source_alias="s", target_alias="t")
            .when_not_matched_insert_all()
            .execute()
        )
        return int(merged["num_target_rows_inserted"])

    def read(self, name: str) -> pa.Table:
        """The whole table."""
        return self._query(name, "SELECT * FROM t")

    def _query(self, name: str, statement: str) -> pa.Table:
        """SQL over one table (as ``t``) in delta-rs's own engine.

        Not pyarrow's dataset scanner: with torch and MLflow loaded, its threads can abort the
        interpreter at exit (seen with pyarrow 25 and deltalake 1.6).
        """
        builder = QueryBuilder().register("t", DeltaTable(str(self.table_path(name))))
        return pa.table(builder.execute(statement).read_all())

    def _table(self, name: str) -> DeltaTable:
        path = self.table_path(name)
        if not (path / "_delta_log").is_dir():
            path.mkdir(parents=True, exist_ok=True)
            DeltaTable.create(
                str(path), schema=SCHEMA, name=name.split(".")[-1], description="NVIDIA FLARE and fitfed audit events"
            )
            self._index(name, path)
        return DeltaTable(str(path))

    def _index(self, name: str, path: Path) -> None:
        """Add the table to ``catalog.json`` (written whole, then renamed, so it is never half written)."""
        index_path = self.root / INDEX_FILE
        index = json.loads(index_path.read_text()) if index_path.is_file() else {"format": "fitfed-warehouse/1"}
        catalog, schema, table = name.split(".")
        index.setdefault("catalogs", {}).setdefault(catalog, {}).setdefault(schema, {})[table] = {
            "format": "delta",
            "location": str(path.relative_to(self.root)),
            "columns": [f"{f.name} {f.type}" for f in SCHEMA],
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        temporary = index_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(index, indent=2) + "\n")
        os.replace(temporary, index_path)

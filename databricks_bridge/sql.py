"""The SQL the Databricks mode and the Spark entry point run against the audit table.

Names are validated identifiers (see :mod:`databricks_bridge.settings`) and paths are built by
the bridge, so statements are composed here rather than from user text.
"""

from __future__ import annotations

import re

from databricks_bridge.audit_rows import COLUMNS, DDL

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")
_VOLUME_PATH = re.compile(r"^/Volumes/[A-Za-z0-9_./-]+$")


def quoted_name(name: str) -> str:
    """A one- to three-part table or volume name, each part back-quoted.

    Raises:
        ValueError: a name that is not dotted identifiers.
    """
    if not _NAME.match(name):
        raise ValueError(f"name={name!r}: expected catalog.schema.table made of letters, digits and underscores")
    return ".".join(f"`{part}`" for part in name.split("."))


def create_table(table: str, using: str = "DELTA") -> str:
    """CREATE TABLE IF NOT EXISTS for the audit table (Delta; ``using`` another format only for local Spark tests)."""
    if not re.fullmatch(r"[A-Za-z]+", using):
        raise ValueError(f"using={using!r}: expected a table format such as DELTA or PARQUET")
    columns = DDL.replace("event_id STRING", "event_id STRING NOT NULL", 1) if using.upper() == "DELTA" else DDL
    return (
        f"CREATE TABLE IF NOT EXISTS {quoted_name(table)} ({columns}) USING {using.upper()} "
        "COMMENT 'NVIDIA FLARE and fitfed audit events, one row per event_id (written by fitfed export)'"
    )


def create_volume(volume: str) -> str:
    """CREATE VOLUME IF NOT EXISTS for the staging Volume."""
    return f"CREATE VOLUME IF NOT EXISTS {quoted_name(volume)} COMMENT 'fitfed export: audit rows staged for MERGE'"


def merge_from(table: str, source: str) -> str:
    """MERGE ``source`` (a table, view or subquery in parentheses) into ``table``: insert unseen event ids only."""
    columns = ", ".join(f"`{c}`" for c in COLUMNS)
    values = ", ".join(f"s.`{c}`" for c in COLUMNS)
    return (
        f"MERGE INTO {quoted_name(table)} AS t USING {source} AS s ON t.event_id = s.event_id "
        f"WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})"
    )


def staged_rows(volume_file: str) -> str:
    """A subquery reading one staged JSON-lines file from a Volume with the table's schema."""
    if not _VOLUME_PATH.match(volume_file) or ".." in volume_file:
        raise ValueError(f"volume_file={volume_file!r}: expected a /Volumes/<catalog>/<schema>/<volume>/... path")
    return f"(SELECT * FROM read_files('{volume_file}', format => 'json', schema => '{DDL}'))"

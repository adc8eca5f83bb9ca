"""At scale, on Spark: many jobs' raw audit files from a folder or Volume into the audit table.

``SOURCE`` holds one folder per job, each a job result as ``fitfed export`` takes it (or just
its raw files): fitfed's ``events.jsonl`` and FLARE's ``audit.log`` files, found at any depth.
Each job's files are parsed together on an executor, with the same code as ``fitfed export``:
the hash chain of every run record is verified, and any altered record or malformed audit line
stops the ingest before anything is written, naming the file. A job resumed after a server
crash adds the rows of the jobs whose run records it carries (``fitfed/lineage/``), checked as
``fitfed export`` checks them. Rows go in with ``MERGE`` on ``event_id`` (Delta), so re-ingesting
a folder adds only what is new.

On a Databricks cluster (fitfed installed as a cluster library)::

    python -m databricks_bridge.spark_ingest --source /Volumes/ml/fl/raw_audit --table ml.fl.fl_audit_events

Only a Delta table gets ``MERGE``; other formats (Spark local mode without Delta, in tests) get
the same result by appending the rows whose ``event_id`` the table lacks, which is safe for one
writer at a time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo

from databricks_bridge import sql
from databricks_bridge.audit_rows import COLUMNS, DDL, fitfed_rows, is_audit_file, job_key, parse_flare_audit, site_of
from databricks_bridge.audit_rows import unique_rows as _unique
from databricks_bridge.errors import BridgeError, TamperedTrailError
from databricks_bridge.lineage import LINEAGE_DIR, lineage_rows, link_lineage
from fitfed.audit import ChainError, verify_chain

EVENTS_FILE = "events.jsonl"


def rows_for_job(job: str, files: Iterable[tuple[str, bytes]], timezone: str | None = None) -> list[dict[str, Any]]:
    """The audit rows of one job folder, from its raw files given as (path inside the job folder, content).

    Raises:
        BridgeError: a malformed audit line or unreadable file, naming it.
        TamperedTrailError: a run record whose hash chain does not verify.
    """
    texts = {}
    for relative, content in files:
        try:
            texts[relative] = content.decode("utf-8")
        except UnicodeDecodeError:
            raise BridgeError(f"{job}/{relative}: not UTF-8 text; not an audit file") from None
    records = sorted(r for r in texts if PurePosixPath(r).name == EVENTS_FILE)
    copies = [r for r in records if PurePosixPath(r).parent.parent.name == LINEAGE_DIR]
    records = [r for r in records if r not in copies]
    if len(records) > 1:
        raise BridgeError(f"{job}: holds {len(records)} run records ({records}); one job per folder")
    rows: list[dict[str, Any]] = []
    key = job
    if records:
        events = _verified(texts[records[0]], f"{job}/{records[0]}")
        key = job_key(events, job)
        carried = {PurePosixPath(r).parent.name: (f"{job}/{r}", _verified(texts[r], f"{job}/{r}")) for r in copies}
        folder = f"{job}/{PurePosixPath(records[0]).parent / LINEAGE_DIR}"
        rows += lineage_rows(link_lineage(key, events, carried, folder))
        rows += fitfed_rows(events, job_id=key)
    zone = ZoneInfo(timezone) if timezone else None
    for relative in sorted(r for r in texts if is_audit_file(PurePosixPath(r))):
        site = site_of(PurePosixPath(relative))
        rows += parse_flare_audit(texts[relative], source=f"{job}/{relative}", job_id=key, site=site, timezone=zone)
    return _unique(rows)


def ingest(spark: Any, source: str, table: str, *, timezone: str | None = "UTC", table_format: str = "DELTA") -> int:
    """Parse every job folder under ``source`` and add their unseen rows to ``table``; returns rows added.

    Raises:
        BridgeError: listing the files that stopped the ingest (nothing was written).
    """
    parsed = _parsed_jobs(spark, source, timezone).cache()
    try:
        errors = parsed.filter(lambda job: job[0] is not None).map(lambda job: job[0]).collect()
        if errors:
            raise BridgeError(f"ingest of {source} stopped, nothing written: " + "; ".join(sorted(errors)[:20]))
        rows = parsed.flatMap(lambda job: job[1])
        frame = spark.createDataFrame(rows, schema=DDL).dropDuplicates(["event_id"])
        spark.sql(sql.create_table(table, using=table_format))
        if table_format.upper() == "DELTA":
            return _merge(spark, frame, table)
        return _append_unseen(spark, frame, table)
    finally:
        parsed.unpersist()


def _parsed_jobs(spark: Any, source: str, timezone: str | None) -> Any:
    """An RDD of (error or None, rows) per job folder, parsed on the executors."""
    from pyspark.sql import functions as f

    root = _plain_path(source).rstrip("/")
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(source)
        .where(f.col("path").endswith(EVENTS_FILE) | f.col("path").rlike(r"(/audit\.log|/LOG_audit\.log_[^/]+)$"))
        .select("path", "content")
    )

    def by_job(record: Any) -> tuple[str, tuple[str, bytes]]:
        relative = _plain_path(record.path)[len(root) + 1 :]
        job, _, inside = relative.partition("/")
        return job, (inside, bytes(record.content))

    def parse(job_files: tuple[str, Iterable[tuple[str, bytes]]]) -> tuple[str | None, list[dict[str, Any]]]:
        job, files = job_files
        try:
            return None, [_spark_row(r) for r in rows_for_job(job, files, timezone)]
        except BridgeError as e:
            return str(e), []

    return files.rdd.map(by_job).groupByKey().map(parse)


def _merge(spark: Any, frame: Any, table: str) -> int:
    frame.createOrReplaceTempView("fitfed_incoming_audit")
    result = spark.sql(sql.merge_from(table, "fitfed_incoming_audit")).collect()
    return int(result[0]["num_inserted_rows"]) if result else 0


def _append_unseen(spark: Any, frame: Any, table: str) -> int:
    existing = spark.table(table).select("event_id")
    unseen = frame.join(existing, on="event_id", how="left_anti").select(*COLUMNS).cache()
    try:
        count = unseen.count()
        if count:
            unseen.write.insertInto(table)
        return count
    finally:
        unseen.unpersist()


def _verified(text: str, name: str) -> list[dict[str, Any]]:
    """Verify a run record's hash chain with fitfed's own verifier (it reads files, so one is written)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, EVENTS_FILE)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            return verify_chain(Path(path))
        except ChainError as e:
            raise TamperedTrailError(f"{name}: refusing to ingest: {str(e).split(': ', 1)[-1]}") from None


def _spark_row(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[c] for c in COLUMNS)


def _plain_path(path: str) -> str:
    """A path without the ``file:``/``dbfs:`` scheme Spark puts on it."""
    for scheme in ("file://", "file:", "dbfs:"):
        if path.startswith(scheme):
            return path[len(scheme) :]
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m databricks_bridge.spark_ingest --source DIR --table catalog.schema.fl_audit_events``."""
    parser = argparse.ArgumentParser(prog="python -m databricks_bridge.spark_ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--source", required=True, help="folder or Volume path holding one folder per job")
    parser.add_argument("--table", required=True, help="catalog.schema.fl_audit_events")
    parser.add_argument("--log-timezone", default="UTC", help="IANA zone of FLARE's audit.log times (default UTC)")
    args = parser.parse_args(argv)
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName("fitfed-audit-ingest").getOrCreate()
    added = ingest(spark, args.source, args.table, timezone=args.log_timezone)
    print(f"added {added} audit row(s) to {args.table} from {args.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

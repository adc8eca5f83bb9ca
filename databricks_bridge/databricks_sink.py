"""The audit table in a Databricks workspace: rows staged in a Unity Catalog Volume, then MERGEd by a SQL warehouse.

Rows go up as one JSON-lines file per export, named after the audit trail's head hash (the same
export stages the same file), through the SDK's Files API. The Statement Execution API then
creates the Volume and the Delta table if missing and runs ``MERGE ... WHEN NOT MATCHED THEN
INSERT`` on ``event_id``, so rows are never duplicated, however often a job is exported.
"""

from __future__ import annotations

import io
import time
from typing import Any

from databricks_bridge import sql
from databricks_bridge.audit_rows import to_json_lines
from databricks_bridge.errors import BridgeError

_TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "CLOSED"}


class DatabricksAuditSink:
    """Appends audit rows to a Unity Catalog table.

    Args:
        client: a ``databricks.sdk.WorkspaceClient`` (auth from the environment or a profile).
        warehouse_id: the SQL warehouse that runs the statements.
        table: ``catalog.schema.fl_audit_events``.
        volume: ``catalog.schema.<volume>`` for staged files.
        timeout_s: how long one statement may take before the export gives up on it.
    """

    def __init__(self, client: Any, *, warehouse_id: str, table: str, volume: str, timeout_s: float = 300.0):
        self.client = client
        self.warehouse_id = warehouse_id
        self.table = table
        self.volume = volume
        self.timeout_s = timeout_s
        self._ready = False

    def merge_audit_rows(self, rows: list[dict[str, Any]], *, batch: str) -> int:
        """Stage ``rows`` as ``<volume>/<batch>.json`` and MERGE them; returns the rows inserted."""
        if not rows:
            return 0
        if not self._ready:  # once per export
            self.run(sql.create_volume(self.volume))
            self.run(sql.create_table(self.table))
            self._ready = True
        path = "/Volumes/" + "/".join(self.volume.split(".")) + f"/{batch}.json"
        self.client.files.upload(path, io.BytesIO(to_json_lines(rows)), overwrite=True)
        result = self.run(sql.merge_from(self.table, sql.staged_rows(path)))
        return _inserted(result)

    def run(self, statement: str) -> Any:
        """Execute one statement on the warehouse and wait for it.

        Raises:
            BridgeError: the statement failed or timed out, with the warehouse's message.
        """
        from databricks.sdk.service.sql import ExecuteStatementRequestOnWaitTimeout

        api = self.client.statement_execution
        response = api.execute_statement(
            statement=statement,
            warehouse_id=self.warehouse_id,
            wait_timeout="30s",
            on_wait_timeout=ExecuteStatementRequestOnWaitTimeout.CONTINUE,
        )
        deadline = time.monotonic() + self.timeout_s
        while _state(response) not in _TERMINAL:
            if time.monotonic() > deadline:
                api.cancel_execution(response.statement_id)
                raise BridgeError(f"SQL warehouse {self.warehouse_id}: statement timed out after {self.timeout_s}s")
            time.sleep(1.0)
            response = api.get_statement(response.statement_id)
        if _state(response) != "SUCCEEDED":
            error = response.status.error if response.status else None
            message = error.message if error else "no error message"
            raise BridgeError(
                f"SQL warehouse {self.warehouse_id}: {_state(response)}: {message} (for: {statement[:80]}…)"
            )
        return response


def _state(response: Any) -> str:
    state = response.status.state if response.status else None
    return state.value if state is not None else "PENDING"


def _inserted(response: Any) -> int:
    """MERGE's result row is (num_affected_rows, num_updated_rows, num_deleted_rows, num_inserted_rows)."""
    manifest = response.manifest
    data = response.result.data_array if response.result else None
    if not manifest or not manifest.schema or not data:
        return 0
    names = [c.name for c in manifest.schema.columns or []]
    column = "num_inserted_rows" if "num_inserted_rows" in names else "num_affected_rows"
    return int(data[0][names.index(column)]) if column in names else 0

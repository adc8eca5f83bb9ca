"""A loopback fake of the Databricks REST endpoints the bridge's clients call, and nothing more.

The real ``mlflow`` (tracking, Unity Catalog registry, SDK-based artifact repositories) and
``databricks-sdk`` (Files API, Statement Execution API) clients talk to it over HTTP on
127.0.0.1. It keeps just enough state to answer them consistently, logs every call, and answers
any route it does not know with HTTP 501 while recording it in ``unexpected``, which the test
asserts is empty. SQL statements are recorded, not executed; a MERGE answers with the number
of rows in the file it reads from the fake Volume, less the event ids it already "holds".
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

MAX_BODY = 64 * 1024 * 1024
FAKE_TOKEN = "dapi-fake-0123456789-secret"  # the test token; it must never appear in anything sent
Response = tuple[int, Any]


@dataclass
class Call:
    """One request: method, path, query and JSON body (or the byte count of a file upload)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    authorization: str | None


@dataclass
class FakeState:
    """What the fake workspace holds."""

    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    logged_models: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    statements: list[str] = field(default_factory=list)
    audit_ids: set[str] = field(default_factory=set)


class FakeDatabricks:
    """Serve the fake on an ephemeral loopback port; use as a context manager so it always stops."""

    def __init__(self) -> None:
        self.state = FakeState()
        self.calls: list[Call] = []
        self.unexpected: list[str] = []
        self._lock = threading.Lock()
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = []
        self._add_routes()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeDatabricks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def routes_called(self) -> list[str]:
        """``METHOD /path`` of every call, paths of files and ids folded to placeholders, in order."""
        return [f"{c.method} {_fold(c.path)}" for c in self.calls]

    # ---- dispatch ---------------------------------------------------------------------------------------------

    def dispatch(self, call: Call) -> Response:
        with self._lock:
            self.calls.append(call)
            for method, pattern, handler in self._routes:
                match = pattern.fullmatch(call.path)
                if method == call.method and match:
                    try:
                        return handler(call, *match.groups())
                    except Exception as e:  # a request the fake cannot answer is a failed contract too
                        self.unexpected.append(f"{call.method} {call.path} {call.query} -> {type(e).__name__}: {e}")
                        return 400, {"error_code": "BAD_REQUEST", "message": f"fake: {type(e).__name__}: {e}"}
            self.unexpected.append(f"{call.method} {call.path}")
            return 501, {"error_code": "NOT_IMPLEMENTED", "message": f"fake: unexpected {call.method} {call.path}"}

    def _route(self, method: str, pattern: str, handler: Callable[..., Response]) -> None:
        self._routes.append((method, re.compile(pattern), handler))

    def _add_routes(self) -> None:
        mlflow, uc = "/api/2.0/mlflow", "/api/2.0/mlflow/unity-catalog"
        self._route("GET", r"/\.well-known/databricks-config", self._host_metadata)
        self._route("GET", f"{mlflow}/experiments/get-by-name", self._experiment_by_name)
        self._route("POST", f"{mlflow}/experiments/create", self._create_experiment)
        self._route("POST", f"{mlflow}/runs/search", self._search_runs)
        self._route("POST", f"{mlflow}/runs/create", self._create_run)
        self._route("GET", f"{mlflow}/runs/get", self._get_run)
        self._route("POST", f"{mlflow}/runs/log-batch", self._log_batch)
        self._route("POST", f"{mlflow}/runs/update", self._update_run)
        self._route("POST", f"{mlflow}/runs/set-tag", self._set_tag)
        self._route("GET", f"{mlflow}/metrics/get-history", self._metric_history)
        self._route("POST", f"{mlflow}/runs/outputs", lambda call: (200, {}))
        self._route("POST", f"{mlflow}/logged-models", self._create_logged_model)
        self._route("GET", f"{mlflow}/logged-models/([^/]+)", self._get_logged_model)
        self._route("PATCH", f"{mlflow}/logged-models/([^/]+)", self._finalize_logged_model)
        self._route("PATCH", f"{mlflow}/logged-models/([^/]+)/tags", self._tag_logged_model)
        self._route("POST", f"{uc}/registered-models/create", self._create_registered_model)
        self._route("GET", f"{uc}/registered-models/get", self._get_registered_model)
        self._route("POST", f"{uc}/model-versions/create", self._create_model_version)
        self._route("POST", f"{uc}/model-versions/finalize", self._finalize_model_version)
        self._route("GET", f"{uc}/model-versions/get", self._get_model_version)
        self._route("POST", f"{uc}/registered-models/alias", self._set_alias)
        self._route("GET", f"{uc}/registered-models/alias", self._get_by_alias)
        self._route("PUT", r"/api/2.0/fs/files(/.+)", self._put_file)
        self._route("GET", r"/api/2.0/fs/files(/.+)", self._get_file)
        self._route("HEAD", r"/api/2.0/fs/files(/.+)", self._head_file)
        self._route("HEAD", r"/api/2.0/fs/directories(/.+)", self._head_directory)
        self._route("GET", r"/api/2.0/fs/directories(/.+)", self._list_directory)
        self._route("PUT", r"/api/2.0/fs/directories(/.+)", lambda call, path: (200, {}))
        self._route("POST", r"/api/2.0/fs/create-download-url", self._no_presigned_urls)
        self._route("POST", r"/api/2.0/sql/statements/?", self._execute_statement)

    def _host_metadata(self, call: Call) -> Response:
        """The SDK's host discovery (databricks-sdk reads it whenever it builds a config)."""
        return 200, {"oidc_endpoint": f"{self.url}/oidc", "workspace_id": "1234567890", "cloud": "aws"}

    # ---- MLflow tracking ----------------------------------------------------------------------------------------

    def _experiment_by_name(self, call: Call) -> Response:
        name = call.query["experiment_name"][0]
        experiment = next((e for e in self.state.experiments.values() if e["name"] == name), None)
        if experiment is None:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"No experiment named {name}"}
        return 200, {"experiment": experiment}

    def _create_experiment(self, call: Call) -> Response:
        experiment_id = str(1000 + len(self.state.experiments))
        self.state.experiments[experiment_id] = {
            "experiment_id": experiment_id, "name": call.body["name"], "lifecycle_stage": "active",
            "artifact_location": f"dbfs:/databricks/mlflow-tracking/{experiment_id}",
        }  # fmt: skip
        return 200, {"experiment_id": experiment_id}

    def _create_run(self, call: Call) -> Response:
        run_id = uuid.uuid4().hex
        experiment_id = call.body["experiment_id"]
        info = {
            "run_id": run_id, "run_uuid": run_id, "experiment_id": experiment_id, "status": "RUNNING",
            "run_name": call.body.get("run_name", ""), "start_time": call.body.get("start_time"),
            "artifact_uri": f"dbfs:/databricks/mlflow-tracking/{experiment_id}/{run_id}/artifacts",
            "lifecycle_stage": "active",
        }  # fmt: skip
        tags = {t["key"]: t["value"] for t in call.body.get("tags", [])}
        self.state.runs[run_id] = {"info": info, "params": {}, "tags": tags, "metrics": []}
        return 200, {"run": self._run_json(run_id)}

    def _run_json(self, run_id: str) -> dict[str, Any]:
        run = self.state.runs[run_id]
        latest: dict[str, dict[str, Any]] = {}
        for metric in run["metrics"]:
            latest[metric["key"]] = metric
        return {
            "info": run["info"],
            "data": {
                "params": [{"key": k, "value": v} for k, v in run["params"].items()],
                "tags": [{"key": k, "value": v} for k, v in run["tags"].items()],
                "metrics": list(latest.values()),
            },
        }

    def _search_runs(self, call: Call) -> Response:
        wanted = re.search(r"tags\.`([^`]+)` = '([^']*)'", call.body.get("filter", ""))
        runs = [
            self._run_json(run_id)
            for run_id, run in self.state.runs.items()
            if run["info"]["experiment_id"] in call.body.get("experiment_ids", [])
            and (wanted is None or run["tags"].get(wanted.group(1)) == wanted.group(2))
        ]
        return 200, {"runs": runs}

    def _get_run(self, call: Call) -> Response:
        run_id = call.query.get("run_id", call.query.get("run_uuid", [""]))[0]
        if run_id not in self.state.runs:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"run {run_id}"}
        return 200, {"run": self._run_json(run_id)}

    def _log_batch(self, call: Call) -> Response:
        run = self.state.runs[call.body["run_id"]]
        for param in call.body.get("params", []):
            if param["key"] in run["params"] and run["params"][param["key"]] != param["value"]:
                return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"param {param['key']} changed"}
            run["params"][param["key"]] = param["value"]
        run["tags"].update({t["key"]: t["value"] for t in call.body.get("tags", [])})
        run["metrics"] += call.body.get("metrics", [])
        return 200, {}

    def _metric_history(self, call: Call) -> Response:
        run = self.state.runs[call.query.get("run_id", call.query.get("run_uuid", [""]))[0]]
        key = call.query["metric_key"][0]
        return 200, {"metrics": [m for m in run["metrics"] if m["key"] == key]}

    def _set_tag(self, call: Call) -> Response:
        self.state.runs[call.body["run_id"]]["tags"][call.body["key"]] = call.body["value"]
        return 200, {}

    def _update_run(self, call: Call) -> Response:
        info = self.state.runs[call.body["run_id"]]["info"]
        info.update({k: call.body[k] for k in ("status", "end_time", "run_name") if k in call.body})
        return 200, {"run_info": info}

    def _create_logged_model(self, call: Call) -> Response:
        model_id = f"m-{uuid.uuid4().hex}"
        experiment_id = call.body["experiment_id"]
        info = {
            "model_id": model_id, "experiment_id": experiment_id, "name": call.body.get("name", ""),
            "source_run_id": call.body.get("source_run_id", ""), "status": "LOGGED_MODEL_PENDING",
            "artifact_uri": f"dbfs:/databricks/mlflow-tracking/{experiment_id}/logged_models/{model_id}/artifacts",
            "creation_timestamp_ms": int(time.time() * 1000), "last_updated_timestamp_ms": int(time.time() * 1000),
        }  # fmt: skip
        self.state.logged_models[model_id] = {"info": info, "data": {"params": call.body.get("params", [])}}
        self.state.logged_models[model_id]["info"]["tags"] = call.body.get("tags", [])
        return 200, {"model": self.state.logged_models[model_id]}

    def _get_logged_model(self, call: Call, model_id: str) -> Response:
        return 200, {"model": self.state.logged_models[model_id]}

    def _finalize_logged_model(self, call: Call, model_id: str) -> Response:
        self.state.logged_models[model_id]["info"]["status"] = call.body.get("status", "LOGGED_MODEL_READY")
        return 200, {"model": self.state.logged_models[model_id]}

    def _tag_logged_model(self, call: Call, model_id: str) -> Response:
        self.state.logged_models[model_id]["info"]["tags"] += call.body.get("tags", [])
        return 200, {}

    # ---- Unity Catalog model registry -------------------------------------------------------------------------

    def _create_registered_model(self, call: Call) -> Response:
        name = call.body["name"]
        if name in self.state.models:
            return 400, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": f"{name} exists"}
        self.state.models[name] = {"name": name, "versions": {}, "aliases": {}}
        return 200, {"registered_model": {"name": name}}

    def _get_registered_model(self, call: Call) -> Response:
        name = call.query["name"][0]
        if name not in self.state.models:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{name}"}
        model = self.state.models[name]
        aliases = [{"alias": a, "version": v} for a, v in model["aliases"].items()]
        return 200, {"registered_model": {"name": name, "aliases": aliases}}

    def _create_model_version(self, call: Call) -> Response:
        model = self.state.models[call.body["name"]]
        version = str(len(model["versions"]) + 1)
        catalog, schema, name = call.body["name"].split(".")
        model["versions"][version] = {
            **{k: v for k, v in call.body.items() if k != "tags"}, "version": version, "status": "PENDING_REGISTRATION",
            "tags": call.body.get("tags", []),
            "storage_location": f"s3://fake-uc-bucket/models/{catalog}/{schema}/{name}/{version}",
        }  # fmt: skip
        return 200, {"model_version": model["versions"][version]}

    def _finalize_model_version(self, call: Call) -> Response:
        version = self.state.models[call.body["name"]]["versions"][str(call.body["version"])]
        version["status"] = "READY"
        return 200, {"model_version": version}

    def _get_model_version(self, call: Call) -> Response:
        model = self.state.models[call.query["name"][0]]
        return 200, {"model_version": model["versions"][call.query["version"][0]]}

    def _set_alias(self, call: Call) -> Response:
        self.state.models[call.body["name"]]["aliases"][call.body["alias"]] = str(call.body["version"])
        return 200, {}

    def _get_by_alias(self, call: Call) -> Response:
        model = self.state.models.get(call.query["name"][0])
        alias = call.query["alias"][0]
        if model is None or alias not in model["aliases"]:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"alias {alias} not found"}
        version = model["versions"][model["aliases"][alias]]
        return 200, {"model_version": {**version, "aliases": [alias]}}

    # ---- Files API --------------------------------------------------------------------------------------------

    def _put_file(self, call: Call, path: str) -> Response:
        self.state.files[unquote(path)] = call.body
        return 204, None

    def _get_file(self, call: Call, path: str) -> Response:
        data = self.state.files.get(unquote(path))
        if data is None:
            return 404, {"error_code": "NOT_FOUND", "message": f"{path}"}
        return 200, data

    def _no_presigned_urls(self, call: Call) -> Response:
        """Like a workspace without presigned URLs: the SDK then downloads through the Files API itself."""
        return 403, {"error_code": "PERMISSION_DENIED", "message": "presigned URLs are not enabled (fake workspace)"}

    def _head_file(self, call: Call, path: str) -> Response:
        return (200, b"") if unquote(path) in self.state.files else (404, None)

    def _head_directory(self, call: Call, path: str) -> Response:
        prefix = unquote(path).rstrip("/") + "/"
        return (200, None) if any(f.startswith(prefix) for f in self.state.files) else (404, None)

    def _list_directory(self, call: Call, path: str) -> Response:
        prefix = unquote(path).rstrip("/") + "/"
        entries: dict[str, dict[str, Any]] = {}
        for name, data in self.state.files.items():
            if name.startswith(prefix):
                first, _, rest = name[len(prefix) :].partition("/")
                entry = {"path": prefix + first, "name": first, "is_directory": bool(rest)}
                entries[first] = entry if rest else {**entry, "file_size": len(data)}
        if not entries:
            return 404, {"error_code": "NOT_FOUND", "message": f"{path}"}
        return 200, {"contents": list(entries.values())}

    # ---- SQL Statement Execution ----------------------------------------------------------------------------

    def _execute_statement(self, call: Call) -> Response:
        statement = call.body["statement"]
        self.state.statements.append(statement)
        result: dict[str, Any] = {}
        if statement.startswith("MERGE INTO"):
            staged = re.search(r"read_files\('([^']+)'", statement).group(1)
            rows = [json.loads(line) for line in self.state.files[staged].decode().splitlines() if line]
            new = {r["event_id"] for r in rows} - self.state.audit_ids
            self.state.audit_ids |= new
            result = {
                "manifest": {"schema": {"columns": [{"name": "num_affected_rows"}, {"name": "num_inserted_rows"}]}},
                "result": {"data_array": [[str(len(new)), str(len(new))]]},
            }
        return 200, {"statement_id": uuid.uuid4().hex, "status": {"state": "SUCCEEDED"}, **result}


def _fold(path: str) -> str:
    path = re.sub(r"/(fs/files|fs/directories)/.*", r"/\1/…", path)
    return re.sub(r"/m-[0-9a-f]{32}", "/{model_id}", path)


def _handler_for(fake: FakeDatabricks) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a stuck client cannot hold the server

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _serve(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.send_error(413)
                return
            raw = self.rfile.read(length) if length else b""
            is_file = url.path.startswith("/api/2.0/fs/files")
            body = raw if is_file else (json.loads(raw) if raw else {})
            call = Call(self.command, url.path, parse_qs(url.query), body, self.headers.get("Authorization"))
            status, payload = fake.dispatch(call)
            data = payload if isinstance(payload, bytes) else (b"" if payload is None else json.dumps(payload).encode())
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes) else
                             "application/json")  # fmt: skip
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Databricks-Org-Id", "1234567890")  # the workspace id, as Databricks answers
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    return Handler

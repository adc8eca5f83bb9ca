"""The ``fitfed`` command: prepare and check site data, export and run jobs, show results."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from fitfed import __version__
from fitfed.spec import SpecError, load_spec
from fitfed.validation import SiteDataError

EXAMPLES = """\
examples:
  fitfed demo                                   synthesise 3 clubs and run the FedAvg churn job
  fitfed data synth --clubs 3 --out data/clubs  write SYNTHETIC club CSVs for the churn task
  fitfed data heart --out data/heart            write the real UCI four-hospital CSVs
  fitfed data check --spec churn data/clubs/club_01.csv
  fitfed jobs export                            regenerate the job folders in jobs/
  fitfed run fedavg_churn --data data/clubs     run a job in NVFlare's simulator, one site per CSV
  fitfed report workspace/fedavg_churn          show a finished run's per-round table
  fitfed export workspace/fedavg_churn          export a job to MLflow and the audit table (local lakehouse)
  fitfed he decrypt DOWNLOAD --kit club_01      decrypt an HE job's final model with a club's key
  fitfed resume JOB_ID --kit ~/lead@fed.example --job jobs/fedavg_churn
                                                continue a job whose server crashed, from its last round
  fitfed bench heart_disease                    run a benchmark; results in benchmarks/results/ (`fitfed bench`
                                                lists them)
"""


class UserError(Exception):
    """A mistake the user can fix; printed as one line, without a traceback."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fitfed`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except (UserError, SpecError, SiteDataError, FileNotFoundError, FileExistsError) as e:
        print(f"fitfed: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(
            "\nfitfed: interrupted; partial results, if any, are left where they were being written.", file=sys.stderr
        )
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fitfed",
        description="Federated learning for health organisations on NVIDIA FLARE: each site keeps its data, "
        "only model updates move.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fitfed {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_data_commands(commands)
    _add_job_commands(commands)
    _add_federation_commands(commands)
    _add_export_commands(commands)
    _add_bench_command(commands)
    return parser


def _add_bench_command(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="run a named benchmark from a source checkout (results in benchmarks/results/)",
        description="Runs benchmarks/NAME.py from the fitfed checkout this command is installed from, which writes "
        "benchmarks/results/NAME.json and NAME.md. Without NAME, lists the benchmarks; NAME --help shows its options.",
        add_help=False,
    )
    bench.add_argument("args", nargs=argparse.REMAINDER, help="NAME and its options")
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    import subprocess

    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "benchmarks" / "__main__.py").is_file():
        raise UserError(
            "fitfed bench runs from a source checkout: benchmarks/ is not installed with the package. "
            "Clone the repository and run `make bench` there."
        )
    return subprocess.run([sys.executable, "-m", "benchmarks", *args.args], cwd=checkout, check=False).returncode


def _add_export_commands(commands: argparse._SubParsersAction) -> None:
    """``fitfed export``: the databricks_bridge package's command (its imports load only when it runs)."""
    from databricks_bridge.cli import add_export_parser

    add_export_parser(commands)


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="prepare and check site data").add_subparsers(metavar="ACTION")
    synth = data.add_parser("synth", help="write SYNTHETIC club CSVs for the churn task (seeded, non-IID clubs)")
    synth.add_argument("--clubs", type=int, default=3, help="number of clubs (default 3)")
    synth.add_argument("--out", type=Path, required=True, help="folder for <club>.csv files and a README")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    synth.add_argument("--overwrite", action="store_true", help="replace existing club files")
    synth.set_defaults(handler=_data_synth)
    heart = data.add_parser("heart", help="write the real UCI Heart Disease data as one CSV per hospital")
    heart.add_argument("--out", type=Path, required=True, help="folder for <hospital>.csv files")
    heart.set_defaults(handler=_data_heart)
    check = data.add_parser(
        "check",
        help="validate site CSVs against a task spec before joining",
        description="Checks each file the way the training script will: columns, types, ranges, missing values, "
        "labels, ids and row counts. Prints counts only, never member values. Exit status 1 if any file fails.",
    )
    check.add_argument("--spec", required=True, help="built-in task (churn, heart_disease) or a spec YAML file")
    check.add_argument("csv", type=Path, nargs="+", help="site CSV file(s)")
    check.set_defaults(handler=_data_check)


def _add_job_commands(commands: argparse._SubParsersAction) -> None:
    jobs = commands.add_parser("jobs", help="list and export the job definitions in jobs/").add_subparsers(
        metavar="ACTION"
    )
    listing = jobs.add_parser("list", help="list job definitions")
    listing.add_argument("--jobs-dir", type=Path, default=Path("jobs"))
    listing.set_defaults(handler=_jobs_list)
    export = jobs.add_parser("export", help="regenerate jobs/<name>/ folders for `nvflare job submit -j`")
    export.add_argument("--jobs-dir", type=Path, default=Path("jobs"))
    export.add_argument("--check", action="store_true", help="only report folders that differ; exit 1 if any")
    export.set_defaults(handler=_jobs_export)
    run = commands.add_parser(
        "run",
        help="run a job in NVFlare's simulator, one site per CSV",
        description="Runs JOB (a name in jobs/ or a job .py file) in NVFlare's simulator. Each CSV in --data is one "
        "site, named after the file. With --spec, the job trains on that task instead of its own.",
    )
    run.add_argument("job", help="job name (see `fitfed jobs list`) or path to a job definition .py")
    run.add_argument("--data", type=Path, required=True, help="folder of <site>.csv files")
    run.add_argument("--spec", help="task spec YAML (or built-in name) to use instead of the job's own")
    run.add_argument("--rounds", type=int, help="override the job's number of rounds")
    run.add_argument(
        "--aggregator",
        help='robust aggregator as JSON, e.g. \'{"method": "median"}\' (see docs/robust-aggregation.md)',
    )
    run.add_argument("--workspace", type=Path, default=Path("workspace"), help="simulator workspace root")
    run.add_argument("--jobs-dir", type=Path, default=Path("jobs"))
    run.set_defaults(handler=_run)
    report = commands.add_parser("report", help="show a run's per-round metrics table")
    report.add_argument("path", type=Path, help="a simulator workspace, a downloaded job, or its fitfed/ folder")
    report.set_defaults(handler=_report)
    demo = commands.add_parser("demo", help="synthesise 3 clubs and run the FedAvg churn job (5 rounds)")
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="folder for data and workspace")
    demo.add_argument("--jobs-dir", type=Path, default=Path("jobs"))
    demo.set_defaults(handler=_demo)


def _add_federation_commands(commands: argparse._SubParsersAction) -> None:
    provision = commands.add_parser("provision", help="render a federation's NVFlare project.yml from a roster")
    actions = provision.add_subparsers(metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="validate a roster and write project.yml for `nvflare provision`",
        description="Reads a short roster (federation, server host and ports, clubs with their orgs, people with "
        "FLARE roles) and writes a complete project.yml, HE contexts included. Then run: "
        "nvflare provision -p <project.yml>",
    )
    init.add_argument("--roster", type=Path, required=True, help="roster YAML (see provisioning/roster.example.yaml)")
    init.add_argument("--out", type=Path, default=Path("provisioning/project.yml"), help="where to write project.yml")
    init.set_defaults(handler=_provision_init)
    site = commands.add_parser("site", help="check a club's startup kit").add_subparsers(metavar="ACTION")
    check = site.add_parser(
        "check",
        help="is this kit ready to start? certificates, server reachable, data valid, privacy policy",
        description="Checks a club's startup kit: certificates present and unexpired, the server reachable, the "
        "data file present and valid against the task spec, and the privacy policy parseable. Exit 1 if not ready.",
    )
    check.add_argument("kit", type=Path, help="the club's startup kit folder (holds startup/ and local/)")
    check.add_argument("--spec", default="churn", help="task spec the data must meet (default: churn)")
    check.set_defaults(handler=_site_check)
    he = commands.add_parser("he", help="homomorphic encryption: decrypt an HE job's final model at a club")
    decrypt = he.add_subparsers(metavar="ACTION").add_parser(
        "decrypt",
        help="decrypt an HE job's final global model with a club's key, for the bridge to register",
        description="In an HE job the server only holds the encrypted global model. A club (every club holds "
        "the key under FLARE's HEBuilder) decrypts it with its kit's startup/client_context.tenseal and writes "
        "fitfed/decrypted_global_model.pt plus a sidecar naming the club and the ciphertext's SHA-256. "
        "Only decrypted weights are written; no member data is involved.",
    )
    decrypt.add_argument("result", type=Path, help="the job result (`nvflare job download` folder) or its fitfed/")
    decrypt.add_argument("--kit", type=Path, required=True, help="the club's startup kit (holds startup/)")
    decrypt.set_defaults(handler=_he_decrypt)
    resume = commands.add_parser(
        "resume",
        help="continue a job whose server crashed, from its last completed round (ML lead, admin API)",
        description="After a server crash and restart, submits a continuation of JOB_ID through FLARE's admin API: "
        "the job's own definition, which starts from the last round the server completed, with the same "
        "configuration and clubs, and is linked to JOB_ID in its meta and audit trail. It then waits for the "
        "continuation to finish and says how it went; a continuation that cannot resume (checkpoint missing or "
        "corrupt, configuration changed) stops at once and the reason is printed. See docs/server-crash.md.",
        epilog="exit status: 0 completed, 1 refused before submitting, 2 the server refused to resume, 3 the "
        "continuation failed later. Ctrl-C stops waiting; the continuation goes on.",
    )
    resume.add_argument("job_id", metavar="JOB_ID", help="the crashed job (`nvflare job list` shows its ID)")
    resume.add_argument(
        "--kit", type=Path, required=True, help="your admin startup kit (the folder holding startup/fed_admin.json)"
    )
    resume.add_argument(
        "--job",
        type=Path,
        help="the job folder that was submitted (e.g. jobs/fedavg_churn); needed while FLARE lists the crashed job "
        "as RUNNING, which it does after a server restart. Otherwise the definition is downloaded from the server",
    )
    resume.add_argument("--no-wait", action="store_true", help="submit the continuation and return")
    resume.set_defaults(handler=_resume)


def _he_decrypt(args: argparse.Namespace) -> int:
    from fitfed.privacy.he import CLIENT_CONTEXT_FILE, decrypt_global_model, load_context
    from fitfed.report import find_record_dir
    from fitfed.server.run_record import FINAL_MODEL

    record = find_record_dir(args.result)
    ciphertext, sidecar = record / f"{FINAL_MODEL}.pt", record / f"{FINAL_MODEL}.json"
    if not ciphertext.is_file() or not sidecar.is_file():
        raise UserError(f"{record}: no final model ({ciphertext.name} and {sidecar.name}); did the job finish?")
    context = load_context(args.kit / "startup" / CLIENT_CONTEXT_FILE)
    try:
        written = decrypt_global_model(ciphertext, sidecar, context, club=args.kit.resolve().name)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"decrypted {ciphertext} with {args.kit.name}'s key: wrote {written.weights} and {written.sidecar.name}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    import json

    from nvflare.fuel.flare_api.flare_api import new_secure_session

    from fitfed.continuation import ResumeRefused, resume

    admin = args.kit / "startup" / "fed_admin.json"
    if not admin.is_file():
        raise UserError(f"{admin}: not found; --kit takes your admin startup kit (the folder holding startup/)")
    user = json.loads(admin.read_text())["admin"]["username"]
    try:
        session = new_secure_session(user, str(args.kit), timeout=30)
    except Exception as e:  # noqa: BLE001 - FLARE raises several types when it cannot log in
        raise UserError(f"cannot reach the federation's server with the kit {args.kit}: {e}") from None
    try:
        outcome = resume(session, args.job_id, definition=args.job, wait=not args.no_wait)
    except ResumeRefused as e:
        raise UserError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - FLARE's admin API errors (server gone, command refused) are plain Exceptions
        raise UserError(f"FLARE's admin API failed: {type(e).__name__}: {e}") from None
    finally:
        session.close()
    if args.no_wait:
        return 0
    if outcome.refusal:
        print(f"fitfed: the server refused to resume: {outcome.refusal}", file=sys.stderr)
        return 2
    rounds = f"rounds {outcome.rounds[0]}..{outcome.rounds[-1]}" if outcome.rounds else "no round"
    print(f"job {outcome.job_id}: {outcome.status}; resumed at round {outcome.resumed_at}, completed {rounds}")
    return 0 if outcome.status == "FINISHED:COMPLETED" else 3


def _provision_init(args: argparse.Namespace) -> int:
    from fitfed.provision import RosterError, load_roster, write_project

    try:
        roster = load_roster(args.roster)
    except RosterError as e:
        raise UserError(str(e)) from None
    out = write_project(roster, args.out)
    print(
        f"wrote {out} for {len(roster.clubs)} club(s) and {len(roster.people)} people; next: nvflare provision -p {out}"
    )
    return 0


def _site_check(args: argparse.Namespace) -> int:
    from fitfed.site_check import check_kit

    results = check_kit(args.kit, load_spec(args.spec))
    for result in results:
        print(f"{'OK  ' if result.ok else 'FAIL'} {result.name}: {result.detail}")
    failed = [r for r in results if not r.ok]
    print(f"{args.kit}: {'ready to start' if not failed else f'not ready ({len(failed)} problem(s))'}")
    return 1 if failed else 0


def _data_synth(args: argparse.Namespace) -> int:
    from fitfed.datasets.churn import write_clubs

    try:
        paths = write_clubs(args.out, args.clubs, args.seed, overwrite=args.overwrite)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"wrote {len(paths)} SYNTHETIC club file(s) to {args.out}/ (seed {args.seed}); see {args.out}/README.md")
    return 0


def _data_heart(args: argparse.Namespace) -> int:
    from fitfed.datasets.heart_disease import write_sites

    paths = write_sites(args.out)
    print(f"wrote {len(paths)} hospital file(s) to {args.out}/ (UCI Heart Disease, CC BY 4.0; see README.md there)")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from fitfed.preprocessing import split_rows
    from fitfed.validation import read_site_csv

    spec = load_spec(args.spec)
    failed = 0
    for path in args.csv:
        try:
            table = read_site_csv(path, spec)
        except SiteDataError as e:
            failed += 1
            print(f"FAIL {e}")
            continue
        train, test = split_rows(table.frame, spec)
        dropped = f", {table.rows_dropped} dropped for missing values" if table.rows_dropped else ""
        print(f"OK   {path}: {len(table.frame)} usable row(s){dropped}; {len(train)} train / {len(test)} test")
    if failed:
        print(f"{failed} of {len(args.csv)} file(s) failed the '{spec.name}' spec; fix them before joining.")
    return 1 if failed else 0


def _jobs_list(args: argparse.Namespace) -> int:
    for path in _job_files(args.jobs_dir):
        module = _load_job(path)
        settings = module.SETTINGS
        summary = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
        print(f"{settings.name:24} {settings.train.algorithm:9} {settings.train.task.name:14} {summary}")
    return 0


def _jobs_export(args: argparse.Namespace) -> int:
    from fitfed.jobs import build_recipe, compare_export, export_into

    drifted = []
    for path in _job_files(args.jobs_dir):
        module = _load_job(path)
        if args.check:
            differences = compare_export(build_recipe(module), args.jobs_dir)
            if differences:
                drifted.append(module.SETTINGS.name)
                print(f"DRIFT {module.SETTINGS.name}: " + "; ".join(differences))
            else:
                print(f"ok    {module.SETTINGS.name}")
        else:
            print(f"exported {export_into(build_recipe(module), args.jobs_dir)}")
    if drifted:
        print(f"{len(drifted)} job folder(s) differ from their definitions: run `fitfed jobs export`.")
    return 1 if drifted else 0


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from fitfed.jobs import build_recipe, simulate

    job_path = Path(args.job) if args.job.endswith(".py") else args.jobs_dir / f"{args.job}.py"
    module = _load_job(job_path)
    settings = module.SETTINGS
    train_updates = {"task": load_spec(args.spec)} if args.spec else {}
    updates: dict[str, object] = {"train": settings.train.model_copy(update=train_updates)}
    if args.rounds:
        updates["num_rounds"] = args.rounds
    if getattr(args, "aggregator", None):
        updates["aggregator"] = _json_option("--aggregator", args.aggregator)
    try:
        settings = settings.model_validate({**settings.model_dump(), **updates})
    except ValidationError as e:  # each message names the field and the fix
        raise UserError(
            f"job {settings.name!r} with these options: " + "; ".join(x["msg"] for x in e.errors())
        ) from None
    if settings.he:
        raise UserError(
            f"job {settings.name!r} uses homomorphic encryption, which FLARE runs only on HE-provisioned kits, "
            f"not in the simulator: submit jobs/{settings.name}/ with `nvflare job submit` (docs/ml-lead.md)"
        )
    if settings.secure_aggregation is not None:
        raise UserError(
            f"job {settings.name!r} uses secure aggregation, whose clubs sign their keys with the identities in "
            f"provisioned kits, which the simulator does not have: submit jobs/{settings.name}/ with "
            "`nvflare job submit` (docs/secure-aggregation.md)"
        )
    sites = _sites_in(args.data)
    if len(sites) < settings.min_clients:
        raise UserError(
            f"{args.data} has {len(sites)} site CSV(s) but job {settings.name!r} needs min_clients="
            f"{settings.min_clients}; add sites or lower min_clients in {job_path}"
        )
    print(f"running {settings.name} ({settings.train.algorithm}, {settings.num_rounds} rounds) on {len(sites)} "
          f"site(s): {', '.join(sites)}")  # fmt: skip
    workspace = args.workspace.resolve() / settings.name  # resolved: the simulator changes directory
    with _progress(workspace, settings.num_rounds):
        result = simulate(build_recipe(module, settings), data_dir=args.data, sites=sites, workspace=args.workspace)
    return _report(argparse.Namespace(path=result))


def _json_option(name: str, value: str) -> object:
    import json

    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise UserError(f'{name}={value!r} is not JSON ({e.msg}); e.g. {name} \'{{"method": "median"}}\'') from None


def _report(args: argparse.Namespace) -> int:
    from fitfed.report import format_table, load_report

    report = load_report(args.path)
    print("\nGlobal model on each site's held-out split (round r = after r rounds; AUC = ROC AUC)")
    print(format_table(report))
    for round_number, sites in sorted(report.failures.items()):
        print(f"round {round_number}: no result from {', '.join(sites)} (see that site's log for the reason)")
    _print_aggregation(report)
    if report.aborted:
        print(f"stopped: {report.aborted}")
    if report.final_model.is_file():
        print(f"\nglobal model: {report.final_model}\nsidecar:      {report.final_model.with_suffix('.json')}")
    elif report.finished:
        print("\nno global model was written; see the server log")
    return 0 if report.final_model.is_file() else 1


def _print_aggregation(report) -> None:  # noqa: ANN001 - a fitfed.report.RunReport
    """Name every club a robust aggregator rejected, clipped or found an outlier; flag those it did in most rounds."""
    from fitfed.report import aggregation_records

    if not report.aggregation:
        return
    records = [r for r in aggregation_records(report) if r.suspect or r.clipped]
    flagged = [r.club for r in records if r.flagged]
    print(f"\naggregation: {report.aggregation[-1]['method']}; flagged (suspect in most rounds): {flagged or 'none'}")
    for record in records:
        print(f"  {'FLAGGED ' if record.flagged else ''}{record.describe()}")


def _demo(args: argparse.Namespace) -> int:
    from fitfed.datasets.churn import write_clubs

    data = args.out / "data"
    write_clubs(data, 3, 0, overwrite=True)
    print(f"synthesised 3 clubs (SYNTHETIC members, seed 0) in {data}/")
    status = _run(argparse.Namespace(job="fedavg_churn", data=data, spec=None, rounds=None,
                                     workspace=args.out / "workspace", jobs_dir=args.jobs_dir))  # fmt: skip
    if status != 0:
        return status
    from databricks_bridge.cli import export_after_demo

    return export_after_demo(args.out / "workspace" / "fedavg_churn", args.out / "lakehouse")


def _job_files(jobs_dir: Path) -> list[Path]:
    files = sorted(p for p in jobs_dir.glob("*.py") if not p.name.startswith("_"))
    if not files:
        raise UserError(f"no job definitions (*.py) in {jobs_dir}/: run fitfed from the fitfed repository root")
    return files


def _load_job(path: Path):  # noqa: ANN202 - a job module
    from fitfed.jobs import load_job_module

    if not path.is_file():
        raise UserError(f"{path}: no such job definition; `fitfed jobs list` shows the jobs")
    return load_job_module(path)


def _sites_in(data_dir: Path) -> list[str]:
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: not a folder; --data takes a folder of <site>.csv files")
    sites = sorted(p.stem for p in data_dir.glob("*.csv"))
    if not sites:
        raise UserError(f"{data_dir}: no .csv files; each site's data is <site>.csv in this folder")
    return sites


class _progress:
    """Print one line per completed round while the simulator runs (its own logs go to the workspace)."""

    def __init__(self, workspace: Path, num_rounds: int):
        self.workspace, self.num_rounds = workspace, num_rounds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _watch(self) -> None:
        from fitfed.report import load_report

        shown = 0
        while not self._stop.wait(1.0):
            try:
                report = load_report(self.workspace)
            except (FileNotFoundError, ValueError):
                continue
            for r in range(shown, report.completed_rounds):
                contributed = len(report.rounds.get(r, {}))
                print(
                    f"  round {r + 1}/{self.num_rounds} done ({contributed} of {len(report.sites)} sites)", flush=True
                )
            shown = max(shown, report.completed_rounds)

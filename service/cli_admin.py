"""The admin operations on the command line: the same as the ``/admin`` routes, on a registry.

``fraudscore recalibrate``, ``fraudscore models promote|rollback`` and ``fraudscore jobs
list|show|cancel`` work on the registry directly (a directory or ``s3://``), so they need no
running service; replicas pick the changes up at their next poll. Each action is logged as
an audit line on stderr with the operating-system user as ``who``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.cli_arguments import fraction, non_negative
from training.errors import FraudscoreError
from training.jobs import JobRecord, JobStore
from training.json_logs import JsonFormatter
from training.recalibration import policy_in_force, recalibrate
from training.registry import ActivePointer, open_registry
from training.thresholds import PolicyKind

audit_log = logging.getLogger("fraudscore.audit")
# How long ``jobs cancel`` waits for the job's runner to confirm.
CANCEL_WAIT_S = 10.0

RegistryArgument = Callable[[argparse.ArgumentParser], None]


def add_model_commands(models: Any, registry_arg: RegistryArgument) -> None:
    """``models promote`` and ``models rollback`` under the ``models`` command."""
    p = models.add_parser("promote", help="make a registered model version the active one")
    p.add_argument("model_version", help="the version to serve")
    p.add_argument(
        "--thresholds-version", type=int, help="thresholds version (default: the model's latest)"
    )
    registry_arg(p)
    p = models.add_parser("rollback", help="go back to the previously active model and thresholds")
    registry_arg(p)


def add_commands(
    sub: Any, parser_class: type[argparse.ArgumentParser], registry_arg: RegistryArgument
) -> None:
    """The ``recalibrate`` and ``jobs`` commands."""
    p = sub.add_parser(
        "recalibrate",
        help="new thresholds for the active model (from its stored calibration sample or a file)",
    )
    policy = p.add_mutually_exclusive_group(required=True)
    policy.add_argument("--quantile", type=fraction, help="per-cluster quantile, e.g. 0.99")
    policy.add_argument(
        "--target-alert-rate", type=fraction, help="overall share to flag, e.g. 0.01"
    )
    p.add_argument(
        "--outlying-weight",
        type=non_negative,
        help="how much more strictly clusters far out on the edge of the data are judged "
        "(default: the active thresholds' own)",
    )
    p.add_argument("--data", type=Path, help="CSV file to calibrate on (default: stored sample)")
    p.add_argument("--label-column", help="0/1 label column of --data, for precision and recall")
    p.add_argument("--dry-run", action="store_true", help="report only; write nothing")
    registry_arg(p)

    p = sub.add_parser("jobs", help="admin jobs (retrains) recorded in the registry")
    jobs = p.add_subparsers(dest="jobs_command", required=True, parser_class=parser_class)
    lp = jobs.add_parser("list", help="every job, newest first")
    lp.add_argument("--json", action="store_true", help="print JSON")
    registry_arg(lp)
    sp = jobs.add_parser("show", help="one job as JSON")
    sp.add_argument("job_id")
    registry_arg(sp)
    cp = jobs.add_parser("cancel", help="ask a running job to stop")
    cp.add_argument("job_id")
    registry_arg(cp)


def dispatch(args: argparse.Namespace) -> int | None:
    """Run an admin command; None when ``args`` is another command."""
    if args.command == "recalibrate":
        return _recalibrate(args)
    if args.command == "models" and args.models_command in ("promote", "rollback"):
        return _promote(args) if args.models_command == "promote" else _rollback(args)
    if args.command == "jobs":
        return _jobs(args)
    return None


def _recalibrate(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry)
    current = policy_in_force(registry)
    if current is None:
        raise FraudscoreError(f"no active model in {args.registry} to recalibrate")
    kind: PolicyKind = "quantile" if args.quantile is not None else "target_alert_rate"
    value = args.quantile if args.quantile is not None else args.target_alert_rate
    policy = current.adjusted(kind, value, outlying_weight=args.outlying_weight)
    outcome = recalibrate(
        registry,
        policy,
        data=args.data,
        label_column=args.label_column,
        dry_run=args.dry_run,
        by=_who(),
    )
    _audit("recalibrate", {"dry_run": args.dry_run, "policy": policy.to_dict()})
    print(json.dumps(outcome.report, indent=2))
    return 0


def _promote(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry)
    previous = registry.active()
    version = args.thresholds_version
    if version is None:
        versions = registry.list_thresholds(args.model_version)
        if not versions:
            raise FraudscoreError(f"model {args.model_version} has no thresholds versions")
        version = versions[-1]
    pointer = registry.activate(args.model_version, version, action="promote", by=_who())
    _audit("promote", {"model_version": args.model_version, "thresholds_version": version})
    print(json.dumps({"previous": _pointer(previous), "active": _pointer(pointer)}, indent=2))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry)
    previous, pointer = registry.rollback(by=_who())
    _audit("rollback", {"to": pointer.to_dict()})
    print(json.dumps({"previous": _pointer(previous), "active": _pointer(pointer)}, indent=2))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry)
    store = JobStore(registry.storage, location=registry.location)
    if args.jobs_command == "list":
        records = list(reversed(store.list()))
        if args.json:
            print(json.dumps([r.to_dict() for r in records], indent=2))
        else:
            for record in records:
                print(_line(record))
            if not records:
                print("no jobs")
        return 0
    record = store.load(args.job_id)
    if args.jobs_command == "cancel":
        if record.finished:
            raise FraudscoreError(f"job {record.job_id} already ended: {record.state}")
        store.request_cancel(record.job_id, by=_who())
        _audit("cancel", {"job_id": record.job_id})
        deadline = time.monotonic() + CANCEL_WAIT_S
        while not record.finished and time.monotonic() < deadline:
            time.sleep(0.2)
            record = store.load(record.job_id)
        if not record.finished:
            print(
                f"fraudscore: cancel of {record.job_id} asked; its runner has not confirmed yet",
                file=sys.stderr,
            )
    print(json.dumps(record.to_dict(), indent=2))
    return 0


def _line(record: JobRecord) -> str:
    progress = record.progress
    trials = (
        f" {progress['trials_done']}/{progress['trials_total']} trials"
        if "trials_done" in progress
        else ""
    )
    outcome = ""
    if record.result and "model_version" in record.result:
        promoted = "promoted" if record.result.get("promoted") else "not promoted"
        outcome = f" -> {record.result['model_version']} ({promoted})"
    elif record.error:
        outcome = f" -> {record.error}"
    return f"{record.job_id}  {record.kind}  {record.state:<9}  {record.step}{trials}{outcome}"


def _pointer(pointer: ActivePointer | None) -> dict[str, Any] | None:
    return None if pointer is None else pointer.to_dict()


def _who() -> str:
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


def _audit(action: str, details: dict[str, Any]) -> None:
    """One JSON audit line on stderr (stdout carries the command's JSON answer)."""
    if not audit_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        audit_log.addHandler(handler)
        audit_log.setLevel(logging.INFO)
        audit_log.propagate = False
    audit_log.info("admin action", extra={"who": _who(), "action": action, **details})

"""The ``fraudscore`` command line: demo data, training, file scoring, models, the service.

Every command has ``--help``; bad input ends with one line on stderr and a non-zero exit
(2 for usage errors, 1 for errors in data, models or registries).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from service import cli_admin, serve
from service.cli_arguments import fraction, non_negative, positive_int
from service.file_scoring import score_file
from service.models import load_active
from service.settings import Settings
from training.demo import DEMO_FEATURES, LABEL_COLUMN, DemoConfig, generate, write_csv
from training.errors import FraudscoreError
from training.kmeans import CONTAINER_DATE_FORMAT, CONTAINER_LOG_FORMAT
from training.pipeline import (
    SageMakerTarget,
    TrainOutcome,
    TrainRequest,
    sagemaker_plan,
    train,
)
from training.registry import Registry, open_registry
from training.sagemaker_requests import (
    DEFAULT_PREFIX,
    SETTINGS,
    TAGS_VARIABLE,
    MissingSettingError,
    SageMakerConfig,
    config_from_settings,
)
from training.thresholds import ThresholdPolicy

DEFAULT_REGISTRY = "var/registry"
EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _registry_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        default=os.environ.get("FRAUDSCORE_REGISTRY", DEFAULT_REGISTRY),
        help="registry directory (default: $FRAUDSCORE_REGISTRY or %(default)s)",
    )


# The AWS settings' flags, by config field (also their argparse dest), with their help.
_AWS_FLAGS = {
    "region": ("--region", "REGION", "AWS region of the bucket, jobs and endpoint"),
    "bucket": ("--bucket", "BUCKET", "S3 bucket for training data and model artifacts"),
    "prefix": ("--prefix", "PREFIX", "key prefix in the bucket"),
    "role_arn": ("--role-arn", "ARN", "execution role SageMaker runs jobs and endpoints as"),
    "kms_key_id": ("--kms-key-id", "KEY", "KMS key of S3 objects, volumes and endpoints"),
}


def _aws_arguments(parser: argparse.ArgumentParser, *, tag: bool, note: str = "") -> None:
    """The AWS settings' flags, each documented with the variable it overrides."""
    group = parser.add_argument_group(
        "AWS settings", f"{note}each flag overrides its FRAUDSCORE_* environment variable"
    )
    for setting in SETTINGS:
        flag, metavar, what = _AWS_FLAGS[setting.field]
        default = f"${setting.variable}" + (f" or {DEFAULT_PREFIX}" if flag == "--prefix" else "")
        group.add_argument(flag, metavar=metavar, help=f"{what} (default: {default})")
    if tag:
        group.add_argument(
            "--tag",
            type=_key_value,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"tag on every AWS resource created, repeatable; merged over ${TAGS_VARIABLE} "
            "(a JSON object)",
        )


def build_parser() -> argparse.ArgumentParser:
    """The full command-line grammar."""
    parser = _Parser(prog="fraudscore", description=__doc__.split("\n")[0])
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log training in the SageMaker format"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo-data", help="write synthetic card transactions with labels")
    p.add_argument("--rows", type=positive_int, default=50_000, help="rows (default %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="CSV file to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument(
        "--anomaly-share",
        type=fraction,
        default=0.02,
        help="share of labelled anomalies (default %(default)s)",
    )

    p = sub.add_parser("train", help="train, calibrate, register and activate a model")
    p.add_argument("--data", type=Path, required=True, help="training CSV with a header row")
    p.add_argument("--label-column", help="0/1 label column: excluded from features, reported on")
    p.add_argument("--features", type=Path, help="feature spec JSON (default: inferred)")
    p.add_argument("--k", type=positive_int, default=10, help="clusters (default %(default)s)")
    p.add_argument(
        "--hyperparameter",
        type=_key_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="SageMaker kmeans hyperparameter, repeatable (e.g. mini_batch_size=5000)",
    )
    p.add_argument("--tune", action="store_true", help="Bayesian search minimising test:msd")
    p.add_argument("--max-jobs", type=positive_int, default=10, help="tuning trials")
    p.add_argument("--max-parallel", type=positive_int, default=2, help="trials at once")
    p.add_argument("--strategy", choices=("Bayesian", "Random"), default="Bayesian")
    policy = p.add_mutually_exclusive_group()
    policy.add_argument(
        "--target-alert-rate",
        type=fraction,
        help="overall share of transactions to flag, spread over clusters by width, size "
        "and how far out they lie (the default policy, 0.01)",
    )
    policy.add_argument(
        "--quantile",
        type=fraction,
        help="instead: each cluster's threshold is this quantile of its own distances (e.g. 0.99)",
    )
    p.add_argument(
        "--rare-share",
        type=float,
        default=ThresholdPolicy().rare_share,
        help="clusters below this training share are rare patterns (default %(default)s)",
    )
    p.add_argument(
        "--outlying-weight",
        type=non_negative,
        default=ThresholdPolicy().outlying_weight,
        help="with --target-alert-rate: how much more strictly clusters far out on the edge of "
        "the data are judged; 0 judges every cluster by its width and size alone "
        "(default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument(
        "--tag",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="tag of the model version, repeatable; with --mode sagemaker also on every AWS "
        "resource created, merged over $FRAUDSCORE_TAGS (a JSON object)",
    )
    p.add_argument("--no-activate", action="store_true", help="register without activating")
    p.add_argument(
        "--mode",
        choices=("local", "sagemaker"),
        default="local",
        help="tune and train in process, or as a SageMaker tuning job (AWS settings below); "
        "calibration and registration happen here either way",
    )
    p.add_argument(
        "--endpoint-name", help="with --mode sagemaker: deploy the winner to this endpoint first"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="with --mode sagemaker: print every AWS request as JSON, in order, and stop "
        "(reads the data twice, as a run does; calls nothing)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _registry_arg(p)
    _aws_arguments(p, tag=False, note="with --mode sagemaker (and --tag above); ")

    p = sub.add_parser("score-file", help="score a CSV file with the active model")
    p.add_argument("--in", dest="source", type=Path, required=True, help="CSV to score")
    p.add_argument("--out", type=Path, required=True, help="CSV to write")
    p.add_argument("--chunk-rows", type=positive_int, default=65_536, help=argparse.SUPPRESS)
    _registry_arg(p)

    p = sub.add_parser("models", help="inspect registered models")
    models = p.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    lp = models.add_parser("list", help="list model versions, newest last")
    lp.add_argument("--json", action="store_true", help="print JSON")
    _registry_arg(lp)
    cli_admin.add_model_commands(models, _registry_arg)

    p = sub.add_parser(
        "demo", help="train the demo model if none is active, then score a fresh demo file"
    )
    _registry_arg(p)

    p = sub.add_parser("serve", help="serve the HTTP API (settings: FRAUDSCORE_* variables)")
    p.add_argument("--host", help="address to listen on (default: $FRAUDSCORE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: $FRAUDSCORE_PORT or 8000)")
    p.add_argument("--workers", type=positive_int, help="worker processes (default: 1)")
    p.add_argument("--registry", help="registry (default: $FRAUDSCORE_REGISTRY or var/registry)")
    p.add_argument(
        "--demo-model",
        action="store_true",
        help="first train the demo model when a local registry has no active model",
    )

    p = sub.add_parser(
        "deploy",
        help="deploy a registered model to a SageMaker endpoint (AWS settings: flags or "
        "FRAUDSCORE_* variables)",
    )
    p.add_argument("--model-version", required=True, help="registered version to deploy")
    p.add_argument("--endpoint-name", default="fraudscore", help="endpoint (default %(default)s)")
    p.add_argument("--no-wait", action="store_true", help="return once the endpoint is updating")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print every request as JSON, in order, without calling AWS",
    )
    _registry_arg(p)
    _aws_arguments(p, tag=True)
    cli_admin.add_commands(sub, _Parser, _registry_arg)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(CONTAINER_LOG_FORMAT, CONTAINER_DATE_FORMAT))
        logging.getLogger("training").addHandler(handler)
        logging.getLogger("training").setLevel(logging.INFO)
    try:
        return _dispatch(args)
    except FraudscoreError as exc:
        print(f"fraudscore: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"fraudscore: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fraudscore: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    handled = cli_admin.dispatch(args)
    if handled is not None:
        return handled
    if args.command == "demo-data":
        config = DemoConfig(rows=args.rows, seed=args.seed, anomaly_share=args.anomaly_share)
        write_csv(generate(config), args.out)
        print(f"wrote {args.rows} transactions to {args.out} (label column '{LABEL_COLUMN}')")
        return 0
    if args.command == "train" and args.dry_run:
        if args.mode != "sagemaker":
            raise FraudscoreError("--dry-run needs --mode sagemaker")
        aws = _aws_config(args)
        request = _train_request(args, with_target=False)
        plan = sagemaker_plan(request, aws, endpoint_name=args.endpoint_name, progress=progress)
        print(json.dumps(plan, indent=2))
        return 0
    if args.command == "train":
        outcome = train(_train_request(args), open_registry(args.registry), progress=progress)
        if args.json:
            print(json.dumps(_outcome_json(outcome), indent=2))
        else:
            _print_outcome(outcome)
        return 0
    if args.command == "score-file":
        model = load_active(open_registry(args.registry), where=str(args.registry))
        summary = score_file(
            model, args.source, args.out, chunk_rows=args.chunk_rows, progress=progress
        )
        share = summary.anomalous / summary.rows if summary.rows else 0.0
        print(
            f"scored {summary.rows} rows with model {summary.model_version} "
            f"(thresholds v{summary.thresholds_version}): {summary.anomalous} anomalous "
            f"({share:.2%}) -> {summary.output}"
        )
        return 0
    if args.command == "models":
        _list_models(open_registry(args.registry), as_json=args.json)
        return 0
    if args.command == "demo":
        return _demo(args.registry, progress=progress)
    if args.command == "serve":
        return _serve(args, progress=progress)
    if args.command == "deploy":
        return _deploy(args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse enforces the choices


def _aws_config(args: argparse.Namespace) -> SageMakerConfig:
    """The AWS settings: each flag over its variable, ``--tag`` over ``FRAUDSCORE_TAGS``.

    A missing one is a usage error: one line naming its flag and variable, exit status 2.
    """
    given = {field: getattr(args, field) for field in _AWS_FLAGS}
    try:
        return config_from_settings(os.environ, given, tags=dict(args.tag))
    except MissingSettingError as exc:
        setting = exc.setting
        flag = _AWS_FLAGS[setting.field][0]
        # Exits like argparse's own usage errors, which never reach main's handlers either.
        print(
            f"fraudscore: error: missing {setting.what}: pass {flag} or set {setting.variable}",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USAGE) from None


def _sagemaker_target(args: argparse.Namespace) -> SageMakerTarget | None:
    if args.mode != "sagemaker":
        given = [_AWS_FLAGS[field][0] for field in _AWS_FLAGS if getattr(args, field) is not None]
        if args.endpoint_name or given:
            flag = "--endpoint-name" if args.endpoint_name else given[0]
            raise FraudscoreError(f"{flag} needs --mode sagemaker")
        return None
    import boto3

    config = _aws_config(args)
    return SageMakerTarget(
        sagemaker=boto3.client("sagemaker", region_name=config.region),
        s3=boto3.client("s3", region_name=config.region),
        config=config,
        endpoint_name=args.endpoint_name,
    )


def _train_request(args: argparse.Namespace, *, with_target: bool = True) -> TrainRequest:
    features: dict[str, Any] | None = None
    if args.features is not None:
        try:
            features = json.loads(args.features.read_text())
        except json.JSONDecodeError as exc:
            raise FraudscoreError(f"{args.features}: not valid JSON: {exc}") from None
    try:
        if args.quantile is not None:
            policy = ThresholdPolicy(
                kind="quantile",
                value=args.quantile,
                rare_share=args.rare_share,
                outlying_weight=args.outlying_weight,
            )
        else:
            rate = args.target_alert_rate
            policy = ThresholdPolicy(
                kind="target_alert_rate",
                value=rate if rate is not None else ThresholdPolicy().value,
                rare_share=args.rare_share,
                outlying_weight=args.outlying_weight,
            )
    except ValueError as exc:
        raise FraudscoreError(str(exc)) from None
    return TrainRequest(
        data=args.data,
        label_column=args.label_column,
        features=features,
        k=args.k,
        hyperparameters=dict(args.hyperparameter),
        tune=args.tune,
        max_jobs=args.max_jobs,
        max_parallel=args.max_parallel,
        strategy=args.strategy,
        policy=policy,
        seed=args.seed,
        tags=dict(args.tag),
        activate=not args.no_activate,
        sagemaker=_sagemaker_target(args) if with_target else None,
    )


def _outcome_json(outcome: TrainOutcome) -> dict[str, Any]:
    return {
        "manifest": outcome.manifest.to_dict(),
        "thresholds": outcome.thresholds.to_dict(),
        "skipped_columns": dict(outcome.skipped_columns),
        "activated": outcome.activated,
    }


def _print_outcome(outcome: TrainOutcome) -> None:
    m, t = outcome.manifest, outcome.thresholds
    state = "active" if outcome.activated else "registered, not active"
    print(f"model {m.model_version} ({state}, thresholds v{t.version})")
    print(
        f"rows: {outcome.train_rows} train, {outcome.test_rows} held out; "
        f"{m.feature_dim} feature columns from {len(m.feature_spec['fields'])} fields"
    )
    for column, why in outcome.skipped_columns.items():
        print(f"skipped column {column}: {why}")
    print("metrics: " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(m.metrics.items())))
    if m.source.get("kind") == "sagemaker":
        where = ", ".join(f"{key} {m.source[key]}" for key in sorted(m.source) if key != "kind")
        print(f"trained on SageMaker: {where}")
    if outcome.tuning is not None:
        best = outcome.tuning.best_training_job
        print(
            f"tuning: {len(outcome.tuning.trials)} trials, best {best['TrainingJobName']} "
            f"test:msd={best['FinalHyperParameterTuningJobObjectiveMetric']['Value']:.6g} "
            f"with {json.dumps(best['TunedHyperParameters'], sort_keys=True)}"
        )
    print(f"{'cluster':>7} {'share':>8} {'threshold':>10} {'cal. rows':>9} {'alerts':>7}  note")
    for i in range(t.k):
        note = "rare pattern" if t.rare[i] else ("fallback threshold" if t.fallback[i] else "")
        print(
            f"{i:>7} {m.cluster_shares[i]:>8.2%} {t.values[i]:>10.4f} {t.counts[i]:>9d} "
            f"{t.alert_rates[i]:>7.2%}  {note}"
        )
    report = m.label_report
    if report:
        overall = report["overall"]
        print(
            "labels (held-out split): "
            + ", ".join(
                f"{key}={overall[key]:.4g}"
                for key in ("alert_rate", "precision", "recall", "roc_auc", "pr_auc")
                if overall.get(key) is not None
            )
        )


def _list_models(registry: Registry, *, as_json: bool) -> None:
    pointer = registry.active()
    manifests = registry.list_models()
    if as_json:
        rows = [
            {
                "model_version": m.model_version,
                "created_at": m.created_at,
                "source": m.source,
                "k": m.k,
                "feature_dim": m.feature_dim,
                "metrics": m.metrics,
                "thresholds_versions": registry.list_thresholds(m.model_version),
                "active": pointer is not None and pointer.model_version == m.model_version,
                "active_thresholds_version": (
                    pointer.thresholds_version
                    if pointer is not None and pointer.model_version == m.model_version
                    else None
                ),
            }
            for m in manifests
        ]
        print(json.dumps(rows, indent=2))
        return
    if not manifests:
        print("no models registered")
        return
    print(f"  {'version':<28} {'created':<26} {'source':<10} {'k':>3} {'test:msd':>10}  thresholds")
    for m in manifests:
        active = pointer is not None and pointer.model_version == m.model_version
        versions = registry.list_thresholds(m.model_version)
        shown = ",".join(
            f"{v}*"
            if active and pointer is not None and v == pointer.thresholds_version
            else str(v)
            for v in versions
        )
        msd = m.metrics.get("test:msd")
        print(
            f"{'*' if active else ' '} {m.model_version:<28} {m.created_at:<26} "
            f"{m.source.get('kind', '?'):<10} {m.k:>3} "
            f"{(f'{msd:.5g}' if msd is not None else '-'):>10}  {shown}"
        )


def _ensure_demo_model(registry_location: str, *, progress: bool) -> Registry:
    """The registry, after training the demo model into it if it has no active model."""
    registry = open_registry(registry_location)
    if registry.active() is None:
        train_csv = Path(registry_location).parent / "demo" / "train.csv"
        print(f"no active model in {registry_location}: training the demo model on {train_csv}")
        write_csv(generate(DemoConfig(rows=50_000, seed=0)), train_csv)
        outcome = train(
            TrainRequest(data=train_csv, label_column=LABEL_COLUMN, features=DEMO_FEATURES),
            registry,
            progress=progress,
        )
        _print_outcome(outcome)
    return registry


def _serve(args: argparse.Namespace, *, progress: bool) -> int:
    overrides = {
        name: value
        for name, value in (
            ("host", args.host),
            ("port", args.port),
            ("workers", args.workers),
            ("registry", args.registry),
        )
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise FraudscoreError(f"invalid settings: {problems}") from None
    if args.demo_model and "://" in settings.registry:
        raise FraudscoreError("--demo-model trains into a local registry only")
    open_registry(settings.registry)  # an unusable location fails here, in one line
    if args.demo_model:
        _ensure_demo_model(settings.registry, progress=progress)
    url = f"http://{settings.host}:{settings.port}"
    print(f"fraudscore: serving {settings.registry} on {url} (API docs: {url}/docs)", flush=True)
    serve.run(settings)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from training.sagemaker_deploy import deploy_version, deployment_plan

    config = _aws_config(args)
    data = open_registry(args.registry).load_artifact(args.model_version)
    when = datetime.now(UTC)
    if args.dry_run:
        plan = deployment_plan(
            config, args.model_version, data, endpoint_name=args.endpoint_name, when=when
        )
        print(json.dumps(plan, indent=2))
        return 0
    import boto3

    deployment = deploy_version(
        boto3.client("s3", region_name=config.region),
        boto3.client("sagemaker", region_name=config.region),
        config,
        args.model_version,
        data,
        endpoint_name=args.endpoint_name,
        when=when,
        wait=not args.no_wait,
        progress=lambda message: print(message, file=sys.stderr),
    )
    state = "updated" if deployment.updated else "created"
    print(
        f"endpoint {deployment.endpoint_name} {state}: model {deployment.model_name}, "
        f"config {deployment.endpoint_config_name}"
    )
    return 0


def _demo(registry_location: str, *, progress: bool) -> int:
    registry = _ensure_demo_model(registry_location, progress=progress)
    workdir = Path(registry_location).parent / "demo"
    source = workdir / "transactions.csv"
    scored = workdir / "scored.csv"
    write_csv(generate(DemoConfig(rows=10_000, seed=1)), source)
    model = load_active(registry, where=registry_location)
    summary = score_file(model, source, scored, progress=progress)
    print(
        f"scored {summary.rows} new transactions with model {summary.model_version} "
        f"(thresholds v{summary.thresholds_version}): {summary.anomalous} flagged -> {scored}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

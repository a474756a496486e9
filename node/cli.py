"""`triage-node` command line: thin wrappers; the work lives in the modules they call."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from node import __version__, oplog
from node.config import ConfigError, Settings, load_settings

DEFAULT_CONFIG = "config/node.toml"


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config))


def cmd_serve(args: argparse.Namespace) -> int:
    from node import oplog
    from node.service import Node

    settings = _settings(args)
    oplog.configure(settings.node.log_level)
    Node(settings).serve_forever()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from node.db.engine import Database
    from node.status import node_status

    settings = _settings(args)
    db = Database(settings.database.url)
    status = node_status(db)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(
            f"studies    {status['studies']} ({status['studies_receiving']} receiving, "
            f"{status['studies_stable']} stable)"
        )
        print(f"series     {status['series']}")
        print(f"instances  {status['instances']} ({status['bytes'] / 1e6:.1f} MB)")
        print("jobs       " + ", ".join(f"{k} {v}" for k, v in status["jobs"].items()))
    return 0


def cmd_worklist(args: argparse.Namespace) -> int:
    from node.db.engine import Database
    from node.worklist.rows import worklist

    if getattr(args, "worklist_command", None) == "clear":
        return cmd_worklist_clear(args)
    items = worklist(Database(_settings(args).database.url))
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("worklist is empty")
    for item in items:
        what = "AI assessment" if item["assist"] else f"no AI assessment ({item['reason']})"
        present = [f["finding"] for f in item["findings"] if f["state"] == "present"]
        why = []
        if item["ai_raised"]:
            why.append("raised by AI" + (", kept" if item["priority_kept"] else ""))
        if item["order_priority"]:
            why.append(f"order {item['order_priority']}")
        print(
            f"{item['priority']:<6} {item['study_instance_uid']}  {what}"
            + (f"; flagged: {', '.join(present)}" if present else "")
            + (f" [{'; '.join(why)}]" if why else "")
        )
    return 0


def cmd_worklist_clear(args: argparse.Namespace) -> int:
    """A person clears an AI raise (rule 5): the row falls back to the order's priority; audited."""
    from node.audit import AuditLog, AuditObject, EventCode, Participant
    from node.db.engine import Database
    from node.worklist.rows import clear_raise

    settings = _settings(args)
    by, reason = args.by.strip(), args.reason.strip()
    if not by or not reason:
        print("triage-node: worklist clear needs a non-empty --by and --reason", file=sys.stderr)
        return 2
    db = Database(settings.database.url)
    cleared = clear_raise(db, args.study_uid, by=by, reason=reason)
    if cleared is None:
        print(f"triage-node: no worklist entry for study {args.study_uid}", file=sys.stderr)
        return 1
    # a person beside the live node: append to its log without taking ownership of it
    audit = AuditLog(
        Path(settings.audit.path), db, source_id=settings.audit.source_id, fsync=settings.audit.fsync, exclusive=False
    )
    try:
        audit.record(
            EventCode.PROCEDURE_RECORD,
            action="U",
            outcome=0,
            outcome_desc=(
                f"worklist priority raise cleared by {by}: {cleared.priority_before} -> {cleared.priority_after}"
                if cleared.changed
                else f"worklist clear by {by}: nothing to clear (priority {cleared.priority_after})"
            ),
            participants=[Participant(user_id=by, role="requestor", is_requestor=True)],
            objects=[
                AuditObject(
                    type="study",
                    id=cleared.study_instance_uid,
                    details={
                        "reason": reason,
                        "cleared_raise": cleared.raised_by_sr_uid,
                        "priority_before": cleared.priority_before,
                        "priority_after": cleared.priority_after,
                    },
                )
            ],
        )
    finally:
        audit.close()
    if cleared.changed:
        print(f"cleared: {cleared.study_instance_uid} {cleared.priority_before} -> {cleared.priority_after}")
    else:
        print(f"nothing to clear: {cleared.study_instance_uid} stays {cleared.priority_after}")
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from node.db.engine import Database
    from node.forward.outbox import list_items, requeue

    db = Database(_settings(args).database.url)
    if args.retry is not None or args.retry_all_dead:
        ids = requeue(db, None if args.retry_all_dead else [args.retry])
        if args.retry is not None and not ids:
            print(f"outbox item {args.retry} is not a dead letter", file=sys.stderr)
            return 1
        print(
            f"requeued {len(ids)} dead letter(s)" + (f": {', '.join(map(str, ids))}" if ids else ""),
            file=sys.stderr if args.json else sys.stdout,
        )
    items = list_items(db)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("outbox has no pending or dead items")
    for item in items:
        when = f" next {item['next_attempt_at']}" if item["next_attempt_at"] else ""
        print(
            f"{item['id']:>6} {item['state']:<7} {item['destination']} {item['kind']:<8} "
            f"{item['sop_instance_uid']} attempts {item['attempts']}{when}"
            + (f"  last error: {item['last_error']}" if item["last_error"] else "")
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from node.demo import run_demo

    return run_demo(keep=args.keep)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from node.audit.verify import verify_all, verify_log
    from node.db.engine import Database

    settings = _settings(args)
    db = Database(settings.database.url)
    own = Path(settings.audit.path)
    if args.this_process:
        results = [(str(own), verify_log(own, db))]
    else:
        results = verify_all(db, own, settings.audit.verify_paths)
    for label, result in results:
        line = result.message if len(results) == 1 else f"{label}: {result.message}"
        print(line, file=sys.stdout if result.ok else sys.stderr)
    if len(results) > 1:
        bad = sum(not r.ok for _, r in results)
        print(f"{len(results)} audit files checked, {bad} with a problem", file=sys.stdout if not bad else sys.stderr)
    return 0 if all(r.ok for _, r in results) else 1


def cmd_echo(args: argparse.Namespace) -> int:
    from node.dimse.scu import Destination, echo

    try:
        status = echo(Destination.parse(args.to), calling_ae=args.aet, timeout=args.timeout)
    except (ConnectionError, ValueError, OSError) as exc:
        print(f"C-ECHO {args.to} failed: {exc}", file=sys.stderr)
        return 1
    if status == 0:
        print(f"C-ECHO {args.to}: success")
        return 0
    print(f"C-ECHO {args.to}: {'no association' if status is None else f'status 0x{status:04X}'}", file=sys.stderr)
    return 1


def cmd_send(args: argparse.Namespace) -> int:
    from node.dimse.scu import Destination, expand_paths, send

    files = expand_paths(args.paths)
    if not files:
        print("no files to send", file=sys.stderr)
        return 2
    try:
        results = send(files, Destination.parse(args.to), calling_ae=args.aet, timeout=args.timeout)
    except (ConnectionError, ValueError, OSError) as exc:
        print(f"send failed: {exc}", file=sys.stderr)
        return 1
    failed = [r for r in results if r.status != 0]
    for r in failed:
        print(f"{r.path}: {'no response' if r.status is None else f'status 0x{r.status:04X}'}", file=sys.stderr)
    print(f"sent {len(results) - len(failed)}/{len(results)} instances to {args.to}")
    return 0 if not failed else 1


def cmd_embed(args: argparse.Namespace) -> int:
    from node.embeddings.backfill import BackfillError, backfill

    try:
        summary = backfill(
            _settings(args), study_uids=args.study or (), all_studies=args.all, preprocessing=args.preprocessing
        )
    except BackfillError as exc:
        print(f"triage-node embed: {exc}", file=sys.stderr)
        return 2
    print(
        f"{summary.studies} studies: {summary.embedded} images embedded now, {summary.already} already kept, "
        f"{summary.failed} could not be preprocessed, {summary.studies_without_eligible_image} studies without "
        "an image any profile accepts"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from node.evaluate.run import EvaluationError, EvaluationOptions, run_evaluation

    versions = [v.strip() for v in (args.preprocessing or "").split(",") if v.strip()]
    opts = EvaluationOptions(
        labels=Path(args.labels),
        out_dir=Path(args.out),
        profile=args.profile,
        profile_file=Path(args.profile_file) if args.profile_file else None,
        by=args.by or (),
        bootstrap=args.bootstrap,
        seed=args.seed,
        target_sensitivity=args.target_sensitivity,
        no_embed=args.no_embed,
        preprocessing=versions,
    )
    try:
        metrics = run_evaluation(_settings(args), opts)
    except EvaluationError as exc:
        print(f"triage-node evaluate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(
            f"{metrics['n_studies']} studies scored (profile {metrics['profile']}, "
            f"preprocessing {metrics['preprocessing_version']}); report: {Path(args.out) / 'report.html'}"
        )
        for key, m in metrics["findings"].items():
            ci = m["auroc_ci"]
            auroc = (
                "n/a" if m["auroc"] is None else f"{m['auroc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            )
            print(f"  {key:<28} n_pos {m['n_pos']:>5}  n_neg {m['n_neg']:>5}  AUROC {auroc}")
    return 0


def cmd_profile_tune(args: argparse.Namespace) -> int:
    from node.evaluate.tune import TuneError, tune_profile

    try:
        result = tune_profile(
            _settings(args),
            Path(args.evaluation),
            args.profile,
            Path(args.out),
            source=Path(args.profile_file) if args.profile_file else None,
            preprocessing=args.preprocessing,
            min_positives=args.min_positives,
        )
    except TuneError as exc:
        print(f"triage-node profile tune: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {result.path} (evaluation sha256 {result.evaluation_sha256}); tuned: "
        f"{', '.join(result.tuned) or 'none'}"
    )
    for key, why in result.kept:
        print(f"  WARNING {key}: old threshold and band kept: {why}", file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from node.db.engine import Database
    from node.embeddings.current import current_weights_sha256, profile_preprocessing_versions
    from node.search.run import run_search
    from node.search.service import SearchError, SearchIndexes

    settings = _settings(args)
    oplog.configure(settings.node.log_level)  # logs to stderr: stdout is the answer
    db = Database(settings.database.url)
    model = None
    try:
        if args.text is not None:
            from node.triage.model import ModelUnavailable, load_model

            try:
                model = load_model(settings.model, cache_dir=Path(settings.node.data_dir) / "cache")
            except ModelUnavailable as exc:
                print(f"triage-node search: the model is needed to embed the text: {exc}", file=sys.stderr)
                return 2
        weights = model.identity.weights_sha256 if model is not None else current_weights_sha256(settings, db)
        indexes = SearchIndexes(db, Path(settings.node.data_dir), settings.search, persist=False)
        results = run_search(
            indexes,
            weights=weights,
            preprocessings=profile_preprocessing_versions(settings),
            text=args.text,
            like=args.like,
            limit=args.limit,
            max_limit=settings.search.max_limit,
            modality=args.modality,
            model=model,
        )
    except SearchError as exc:
        print(f"triage-node search: {exc}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        if not results:
            print("no images found")
        for r in results:
            print(f"{r.score:8.4f}  {r.sop_instance_uid}  study {r.study_instance_uid}")
    return 0


def cmd_probe_train(args: argparse.Namespace) -> int:
    from node.probes.train import ProbeTrainError, TrainOptions, train_probe

    opts = TrainOptions(
        labels=Path(args.labels),
        finding=args.finding,
        out=Path(args.out) if args.out else None,
        profile=args.profile,
        c=args.C,
        folds=args.folds,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    try:
        settings = _settings(args)
        oplog.configure(settings.node.log_level)
        summary = train_probe(settings, opts)
    except ProbeTrainError as exc:
        print(f"triage-node probe train: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        lo, hi = summary["cv_auroc_ci"]
        print(
            f"{summary['finding']}: {summary['n_pos']} positive, {summary['n_neg']} negative studies; "
            f"{summary['folds']}-fold CV AUROC {summary['cv_auroc']:.3f} [{lo:.3f}, {hi:.3f}]; "
            f"wrote {summary['path']} ({summary['probe_version']})"
        )
    if summary["is_test_model"]:
        print(
            "triage-node probe train: WARNING the model is a random test model: this probe means nothing clinically",
            file=sys.stderr,
        )
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from node.db.engine import Database
    from node.drift.report import drift_report, freeze_references
    from node.embeddings.current import current_weights_sha256, profile_preprocessing_versions

    settings = _settings(args)
    oplog.configure(settings.node.log_level)  # logs to stderr: stdout is the answer
    db = Database(settings.database.url)
    try:
        weights = current_weights_sha256(settings, db)
        versions = profile_preprocessing_versions(settings)
        if getattr(args, "drift_command", None) == "freeze":
            if not weights:
                print("triage-node drift freeze: no embeddings are kept yet", file=sys.stderr)
                return 2
            frozen = freeze_references(settings, db, weights, versions, args.stream)
            if not frozen:
                print(
                    f"triage-node drift freeze: no stream {args.stream!r}"
                    if args.stream
                    else "triage-node drift freeze: no streams yet",
                    file=sys.stderr,
                )
                return 2
            for key, n in frozen:
                print(f"froze the reference of {key}: its last {n} images")
            return 0
        reports = drift_report(settings, db, weights, versions)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps({"weights_sha256": weights, "streams": [r.as_dict() for r in reports]}, indent=2))
        return 0
    if not reports:
        print("no streams yet (no image embeddings of the current model)")
    for r in reports:
        state = "ALERT" if r.alert else ("new" if r.new_stream else "ok")
        p = "" if r.p_value is None else f" p {r.p_value:.4f}"
        print(f"{state:<5} {r.key}  reference {r.n_reference} ({r.reference}), recent {r.n_recent}{p}")
        for reason in r.reasons:
            print(f"      {reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triage-node",
        description=(
            "DICOM node that keeps studies, triages them with MedSigLIP (research use only) and answers in DICOM."
        ),
    )
    parser.add_argument("--version", action="version", version=f"triage-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
        return p

    with_config(sub.add_parser("serve", help="run the node")).set_defaults(func=cmd_serve)
    p = with_config(sub.add_parser("status", help="counts of studies, series, instances and jobs"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = with_config(sub.add_parser("worklist", help="triaged studies, most urgent first; `clear` a raised flag"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_worklist)
    wl_sub = p.add_subparsers(dest="worklist_command")
    clear = wl_sub.add_parser("clear", help="a person clears the AI's raise of a study's priority (audited)")
    # SUPPRESS: `worklist --config C clear ...` and `worklist clear ... --config C` both work.
    clear.add_argument("--config", default=argparse.SUPPRESS, help=f"TOML config (default {DEFAULT_CONFIG})")
    clear.add_argument("study_uid", metavar="STUDY_UID")
    clear.add_argument("--by", required=True, metavar="NAME", help="who clears it (recorded in the audit log)")
    clear.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded in the audit log)")
    clear.set_defaults(func=cmd_worklist)
    p = with_config(sub.add_parser("outbox", help="forwarding outbox: pending and dead items; requeue dead letters"))
    p.add_argument("--json", action="store_true")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--retry", type=int, metavar="ID", help="requeue the dead letter with this id")
    group.add_argument("--retry-all-dead", action="store_true", help="requeue every dead letter")
    p.set_defaults(func=cmd_outbox)
    p = with_config(sub.add_parser("embed", help="compute the missing image embeddings of stored studies"))
    p.add_argument("--study", action="append", metavar="UID", help="a Study Instance UID (repeatable)")
    p.add_argument("--all", action="store_true", help="every study in the index")
    p.add_argument("--preprocessing", metavar="VERSION", help="a preprocessing version other than the profile's")
    p.set_defaults(func=cmd_embed)

    p = with_config(sub.add_parser("evaluate", help="how well the triage scores separate local labels"))
    p.add_argument(
        "--labels",
        required=True,
        metavar="CSV",
        help="one row per study: study_instance_uid (or accession_number) and a 1/0/empty column per finding key",
    )
    p.add_argument("--profile", help="profile name (default: the first of triage.profiles)")
    p.add_argument("--profile-file", metavar="PATH", help="evaluate a candidate profile file instead")
    p.add_argument("--out", default="evaluation", metavar="DIR", help="report.html, metrics.json, scores.csv")
    p.add_argument("--by", action="append", metavar="COLUMN", help="a labels.csv column to report subgroups of")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-sensitivity", type=float, default=0.95, help="for urgent findings (default 0.95)")
    p.add_argument("--preprocessing", metavar="A,B", help="preprocessing versions to compare")
    p.add_argument(
        "--no-embed", action="store_true", help="never run the vision model; name studies lacking embeddings instead"
    )
    p.add_argument("--json", action="store_true", help="print metrics.json to stdout")
    p.set_defaults(func=cmd_evaluate)

    prof = sub.add_parser("profile", help="triage profile tools")
    prof_sub = prof.add_subparsers(dest="profile_command", required=True)
    p = with_config(prof_sub.add_parser("tune", help="write a new profile with the evaluated operating points"))
    p.add_argument("--evaluation", required=True, metavar="METRICS_JSON")
    p.add_argument("--profile", required=True)
    p.add_argument("--profile-file", metavar="PATH", help="the profile file evaluated (default: from profiles_dir)")
    p.add_argument("--out", required=True, metavar="PATH", help="the new profile file (never the original)")
    p.add_argument("--preprocessing", metavar="VERSION", help="take the results of this preprocessing version")
    p.add_argument(
        "--min-positives",
        type=int,
        default=30,
        help="findings with fewer positives keep their old threshold (default 30)",
    )
    p.set_defaults(func=cmd_profile_tune)

    p = with_config(sub.add_parser("search", help="images most like a text or a stored image"))
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", metavar="QUERY", help='e.g. "large right pleural effusion"')
    query.add_argument("--like", metavar="SOP_UID", help="a stored image's SOP Instance UID")
    p.add_argument("--limit", type=int, default=20, help="how many images (default 20)")
    p.add_argument("--modality", metavar="CODE", help="only images of this modality, e.g. DX")
    p.add_argument(
        "--json",
        action="store_true",
        help="a JSON list of {sop_instance_uid, study_instance_uid, series_instance_uid, score}",
    )
    p.set_defaults(func=cmd_search)

    probe = sub.add_parser("probe", help="linear probes on the kept image embeddings")
    probe_sub = probe.add_subparsers(dest="probe_command", required=True)
    p = with_config(probe_sub.add_parser("train", help="train a logistic-regression probe for one finding"))
    p.add_argument("--labels", required=True, metavar="CSV", help="labels.csv as for evaluate")
    p.add_argument("--finding", required=True, metavar="KEY", help="the labels.csv column to learn")
    p.add_argument("--out", metavar="PATH", help="probe file (default ./<profile>-<finding>.probe.json)")
    p.add_argument("--profile", help="profile whose image selection and preprocessing are used (default: the first)")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 regularisation strength (default 1)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print finding, n_pos, n_neg, cv_auroc, cv_auroc_ci, path")
    p.set_defaults(func=cmd_probe_train)

    p = with_config(sub.add_parser("drift", help="drift per stream: embeddings, scores, no-assist rate, headers"))
    p.add_argument(
        "--json",
        action="store_true",
        help='{"streams": [{"key", "n_reference", "n_recent", '
        '"embedding_shift", "p_value", "score_shift", "alert", "reasons", ...}]}',
    )
    p.set_defaults(func=cmd_drift)
    drift_sub = p.add_subparsers(dest="drift_command")
    q = drift_sub.add_parser("freeze", help="make each stream's last [drift] reference_size images its reference")
    q.add_argument("--config", default=argparse.SUPPRESS, help="TOML config (as for drift)")  # either position
    q.add_argument("--stream", metavar="KEY", help="only this stream (modality|manufacturer|model|station)")
    q.set_defaults(func=cmd_drift)

    p = sub.add_parser("demo", help="the whole path on synthetic studies with a random test model")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's temp folder and its node running for the operator console (Ctrl-C stops)",
    )
    p.set_defaults(func=cmd_demo)

    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = with_config(
        audit_sub.add_parser("verify", help="check the audit hash chain of every audit file the database names")
    )
    verify.add_argument(
        "--this-process",
        action="store_true",
        help="check only this config's audit.path (not the other processes' files)",
    )
    verify.set_defaults(func=cmd_audit_verify)

    for name, func, help_text in (
        ("echo", cmd_echo, "C-ECHO a DICOM node"),
        ("send", cmd_send, "C-STORE files or folders to a DICOM node"),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "send":
            p.add_argument("paths", nargs="+")
        p.add_argument("--to", required=True, metavar="AET@HOST:PORT")
        p.add_argument("--aet", default="TRIAGE_SCU", help="our calling AE title (default TRIAGE_SCU)")
        p.add_argument("--timeout", type=float, default=30.0)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"triage-node: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `status --json | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())

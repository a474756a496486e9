"""`triage-node` command line: thin wrappers; the work lives in the modules they call."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from node import __version__
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
        print(f"studies    {status['studies']} ({status['studies_receiving']} receiving, "
              f"{status['studies_stable']} stable)")
        print(f"series     {status['series']}")
        print(f"instances  {status['instances']} ({status['bytes'] / 1e6:.1f} MB)")
        print("jobs       " + ", ".join(f"{k} {v}" for k, v in status["jobs"].items()))
    return 0


def cmd_worklist(args: argparse.Namespace) -> int:
    from node.db.engine import Database
    from node.worklist import worklist

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
        print(f"{item['priority']:<6} {item['study_instance_uid']}  {what}"
              + (f"; flagged: {', '.join(present)}" if present else "")
              + (f" [{'; '.join(why)}]" if why else ""))
    return 0


def cmd_worklist_clear(args: argparse.Namespace) -> int:
    """A person clears an AI raise (rule 5): the row falls back to the order's priority; audited."""
    from node.audit import AuditLog, AuditObject, EventCode, Participant
    from node.db.engine import Database
    from node.worklist import clear_raise

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
    audit = AuditLog(Path(settings.audit.path), db, source_id=settings.audit.source_id, fsync=settings.audit.fsync)
    try:
        audit.record(
            EventCode.PROCEDURE_RECORD, action="U", outcome=0,
            outcome_desc=(f"worklist priority raise cleared by {by}: {cleared.priority_before} -> "
                          f"{cleared.priority_after}" if cleared.changed else
                          f"worklist clear by {by}: nothing to clear (priority {cleared.priority_after})"),
            participants=[Participant(user_id=by, role="requestor", is_requestor=True)],
            objects=[AuditObject(type="study", id=cleared.study_instance_uid, details={
                "reason": reason, "cleared_raise": cleared.raised_by_sr_uid,
                "priority_before": cleared.priority_before, "priority_after": cleared.priority_after})])
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
        print(f"requeued {len(ids)} dead letter(s)" + (f": {', '.join(map(str, ids))}" if ids else ""),
              file=sys.stderr if args.json else sys.stdout)
    items = list_items(db)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("outbox has no pending or dead items")
    for item in items:
        when = f" next {item['next_attempt_at']}" if item["next_attempt_at"] else ""
        print(f"{item['id']:>6} {item['state']:<7} {item['destination']} {item['kind']:<8} "
              f"{item['sop_instance_uid']} attempts {item['attempts']}{when}"
              + (f"  last error: {item['last_error']}" if item["last_error"] else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from node.demo import run_demo

    return run_demo(keep=args.keep)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from node.audit.verify import verify_log
    from node.db.engine import Database

    settings = _settings(args)
    result = verify_log(settings.audit.path, Database(settings.database.url))
    print(result.message, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triage-node", description=(
        "DICOM node that keeps studies, triages them with MedSigLIP (research use only) and answers in DICOM."))
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
    p = sub.add_parser("demo", help="the whole path on synthetic studies with a random test model")
    p.add_argument("--keep", action="store_true",
                   help="keep the demo's temp folder and its node running for the operator console (Ctrl-C stops)")
    p.set_defaults(func=cmd_demo)

    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    with_config(audit_sub.add_parser("verify", help="check the audit hash chain")).set_defaults(
        func=cmd_audit_verify)

    for name, func, help_text in (("echo", cmd_echo, "C-ECHO a DICOM node"),
                                  ("send", cmd_send, "C-STORE files or folders to a DICOM node")):
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

"""``cursors``, ``ledger``, ``verify`` and ``quarantine``: reports folded from a session's log.

Readable and machine renderings of the cursor index and the dust ledger.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

from plantangenet.cli.common import dump_json, fold_projection, open_runtime
from plantangenet.cli.output import (
    REFUSAL,
    Column,
    print_table,
    progress_on_stderr,
    terminal_console,
)
from plantangenet.domain.commands import QuarantineMessage
from plantangenet.errors import (
    PlantangenetError,
    UnknownSession,
)
from plantangenet.log.verify import verify
from plantangenet.projections.cursors import CursorIndex
from plantangenet.projections.ledger import Ledger, LedgerError
from plantangenet.projections.session import CursorView
from plantangenet.projections.views import plain


def cursor_record(cursor: CursorView) -> dict[str, Any]:
    """A cursor as plain data."""
    return {
        "cursor_id": cursor.cursor_id,
        "agent_id": cursor.agent_id,
        "axes": list(cursor.axes),
        "start": cursor.start,
        "end": cursor.end,
        "resolution": cursor.resolution,
    }


def cursors_report(
    index: CursorIndex, axis: str | None = None, time: float | None = None
) -> dict[str, Any]:
    """The cursors (all, or those covering ``axis`` at ``time``) as plain data."""
    if axis is not None:
        cursors = (
            index.covering(axis, time)
            if time is not None
            else index.overlapping(axis, float("-inf"), float("inf"))
        )
    else:
        cursors = [index.cursors[c] for c in sorted(index.cursors)]
    return {
        "sequence": index.sequence,
        "axis": axis,
        "time": time,
        "cursors": [cursor_record(c) for c in cursors],
    }


def describe_cursors(report: dict[str, Any]) -> list[str]:
    """Lines of a table of the report's cursors."""
    where = ""
    if report["axis"] is not None:
        where = f" covering {report['axis']}"
        if report["time"] is not None:
            where += f" at {report['time']:g}"
    lines = [f"{len(report['cursors'])} cursors{where} (as of sequence {report['sequence']})"]
    if report["cursors"]:
        lines.append(f"{'CURSOR':<16}  {'AGENT':<12}  {'FROM':>10}  {'TO':>10}  {'RES':>6}  AXES")
    for c in report["cursors"]:
        res = "-" if c["resolution"] is None else f"{c['resolution']:g}"
        lines.append(
            f"{c['cursor_id']:<16}  {c['agent_id']:<12}  {c['start']:>10g}  {c['end']:>10g}  "
            f"{res:>6}  {', '.join(c['axes'])}"
        )
    return lines


def ledger_report(ledger: Ledger, account: str | None = None) -> dict[str, Any]:
    """Balances, movements (of one account, or all) and refusals as plain data."""
    try:
        ledger.check()
        problem = None
    except LedgerError as exc:
        problem = str(exc)
    movements = ledger.movements if account is None else ledger.movements_of(account)
    return {
        "sequence": ledger.sequence,
        "balances": {a: v for a, v in sorted(ledger.balances.items()) if v or a == account},
        "deposited": ledger.deposited,
        "reconciles": problem is None,
        "problem": problem,
        "prices": dict(sorted(ledger.prices.items())),
        "movements": [
            {
                "sequence": m.sequence,
                "time": m.occurred_at.isoformat(),
                "kind": m.kind,
                "account": m.account,
                "amount": m.amount,
                "counterparty": m.counterparty,
                "note": m.note,
            }
            for m in movements
        ],
        "refusals": [
            {
                "sequence": r.sequence,
                "account": r.account,
                "amount": r.amount,
                "balance": r.balance,
                "action": r.action,
            }
            for r in ledger.refusals
            if account is None or r.account == account
        ],
    }


def describe_ledger(report: dict[str, Any]) -> list[str]:
    """Lines: balances, then movements, then refused charges."""
    state = "reconciles" if report["reconciles"] else f"DOES NOT RECONCILE: {report['problem']}"
    lines = [
        f"dust ledger as of sequence {report['sequence']}: "
        f"{report['deposited']} deposited, {state}",
        "",
        f"{'ACCOUNT':<16}  {'BALANCE':>10}",
    ]
    lines += [f"{a:<16}  {v:>10}" for a, v in report["balances"].items()]
    if report["prices"]:
        lines += ["", "prices: " + ", ".join(f"{k}={v}" for k, v in report["prices"].items())]
    if report["movements"]:
        lines += [
            "",
            f"{'SEQ':>6}  {'KIND':<7}  {'ACCOUNT':<16}  {'AMOUNT':>8}  {'WITH':<16}  NOTE",
        ]
        for m in report["movements"]:
            lines.append(
                f"{m['sequence']:>6}  {m['kind']:<7}  {m['account']:<16}  {m['amount']:>+8}  "
                f"{m['counterparty'] or '-':<16}  {m['note']}"
            )
    if report["refusals"]:
        lines += ["", "refused charges:"]
        for r in report["refusals"]:
            lines.append(
                f"{r['sequence']:>6}  {r['account']} could not pay {r['amount']} for "
                f"{r['action']} (held {r['balance']})"
            )
    return lines


def show_cursors(console: Console, report: dict[str, Any]) -> None:
    """The cursors report as a table fitted to the terminal."""
    title, *_ = describe_cursors(report)
    columns = (
        Column("CURSOR", 16, minimum=8),
        Column("AGENT", 12, minimum=8),
        Column("FROM", 10, justify="right"),
        Column("TO", 10, justify="right"),
        Column("RES", 6, justify="right"),
        Column("AXES", 4, flexible=True),
    )
    rows = [
        (
            (
                c["cursor_id"],
                c["agent_id"],
                f"{c['start']:g}",
                f"{c['end']:g}",
                "-" if c["resolution"] is None else f"{c['resolution']:g}",
                ", ".join(c["axes"]),
            ),
            "",
        )
        for c in report["cursors"]
    ]
    print_table(console, columns, rows, title=title)


def show_ledger(console: Console, report: dict[str, Any]) -> None:
    """The ledger report as tables fitted to the terminal; refusals in red."""
    state = "reconciles" if report["reconciles"] else f"DOES NOT RECONCILE: {report['problem']}"
    console.print(
        Text(f"dust ledger as of sequence {report['sequence']}: {report['deposited']} deposited, ")
        + Text(state, style="" if report["reconciles"] else REFUSAL)
    )
    balances = [((a, str(v)), "") for a, v in report["balances"].items()]
    print_table(console, (Column("ACCOUNT", 16), Column("BALANCE", 10, justify="right")), balances)
    if report["prices"]:
        console.print("prices: " + ", ".join(f"{k}={v}" for k, v in report["prices"].items()))
    if report["movements"]:
        columns = (
            Column("SEQ", 6, justify="right"),
            Column("KIND", 7),
            Column("ACCOUNT", 16, minimum=8),
            Column("AMOUNT", 8, justify="right"),
            Column("WITH", 16, minimum=8),
            Column("NOTE", 4, flexible=True),
        )
        movements = [
            (
                (
                    str(m["sequence"]),
                    m["kind"],
                    m["account"],
                    f"{m['amount']:+}",
                    m["counterparty"] or "-",
                    m["note"],
                ),
                "",
            )
            for m in report["movements"]
        ]
        print_table(console, columns, movements)
    if report["refusals"]:
        console.print("refused charges:")
        for r in report["refusals"]:
            console.print(
                Text(
                    f"{r['sequence']:>6}  {r['account']} could not pay {r['amount']} for "
                    f"{r['action']} (held {r['balance']})",
                    style=REFUSAL,
                )
            )


def _write_report(
    args: argparse.Namespace,
    out: TextIO,
    report: Any,
    describe: Callable[[Any], list[str]],
    show: Callable[[Console, Any], None],
) -> None:
    if args.json:
        dump_json(report, out)
    elif (console := terminal_console(out)) is not None:
        show(console, report)
    else:
        out.write("\n".join(describe(report)) + "\n")


def cmd_cursors(args: argparse.Namespace, out: TextIO) -> int:
    if args.time is not None and args.axis is None:
        raise PlantangenetError("--time needs --axis")
    index = CursorIndex()
    fold_projection(args, index.apply, index.apply_checked)
    _write_report(
        args, out, cursors_report(index, args.axis, args.time), describe_cursors, show_cursors
    )
    return 0


def cmd_ledger(args: argparse.Namespace, out: TextIO) -> int:
    ledger = Ledger()
    fold_projection(args, ledger.apply, ledger.apply_checked)
    report = ledger_report(ledger, args.account)
    _write_report(args, out, report, describe_ledger, show_ledger)
    return 0 if report["reconciles"] else 1


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    with open_runtime(args) as pg, progress_on_stderr() as progress:
        result = pg.run(verify(pg.journal, args.session_id, progress=progress))
    if result.checked == 0:  # no events: an unknown session, not a broken one
        raise UnknownSession(f"no events for session {args.session_id!r}")
    if args.json:
        json.dump(plain(result), out)
        out.write("\n")
    elif (console := terminal_console(out)) is not None:
        console.print(Text(result.describe(), style="" if result.intact else REFUSAL))
    else:
        out.write(result.describe() + "\n")
    return 0 if result.intact else 1


def cmd_quarantine(args: argparse.Namespace, out: TextIO) -> int:
    """Record that the unreadable message at ``SEQ`` is skipped by every fold."""
    with open_runtime(args) as pg:
        session = pg.session(args.session_id)
        result = session.execute(QuarantineMessage(sequence=args.sequence, reason=args.reason))
        stored = result.sequence
        pg.stop_session(args.session_id)
    out.write(
        f"session {args.session_id}: the message at sequence {args.sequence} is quarantined "
        f"(MessageQuarantined stored at {stored}); it stays in the log\n"
    )
    return 0

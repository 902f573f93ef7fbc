"""Readable and machine renderings of the cursor index and the dust ledger (for the CLI)."""

from __future__ import annotations

from typing import Any

from plantangenet.projections.cursors import CursorIndex
from plantangenet.projections.ledger import Ledger, LedgerError
from plantangenet.projections.session import CursorView


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

"""``sessions``, ``history`` and ``audit``: a session's events and decisions, as rows."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC
from typing import Any, TextIO

from plantangenet.cli.common import (
    open_runtime,
    parse_time,
)
from plantangenet.cli.output import (
    REFUSAL,
    REFUSAL_EVENTS,
    Column,
    Progress,
    RowWriter,
    is_terminal,
    print_table,
    terminal_console,
)
from plantangenet.domain.decide import check_id
from plantangenet.errors import (
    InvalidCommand,
    JournalError,
    PlantangenetError,
    UnknownSession,
)
from plantangenet.events.envelope import Envelope
from plantangenet.log.journal import (
    Journal,
)
from plantangenet.log.session_replay import fold_events
from plantangenet.projections.audit import Audit, AuditEntry
from plantangenet.projections.audit_model import (
    AuditFilter,
    AuditModel,
    FoldedAudit,
    query_audit,
    reset_audit_model,
)
from plantangenet.projections.views import clock_text, describe, envelope_record
from plantangenet.runtime import Plantangenet
from plantangenet.timetravel.filters import EventFilter
from plantangenet.timetravel.history import (
    StreamSequence,
    parse_position,
)


def cmd_sessions(args: argparse.Namespace, out: TextIO) -> int:
    with open_runtime(args) as pg:
        sessions = pg.sessions()
    if args.json:
        json.dump([{"session_id": s, "events": n} for s, n in sessions.items()], out)
        out.write("\n")
    elif not sessions:
        out.write("no sessions in the log\n")
    elif (console := terminal_console(out)) is not None:
        columns = (Column("SESSION", 7, flexible=True), Column("EVENTS", 6, justify="right"))
        rows = [((s, f"{n:,}"), "") for s, n in sessions.items()]
        print_table(console, columns, rows)
    else:
        width = max(len(s) for s in sessions)
        out.write(f"{'SESSION':<{width}}  EVENTS\n")
        for session_id, count in sessions.items():
            out.write(f"{session_id:<{width}}  {count:>6}\n")
    return 0


def cmd_history(args: argparse.Namespace, out: TextIO) -> int:
    # Rows streaming to the terminal show the progress themselves: a bar only when they
    # go elsewhere (a file, a pipe) and stderr is a terminal.
    progress = Progress(sys.stderr, enabled=not is_terminal(out))
    try:
        with open_runtime(args) as pg:
            count = pg.run(_print_history(pg, args, out, progress))
            if count == 0:
                raise PlantangenetError(_nothing_read(pg, args))
    finally:
        progress.close()
    return 0


def _nothing_read(pg: Plantangenet, args: argparse.Namespace) -> str:
    """Why ``history`` listed nothing: no such session, or nothing in the range asked."""
    session_id = args.session_id
    asked = args.from_position or args.to_position
    last = pg.run(pg.journal.last_sequence(session_id)) if asked else 0
    if last == 0:
        return f"no events for session {session_id!r}"
    event = pg.run(pg.journal.event_stored_at(session_id, last))
    at = f"revision {event.revision}, sequence {last}" if event else f"sequence {last}"
    return (
        f"session {session_id!r} has no events from {args.from_position or 'its first'} "
        f"to {args.to_position or 'its last'} (its last event: {at})"
    )


#: ``history`` on a terminal: the details take what the other columns leave.
HISTORY_COLUMNS = (
    Column("REV", 6, justify="right"),
    Column("SEQ", 6, justify="right"),
    Column("TIME (UTC)", 23, minimum=19, overflow="crop"),  # milliseconds, down to seconds
    Column("EVENT", 22, minimum=13),
    Column("BY", 12, minimum=7),
    Column("DETAILS", 0, minimum=16, flexible=True),
)


def history_row(envelope: Envelope, revision: int) -> tuple[list[str], str]:
    """A ``history`` row's cells on a terminal, and its style (refusals: red)."""
    at = clock_text(envelope.occurred_at)[:23]
    cells = [
        str(revision),
        str(envelope.sequence),
        at,
        envelope.type_name,
        envelope.agent_id or "-",
        describe(envelope),
    ]
    return cells, REFUSAL if envelope.type_name in REFUSAL_EVENTS else ""


def _history_filter(args: argparse.Namespace) -> Callable[[Envelope], bool]:
    """The ``--type``/``--agent``/``--since``/``--until`` filters of ``history``.

    ``--type`` and ``--agent`` are an :class:`~plantangenet.timetravel.filters.EventFilter`, the
    explorer's: case-insensitive names or globs (``--type 'cursor*'``).
    """
    try:
        event_filter = EventFilter.of(args.types or (), [args.agent])
    except ValueError as exc:
        raise InvalidCommand(str(exc)) from None
    since, until = parse_time(args.since), parse_time(args.until)

    def keep(envelope: Envelope) -> bool:
        if not event_filter.matches(envelope):
            return False
        if since is not None and envelope.occurred_at < since:
            return False
        return until is None or envelope.occurred_at <= until

    return keep


async def _print_history(
    pg: Plantangenet, args: argparse.Namespace, out: TextIO, progress: Progress
) -> int:
    count = 0
    shown = 0
    keep = _history_filter(args)
    filtered = bool(args.types or args.agent or args.since or args.until)
    header = not args.json  # written before the first event: none for an unknown session
    console = terminal_console(out, json=args.json)
    rows = None if console is None else RowWriter(console, HISTORY_COLUMNS)

    def write_header() -> None:
        if rows is None:
            out.write(_HISTORY_HEADER)
        else:
            rows.header()

    # --since/--until: the read starts at the first event at or after `since` and ends at
    # the last at or before `until`, both found by a seek (`keep` still checks every event).
    journal, session_id = pg.journal, args.session_id
    # --from/--to: revisions (the session's own numbering), or stream sequences (seq:N).
    # An event of revision r is stored at a stream sequence >= r: the read starts there.
    low, high = _bound(args.from_position, 1), _bound(args.to_position, None)
    first = low.value if isinstance(low, StreamSequence) else max(low, 1)
    last = high.value if isinstance(high, StreamSequence) else None
    from_revision = low if type(low) is int else 1
    to_revision = high if type(high) is int else None
    since, until = parse_time(args.since), parse_time(args.until)
    if since is not None:
        after = await journal.sequence_after(session_id, since)
        first = None if after is None else max(first, after)
    if until is not None:
        before = await journal.sequence_at(session_id, until)
        last = before if last is None else min(last, before)
    # aclosing: a closed pipe (`| head`) ends the read here, its consumer deleted at once.
    envelopes = journal.read(
        session_id,
        from_sequence=1 if first is None else first,
        to_sequence=0 if first is None else last,  # (nothing at or after `since`: read none)
        progress=progress,
    )
    async with contextlib.aclosing(envelopes):
        async for envelope in envelopes:
            revision = envelope.revision or 0
            if to_revision is not None and revision > to_revision:
                break
            if revision < from_revision:
                continue
            count += 1
            if header:
                write_header()
                header = False
            if not keep(envelope):
                continue
            shown += 1
            if args.json:
                out.write(json.dumps(envelope_record(envelope)) + "\n")
            elif rows is not None:
                rows.row(*history_row(envelope, revision))
            else:
                at = clock_text(envelope.occurred_at)
                by = envelope.agent_id or "-"
                out.write(
                    f"{revision:>6}  {envelope.sequence:>6}  {at:<26}  {envelope.type_name:<22}  "
                    f"{by:<12}  {describe(envelope)}\n"
                )
    if (since or until) and not shown:
        # What the whole read would have counted (the header, the message, the error).
        count = await _count_between(journal, session_id, low, high)
        if count and header:
            write_header()
    if filtered and not args.json and count and not shown:
        out.write(f"(none of the {count} events matches the filters)\n")
    return count


_HISTORY_HEADER = (
    f"{'REV':>6}  {'SEQ':>6}  {'TIME (UTC)':<26}  {'EVENT':<22}  {'BY':<12}  DETAILS\n"
)


def _bound(text: str | None, default: int | None) -> Any:
    """A ``history --from/--to`` bound: a revision (int) or a :class:`StreamSequence`."""
    if text is None:
        return default
    position = parse_position(text)
    if type(position) is not int and not isinstance(position, StreamSequence):
        raise InvalidCommand(
            f"--from/--to take a revision N or a stream sequence seq:N, not {text!r} "
            "(use --since/--until for times)"
        )
    return position


async def _count_between(journal: Journal, session_id: str, low: Any, high: Any) -> int:
    """How many events ``history`` would list between its bounds (before any filter)."""
    if isinstance(low, StreamSequence) or isinstance(high, StreamSequence):
        return await journal.count_stored(
            session_id,
            from_sequence=low.value if isinstance(low, StreamSequence) else 1,
            to_sequence=high.value if isinstance(high, StreamSequence) else None,
        )
    total = await journal.count_stored(session_id)
    end: int = total if high is None else min(total, int(high))
    return max(0, end - max(int(low), 1) + 1)


def cmd_audit(args: argparse.Namespace, out: TextIO) -> int:
    where = AuditFilter(
        agent=args.agent,
        action=args.action,
        resource=args.resource,
        outcome=args.outcome,
        since=parse_time(args.since),
        until=parse_time(args.until),
    )
    check_id(args.session_id, "session_id")
    progress = Progress(sys.stderr)
    written = False

    async def answer(model: AuditModel | FoldedAudit) -> None:
        nonlocal written
        progress.close()  # the read is over: its bar's last line, before any row
        if args.group_by:
            counts = await model.counts(args.group_by, where)
            written = True
            _write_audit_counts(args, out, counts)
            return
        written = True
        console = terminal_console(out, json=args.json)
        rows = None if console is None else RowWriter(console, AUDIT_COLUMNS)
        if rows is not None:
            rows.header()
        elif not args.json:
            out.write(_AUDIT_HEADER)
        async for entry in model.entries_matching(where):
            if args.json:
                out.write(json.dumps(_audit_record(entry)) + "\n")
            elif rows is not None:
                rows.row(*audit_row(entry))
            else:
                out.write(_audit_row(entry))

    with open_runtime(args) as pg:
        journal = pg.journal
        if pg.run(journal.last_sequence(args.session_id)) == 0:
            raise UnknownSession(f"no events for session {args.session_id!r}")
        try:
            if args.rebuild:
                pg.run(reset_audit_model(journal, args.session_id))
            pg.run(query_audit(journal, args.session_id, answer, progress=progress))
        except JournalError as exc:
            if written:
                raise
            # No read model (e.g. this user may not keep KV buckets): fold the log instead.
            sys.stderr.write(
                f"plantangenet: audit read model unavailable ({exc}); folding the whole log\n"
            )
            audit = Audit()
            pg.run(fold_events(journal, args.session_id, audit, progress=progress))
            pg.run(answer(FoldedAudit(audit.entries)))
    progress.close()
    return 0


_AUDIT_HEADER = (
    f"{'SEQ':>6}  {'TIME (UTC)':<23}  {'AGENT':<12}  {'OUTCOME':<7}  {'ACTION':<16}  "
    f"{'RESOURCE':<24}  {'STATEMENT':<22}  {'POLICY':<6}  REASON\n"
)


#: ``audit`` on a terminal: the reason takes what the other columns leave.
AUDIT_COLUMNS = (
    Column("SEQ", 6, justify="right"),
    Column("TIME (UTC)", 23, minimum=10, overflow="crop"),
    Column("AGENT", 12, minimum=8),
    Column("OUTCOME", 7),
    Column("ACTION", 16, minimum=8),
    Column("RESOURCE", 24, minimum=10),
    Column("STATEMENT", 22, minimum=8),
    Column("POLICY", 6, minimum=3),
    Column("REASON", 0, minimum=10, flexible=True),
)


def audit_row(e: AuditEntry) -> tuple[list[str], str]:
    """An ``audit`` row's cells on a terminal, and its style (denied: red)."""
    cells = [
        str(e.sequence),
        e.occurred_at.astimezone(UTC).isoformat(" ", "milliseconds")[:23],
        e.agent_id or "(owner)",
        e.outcome,
        e.action,
        e.resource,
        e.statement_id or "-",
        f"v{e.policy_version}",
        e.reason,
    ]
    return cells, REFUSAL if e.outcome == "denied" else ""


def _audit_record(e: AuditEntry) -> dict[str, Any]:
    """``plain(e)``, written out: a full audit prints hundreds of thousands of them."""
    return {
        "sequence": e.sequence,
        "occurred_at": e.occurred_at.isoformat(),
        "agent_id": e.agent_id,
        "command_id": e.command_id,
        "command": e.command,
        "action": e.action,
        "resource": e.resource,
        "outcome": e.outcome,
        "statement_id": e.statement_id,
        "policy_version": e.policy_version,
        "reason": e.reason,
    }


def _audit_row(e: AuditEntry) -> str:
    at = e.occurred_at.astimezone(UTC).isoformat(" ", "milliseconds")[:23]  # (fast)
    return (
        f"{e.sequence:>6}  {at}  "
        f"{e.agent_id or '(owner)':<12}  {e.outcome:<7}  {e.action:<16}  {e.resource:<24}  "
        f"{e.statement_id or '-':<22}  {'v' + str(e.policy_version):<6}  {e.reason}\n"
    )


def _write_audit_counts(args: argparse.Namespace, out: TextIO, counts: Counter[str | None]) -> None:
    """One line per value of ``--group-by``, most entries first."""
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] is not None, kv[0] or ""))
    if args.json:
        for key, n in rows:
            out.write(json.dumps({args.group_by: key, "count": n}) + "\n")
        return
    absent = "(owner)" if args.group_by == "agent" else "-"
    console = terminal_console(out)
    if console is not None:
        columns = (
            Column(args.group_by.upper(), len(args.group_by), flexible=True),
            Column("COUNT", 8, justify="right"),
        )
        table = [((key or absent, f"{n:,}"), "") for key, n in rows]
        table.append((("total", f"{sum(counts.values()):,}"), "bold"))
        print_table(console, columns, table)
        return
    width = max([len(args.group_by), *(len(k or absent) for k, _ in rows)])
    out.write(f"{args.group_by.upper():<{width}}  {'COUNT':>8}\n")
    for key, n in rows:
        out.write(f"{key or absent:<{width}}  {n:>8}\n")
    out.write(f"{'total':<{width}}  {sum(counts.values()):>8}\n")

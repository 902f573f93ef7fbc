"""The ``plantangenet`` command line.

``plantangenet demo`` runs a short scripted session on the embedded server;
``plantangenet sessions`` lists the sessions in the log; ``plantangenet
history SESSION_ID`` lists a session's events; ``plantangenet audit
SESSION_ID`` shows who did or tried what and which statement decided;
``plantangenet verify SESSION_ID`` checks the hash chain; ``state``, ``diff``,
``why`` and ``fork`` travel in a session's history (see docs/time-travel.md). Every command takes
``--json`` for machine output and ``--nats-url`` (or ``NATS_URL``) to use an
external server or cluster instead of the embedded one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from plantangenet.access import BotAccess, server_config, write_config
from plantangenet.actors.agent import Agent, AgentContext
from plantangenet.commands import QuarantineMessage
from plantangenet.compositors import load_compositor
from plantangenet.correlations import CorrelationIndex
from plantangenet.decide import check_id
from plantangenet.errors import (
    AccessRefused,
    InvalidCommand,
    JournalError,
    PlantangenetError,
    UnknownSession,
)
from plantangenet.events.base import EVENTS
from plantangenet.events.envelope import Envelope
from plantangenet.fork import fork
from plantangenet.history import (
    Grounds,
    Position,
    StreamSequence,
    Why,
    describe_position,
    describe_state,
    describe_statement,
    diff,
    diff_sessions,
    fork_origin,
    parse_position,
    state_record,
    states_at,
    why,
)
from plantangenet.journal import (
    DEFAULT_LIVE_PREFIX,
    DEFAULT_STREAM,
    DEFAULT_SUBJECT_PREFIX,
    LIMIT_ENV,
    MONITOR_URL_ENV,
    TIMEOUT_ENV,
    InvalidJournalConfig,
    Journal,
    JournalConfig,
    parse_limit,
    parse_seconds,
    stream_limits_from_env,
    timeouts_from_env,
)
from plantangenet.ownership import DEFAULT_LEASE_TTL, DEFAULT_PARTITIONS
from plantangenet.projections.audit import Audit, AuditEntry
from plantangenet.projections.audit_model import (
    GROUP_BY,
    AuditFilter,
    AuditModel,
    FoldedAudit,
    query_audit,
    reset_audit_model,
)
from plantangenet.projections.cursors import CursorIndex
from plantangenet.projections.ledger import Ledger
from plantangenet.projections.session import SessionState
from plantangenet.protocol import DEFAULT_COMMAND_PREFIX, DEFAULT_LANES
from plantangenet.reports import cursors_report, describe_cursors, describe_ledger, ledger_report
from plantangenet.runtime import Plantangenet, default_store_dir
from plantangenet.service import SessionService
from plantangenet.status import format_status, gather_status
from plantangenet.verify import verify
from plantangenet.views import describe, envelope_record, plain


def state_summary(state: SessionState) -> dict[str, Any]:
    """The session projection as JSON-friendly data."""
    return plain(state)  # type: ignore[no-any-return]


class _Progress:
    """Writes replay progress to stderr when it is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()

    def __call__(self, at: int, end: int) -> None:
        if self.enabled and end:
            self.stream.write(f"\rreplaying… sequence {at:,} of {end:,}")
            if at >= end:
                self.stream.write("\n")
            self.stream.flush()


def _runtime(args: argparse.Namespace) -> Plantangenet:
    # The stream's limits: the options given, else the environment's, else the stream's own.
    limits = stream_limits_from_env()
    for name in LIMIT_ENV:
        given = getattr(args, name, None)
        if given is not None:
            limits[name] = given
    # The append timeouts: likewise, the options given, else the environment's.
    timeouts = timeouts_from_env()
    for name in TIMEOUT_ENV:
        given = getattr(args, name, None)
        if given is not None:
            timeouts[name] = given
    journal = JournalConfig(
        stream=args.stream,
        subject_prefix=args.subject_prefix,
        # Opening the journal gives the stream this live republish: the prefix its
        # bots follow (any other would leave them to see events late).
        live_prefix=args.live_prefix,
        max_bytes=limits.get("max_bytes"),
        max_msgs=limits.get("max_msgs"),
        replicas=limits.get("replicas"),
        monitor_url=getattr(args, "monitor_url", None),
    )
    return Plantangenet.open(
        nats_url=args.nats_url,
        store_dir=args.store_dir,
        journal=journal.with_timeouts(timeouts),
        **(
            {"compositor_timeout": args.compositor_timeout or None}
            if getattr(args, "compositor_timeout", None) is not None
            else {}
        ),
    )


def _seconds(name: str) -> Callable[[str], float]:
    """An argparse type: the ``name`` timeout of :func:`parse_seconds` (bad values: exit 2)."""

    def parse(text: str) -> float:
        try:
            return parse_seconds(name, text)
        except InvalidJournalConfig as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name}: ")) from None

    return parse


def _limit(name: str) -> Callable[[str], int]:
    """An argparse type: the ``name`` limit of :func:`parse_limit` (bad values: exit 2)."""

    def parse(text: str) -> int:
        try:
            return parse_limit(name, text)
        except InvalidJournalConfig as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name}: ")) from None

    return parse


# -- commands ---------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    with _runtime(args) as pg:
        store = pg.store
        status = pg.run(
            gather_status(
                pg.journal, url=pg.url, store_dir=store.store_dir if store is not None else None
            ),
            timeout=30,
        )
    if args.json:
        json.dump(status, out)
        out.write("\n")
    else:
        out.write(format_status(status))
    return 1 if status["problems"] else 0


def cmd_sessions(args: argparse.Namespace, out: TextIO) -> int:
    with _runtime(args) as pg:
        sessions = pg.sessions()
    if args.json:
        json.dump([{"session_id": s, "events": n} for s, n in sessions.items()], out)
        out.write("\n")
    elif not sessions:
        out.write("no sessions in the log\n")
    else:
        width = max(len(s) for s in sessions)
        out.write(f"{'SESSION':<{width}}  EVENTS\n")
        for session_id, count in sessions.items():
            out.write(f"{session_id:<{width}}  {count:>6}\n")
    return 0


def cmd_history(args: argparse.Namespace, out: TextIO) -> int:
    progress = _Progress(sys.stderr)
    with _runtime(args) as pg:
        count = pg.run(_print_history(pg, args, out, progress))
        if count == 0:
            raise PlantangenetError(f"no events for session {args.session_id!r}")
    return 0


def _history_filter(args: argparse.Namespace) -> Callable[[Envelope], bool]:
    """The ``--type``/``--agent``/``--since``/``--until`` filters of ``history``."""
    types = frozenset(args.types or ())
    unknown = sorted(types - set(EVENTS.types()))
    if unknown:
        raise InvalidCommand(
            f"unknown event type {unknown[0]!r}; known: {', '.join(sorted(EVENTS.types()))}"
        )
    agent = args.agent
    since, until = _parse_time(args.since), _parse_time(args.until)

    def keep(envelope: Envelope) -> bool:
        if types and envelope.type_name not in types:
            return False
        if agent is not None and agent not in (
            envelope.agent_id,
            getattr(envelope.event, "agent_id", None),
        ):
            return False
        if since is not None and envelope.occurred_at < since:
            return False
        return until is None or envelope.occurred_at <= until

    return keep


async def _print_history(
    pg: Plantangenet, args: argparse.Namespace, out: TextIO, progress: _Progress
) -> int:
    count = 0
    shown = 0
    keep = _history_filter(args)
    filtered = bool(args.types or args.agent or args.since or args.until)
    header = not args.json  # written before the first event: none for an unknown session
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
    since, until = _parse_time(args.since), _parse_time(args.until)
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
                out.write(_HISTORY_HEADER)
                header = False
            if not keep(envelope):
                continue
            shown += 1
            if args.json:
                out.write(json.dumps(envelope_record(envelope)) + "\n")
            else:
                at = envelope.occurred_at.strftime("%Y-%m-%d %H:%M:%S.%f")
                by = envelope.agent_id or "-"
                out.write(
                    f"{revision:>6}  {envelope.sequence:>6}  {at:<26}  {envelope.type_name:<22}  "
                    f"{by:<12}  {describe(envelope)}\n"
                )
    if (since or until) and not shown:
        # What the whole read would have counted (the header, the message, the error).
        count = await _count_between(journal, session_id, low, high)
        if count and header:
            out.write(_HISTORY_HEADER)
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


class _DemoAgent(Agent):
    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def setup(self, context: AgentContext) -> None:
        self.say(f"    [{context.agent_id}] setup ({context.origin})")

    def teardown(self, context: AgentContext, reason: str) -> None:
        self.say(f"    [{context.agent_id}] teardown ({reason})")


DEMO_POLICY = [
    {
        "id": "bots-watch-the-sea",
        "effect": "allow",
        "roles": ["bot"],
        "actions": ["cursor.*"],
        "resources": ["axis.ocean.*", "axis.air.*", "cursor.*"],
    },
    {
        "id": "viewers-look",
        "effect": "allow",
        "roles": ["viewer"],
        "actions": ["cursor.add", "cursor.move"],
        "resources": ["axis.*"],
    },
    {
        "id": "operators-annotate",
        "effect": "allow",
        "roles": ["operator"],
        "actions": ["metadata.change"],
        "resources": ["metadata.*"],
    },
    {
        "id": "status-is-for-owners",
        "effect": "deny",
        "actions": ["metadata.change"],
        "resources": ["metadata.owner"],
    },
]


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    def say(text: str) -> None:
        if not args.json:
            out.write(text + "\n")
            out.flush()

    session_id = args.session_id or datetime.now(UTC).strftime("demo-%Y%m%d-%H%M%S")
    with _runtime(args) as pg:
        store = pg.store
        where = (
            f"embedded nats-server at {pg.url} (store {store.store_dir}, "
            f"{'started here' if store.owner else 'joined'})"
            if store is not None
            else pg.url
        )
        say(f"plantangenet demo: session {session_id} on {where}")
        session = pg.session(session_id)
        live_audit = Audit()
        events: list[Envelope] = []
        session.on_change(events.append)
        session.on_change(live_audit)

        def step(title: str, result: Any) -> None:
            say(f"  {title:<56} -> sequence {result.sequence}")

        step("start the session", session.start({"purpose": "demo", "owner": "harbour"}))
        step(
            "bind identity harbour-ops",
            session.bind_identity("harbour-ops", "Harbour operations", {"tier": "gold"}),
        )
        step(
            f"set a policy of {len(DEMO_POLICY)} statements",
            session.change_policy(replace=DEMO_POLICY),
        )
        for agent_id, kind, name, role in (
            ("tide-bot", "bot", "Tide gauge bot", "bot"),
            ("weather-bot", "bot", "Weather bot", "bot"),
            ("viewer", "client", "Harbour viewer", "viewer"),
        ):
            step(
                f"attach {agent_id} ({kind})",
                session.attach(agent_id, kind, name, behaviour=_DemoAgent(say)),
            )
            time.sleep(0.05)  # let the agent's setup line print in order
            step(f"grant {agent_id} the role {role!r}", session.grant_role(agent_id, role))
        for agent_id, cursor, axes, end in (
            ("tide-bot", "tide", ["ocean.tide"], 60),
            ("weather-bot", "wx", ["air.wind", "air.pressure"], 30),
            ("viewer", "view", ["ocean.tide", "air.wind"], 120),
        ):
            result = session.add_cursor(agent_id, cursor, axes, 0, end, issued_by=agent_id)
            step(f"{agent_id} watches {','.join(axes)} over [0, {end}]", result)
        for t in (10, 20, 30):
            result = session.move_cursor(
                "tide-bot", "tide", ["ocean.tide"], t, t + 60, issued_by="tide-bot"
            )
            step(f"tide-bot moves its cursor to [{t}, {t + 60}]", result)
        try:
            session.change_metadata({"status": "observing"}, issued_by="viewer")
        except AccessRefused as refused:
            say(
                "  viewer tries to change metadata: REFUSED "
                f"(recorded at sequence {refused.sequence})"
            )
            say(f"      {refused}")
        step("grant viewer the role 'operator'", session.grant_role("viewer", "operator"))
        step(
            "viewer changes metadata: status=observing",
            session.change_metadata({"status": "observing"}, issued_by="viewer"),
        )
        step(
            "weather-bot leaves (its cursor goes with it)",
            session.detach("weather-bot", "storm over"),
        )
        time.sleep(0.05)
        live = session.state
        say(
            f"  live state: agents {sorted(live.agents)}, cursors {sorted(live.cursors)}, "
            f"roles {dict(live.roles)}, policy v{live.policy.version}, "
            f"{live.event_count} events, last sequence {live.sequence}"
        )

        pg.stop_session(session_id)
        time.sleep(0.05)
        say("  actor stopped; rehydrating the session from the log…")
        rehydrated = pg.session(session_id).state
        time.sleep(0.05)
        replayed = pg.replay(session_id)
        same = rehydrated == live == replayed
        say(f"  rehydrated state {'EQUALS' if same else 'DIFFERS FROM'} the live state")
        middle = pg.state_at(session_id, live.revision - 5)
        tide = middle.cursors["tide"]
        say(
            f"  state at revision {middle.revision}: agents {sorted(middle.agents)}, "
            f"tide cursor at [{tide.start:g}, {tide.end:g}]"
        )
        replayed_audit = Audit.of(pg.history(session_id))
        audit_same = replayed_audit.entries == live_audit.entries
        denied = replayed_audit.query(outcome="denied")
        say(
            f"  audit: {len(replayed_audit.entries)} decisions, {len(denied)} denied; "
            f"replayed audit {'EQUALS' if audit_same else 'DIFFERS FROM'} the live one"
        )
        checked = pg.run(verify(pg.journal, session_id))
        say(f"  verify: {checked.describe()}")
        say(f"  see it all: plantangenet history {session_id}; plantangenet audit {session_id}")
        ok = same and audit_same and checked.intact
        if args.json:
            json.dump(
                {
                    "session_id": session_id,
                    "equal": same,
                    "audit_equal": audit_same,
                    "intact": checked.intact,
                    "state": state_summary(live),
                    "events": [envelope_record(e) for e in events],
                },
                out,
            )
            out.write("\n")
    return 0 if ok else 1


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PlantangenetError(f"not an ISO time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_audit(args: argparse.Namespace, out: TextIO) -> int:
    where = AuditFilter(
        agent=args.agent,
        action=args.action,
        resource=args.resource,
        outcome=args.outcome,
        since=_parse_time(args.since),
        until=_parse_time(args.until),
    )
    check_id(args.session_id, "session_id")
    progress = _Progress(sys.stderr)
    written = False

    async def answer(model: AuditModel | FoldedAudit) -> None:
        nonlocal written
        if args.group_by:
            counts = await model.counts(args.group_by, where)
            written = True
            _write_audit_counts(args, out, counts)
            return
        written = True
        if not args.json:
            out.write(_AUDIT_HEADER)
        async for entry in model.entries_matching(where):
            if args.json:
                out.write(json.dumps(_audit_record(entry)) + "\n")
            else:
                out.write(_audit_row(entry))

    with _runtime(args) as pg:
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
            pg.run(_fold_history(pg, args.session_id, audit, progress))
            pg.run(answer(FoldedAudit(audit.entries)))
    return 0


_AUDIT_HEADER = (
    f"{'SEQ':>6}  {'TIME (UTC)':<23}  {'AGENT':<12}  {'OUTCOME':<7}  {'ACTION':<16}  "
    f"{'RESOURCE':<24}  {'STATEMENT':<22}  {'POLICY':<6}  REASON\n"
)


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
    width = max([len(args.group_by), *(len(k or absent) for k, _ in rows)])
    out.write(f"{args.group_by.upper():<{width}}  {'COUNT':>8}\n")
    for key, n in rows:
        out.write(f"{key or absent:<{width}}  {n:>8}\n")
    out.write(f"{'total':<{width}}  {sum(counts.values()):>8}\n")


async def _fold_history(
    pg: Plantangenet, session_id: str, fold: Callable[[Envelope], None], progress: _Progress
) -> int:
    count = 0
    envelopes = pg.journal.read(session_id, progress=progress)
    async with contextlib.aclosing(envelopes):
        async for envelope in envelopes:
            fold(envelope)
            count += 1
    return count


def _fold_projection(args: argparse.Namespace, fold: Callable[[Envelope], None]) -> None:
    """Fold the session's whole history into ``fold`` (``UnknownSession`` if it has none)."""
    with _runtime(args) as pg:
        count = pg.run(_fold_history(pg, args.session_id, fold, _Progress(sys.stderr)))
    if count == 0:
        raise UnknownSession(f"no events for session {args.session_id!r}")


def _write_report(
    args: argparse.Namespace, out: TextIO, report: Any, describe: Callable[[Any], list[str]]
) -> None:
    if args.json:
        _dump(report, out)
    else:
        out.write("\n".join(describe(report)) + "\n")


def cmd_cursors(args: argparse.Namespace, out: TextIO) -> int:
    if args.time is not None and args.axis is None:
        raise PlantangenetError("--time needs --axis")
    index = CursorIndex()
    _fold_projection(args, index.apply)
    _write_report(args, out, cursors_report(index, args.axis, args.time), describe_cursors)
    return 0


def cmd_ledger(args: argparse.Namespace, out: TextIO) -> int:
    ledger = Ledger()
    _fold_projection(args, ledger.apply)
    report = ledger_report(ledger, args.account)
    _write_report(args, out, report, describe_ledger)
    return 0 if report["reconciles"] else 1


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    with _runtime(args) as pg:
        result = pg.run(verify(pg.journal, args.session_id, progress=_Progress(sys.stderr)))
    if result.checked == 0:  # no events: an unknown session, not a broken one
        raise UnknownSession(f"no events for session {args.session_id!r}")
    if args.json:
        json.dump(plain(result), out)
        out.write("\n")
    else:
        out.write(result.describe() + "\n")
    return 0 if result.intact else 1


def cmd_quarantine(args: argparse.Namespace, out: TextIO) -> int:
    """Record that the unreadable message at ``SEQ`` is skipped by every fold."""
    with _runtime(args) as pg:
        session = pg.session(args.session_id)
        result = session.execute(QuarantineMessage(sequence=args.sequence, reason=args.reason))
        stored = result.sequence
        pg.stop_session(args.session_id)
    out.write(
        f"session {args.session_id}: the message at sequence {args.sequence} is quarantined "
        f"(MessageQuarantined stored at {stored}); it stays in the log\n"
    )
    return 0


def _position(text: str | None) -> Position | None:
    return None if text is None else parse_position(text)


def _dump(data: Any, out: TextIO) -> None:
    json.dump(data, out)
    out.write("\n")


def cmd_state(args: argparse.Namespace, out: TextIO) -> int:
    position = _position(args.at)
    progress = _Progress(sys.stderr)
    with _runtime(args) as pg:
        if position is None:
            state = pg.replay(args.session_id, progress=progress)
        else:
            state = pg.state_at(args.session_id, position, progress=progress)
    if args.json:
        _dump(state_record(state), out)
    else:
        out.write("\n".join(describe_state(state)) + "\n")
    return 0


def cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    a, b = parse_position(args.a), parse_position(args.b)
    other = args.against
    progress = _Progress(sys.stderr)
    with _runtime(args) as pg:
        check_id(args.session_id, "session_id")
        if other is None or other == args.session_id:
            other = args.session_id
            before, after = pg.run(
                states_at(pg.journal, args.session_id, [a, b], progress=progress)
            )
            change = diff(before, after)
        else:
            check_id(other, "against")
            before = pg.run(states_at(pg.journal, args.session_id, [a], progress=progress))[0]
            after = pg.run(states_at(pg.journal, other, [b], progress=progress))[0]
            change = diff_sessions(before, after)
    if args.json:
        _dump(change.to_dict(), out)
    elif other == args.session_id:
        out.write(f"session {args.session_id}: {describe_position(a)} -> {describe_position(b)}\n")
        out.write("".join(f"  {line}\n" for line in change.describe()))
    else:
        out.write(
            f"session {args.session_id} at {describe_position(a)} -> "
            f"session {other} at {describe_position(b)}\n"
        )
        out.write("".join(f"  {line}\n" for line in change.describe()))
    return 0


def cmd_why(args: argparse.Namespace, out: TextIO) -> int:
    position = parse_position(args.event)
    with _runtime(args) as pg:
        check_id(args.session_id, "session_id")
        index = CorrelationIndex(pg.journal) if args.across and not args.no_index else None
        answer = pg.run(
            why(
                pg.journal,
                args.session_id,
                position,
                progress=_Progress(sys.stderr),
                across=args.across or args.no_index,
                index=index,
            )
        )
    if args.json:
        _dump(answer.to_dict(), out)
    else:
        _print_why(answer, out, "")
    return 0


def _print_why(answer: Why, out: TextIO, indent: str) -> None:
    event = answer.event
    first = answer.command_events[0] if answer.command_events else event
    by = f"agent {first.agent_id}" if first.agent_id else "the session owner"
    out.write(
        f"{indent}session {answer.session_id}, sequence {event.sequence}: {event.type_name} "
        f"{describe(event)}\n"
        f"{indent}  event {event.event_id} at {event.occurred_at.isoformat()}\n"
        f"{indent}command {answer.command_id}, issued by {by}, "
        f"{len(answer.command_events)} event(s):\n"
    )
    for envelope in answer.command_events:
        mark = "*" if envelope.event_id == event.event_id else " "
        out.write(
            f"{indent}  {mark}{envelope.sequence:>6}  {envelope.type_name:<22}  "
            f"{describe(envelope)}\n"
        )
    auth = first.authorization
    if auth is not None:
        decided = ", ".join(
            f"{r} by {s or 'owner'}" for r, s in zip(auth.resources, auth.statements, strict=False)
        )
        out.write(f"{indent}  allowed: {auth.action} ({decided}), policy v{auth.policy_version}\n")
    for grounds in answer.grounds:
        _print_grounds(grounds, out, indent + "    ")
    commands = answer.commands
    out.write(
        f"{indent}correlation {answer.correlation_id}: {len(commands)} command(s), "
        f"{len(answer.chain)} event(s)\n"
    )
    for envelope in answer.chain:
        mark = "*" if envelope.event_id == event.event_id else " "
        out.write(
            f"{indent}  {mark}{envelope.sequence:>6}  {envelope.type_name:<22}  "
            f"command {envelope.causation_id}\n"
        )
    if answer.searched_elsewhere:
        out.write(
            f"{indent}elsewhere: {len(answer.elsewhere)} event(s) of the same correlation "
            f"in {len(answer.sessions)} other session(s)\n"
        )
        for envelope in answer.elsewhere:
            copied = fork_origin(envelope)
            note = (
                f" (fork copy of {copied[0]} sequence {copied[1]})"
                if copied
                else f" command {envelope.causation_id}"
            )
            out.write(
                f"{indent}    {envelope.session_id} rev {envelope.revision or '-'} "
                f"seq {envelope.sequence}  {envelope.type_name}{note}\n"
            )
    if answer.origin is not None:
        session, sequence = answer.origin
        out.write(f"{indent}copied by a fork from session {session}, sequence {sequence}\n")
        if answer.origin_why is not None:
            _print_why(answer.origin_why, out, indent + "    ")


def _who(envelope: Envelope) -> str:
    who = f"agent {envelope.agent_id}" if envelope.agent_id else "the session owner"
    return f"{who} ({envelope.principal})" if envelope.principal else who


def _ref(envelope: Envelope) -> str:
    return (
        f"revision {envelope.revision}, sequence {envelope.sequence}, by {_who(envelope)}, "
        f"at {envelope.occurred_at.isoformat()}"
    )


def _print_grounds(grounds: Grounds, out: TextIO, indent: str) -> None:
    verb = "allowed" if grounds.effect == "allow" else "denied"
    if grounds.statement_id is None:
        if grounds.effect == "allow":
            reason = "no statement needed (owner)"
        else:
            held = ",".join(grounds.roles) or "none"
            reason = f"default deny: no statement allowed it (roles held: {held})"
        out.write(f"{indent}{grounds.resource}: {verb}, {reason}\n")
    else:
        statement = grounds.statement
        shown = "" if statement is None else f" ({describe_statement(statement)})"
        out.write(
            f"{indent}{grounds.resource}: {verb} by statement {grounds.statement_id}{shown}\n"
        )
        change = grounds.policy_change
        if change is not None:
            out.write(f"{indent}  statement set by PolicyChanged {_ref(change)}\n")
        else:
            out.write(f"{indent}  no PolicyChanged setting it found before the event\n")
        if statement is not None and statement.for_every_role:
            out.write(f"{indent}  the statement is for every agent: no role needed\n")
    for role, grant in zip(grounds.roles, grounds.grants, strict=True):
        out.write(
            f"{indent}  role {role} of agent {grounds.agent_id} granted by RoleGranted "
            f"{_ref(grant)}\n"
        )


def cmd_explore(args: argparse.Namespace, out: TextIO) -> int:
    from plantangenet.explore import run  # curses: loaded only when needed

    with _runtime(args) as pg:
        return run(pg, args.session_id, _position(args.at))


def cmd_fork(args: argparse.Namespace, out: TextIO) -> int:
    position = _position(args.at)
    with _runtime(args) as pg:
        if position is None:
            check_id(args.session_id, "session_id")
            position = StreamSequence(pg.run(pg.journal.last_sequence(args.session_id)))
        state = fork(pg, args.session_id, position, args.new_id, progress=_Progress(sys.stderr))
        last = pg.history(state.session_id, from_sequence=state.sequence)[-1]
    origin = fork_origin(last)
    origin_sequence = origin[1] if origin is not None else None
    if args.json:
        _dump(
            {
                "origin": args.session_id,
                "origin_sequence": origin_sequence,
                "state": state_record(state),
            },
            out,
        )
    else:
        out.write(
            f"forked {args.session_id} at {describe_position(position)} as {state.session_id}: "
            f"{state.event_count} events copied (up to origin sequence {origin_sequence}), "
            f"last sequence {state.sequence}, status {state.status}\n"
        )
    return 0


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        with _runtime(args) as pg:
            for spec in args.compositor:
                try:
                    pg.add_compositor(load_compositor(spec))
                except (ImportError, AttributeError, ValueError, TypeError) as exc:
                    raise PlantangenetError(f"--compositor {spec}: {exc}") from None
            service = SessionService(
                pg,
                idle_timeout=args.idle_timeout,
                command_prefix=args.command_prefix,
                lanes=args.lanes,
                per_principal=args.per_principal,
                queued_per_principal=args.queued_per_principal,
                partitions=args.partitions,
                lease_ttl=args.lease_ttl,
            )
            pg.run(service.start())
            out.write(f"plantangenet serve: listening on {pg.url} ({args.command_prefix}.*.*)\n")
            registration = service.registration
            out.write(
                f"plantangenet serve: registered as NATS service {registration.name} "
                f"{registration.version} (id {registration.id}; $SRV.PING/INFO/STATS)\n"
            )
            if args.metrics_port is not None:
                try:
                    port = service.metrics.serve(args.metrics_port, args.metrics_address)
                except OSError as exc:
                    pg.run(service.stop())
                    raise PlantangenetError(
                        f"--metrics-port {args.metrics_port}: cannot listen on "
                        f"{args.metrics_address}: {exc}"
                    ) from None
                out.write(
                    f"plantangenet serve: metrics on http://{args.metrics_address}:{port}/metrics\n"
                )
            out.flush()
            try:
                while not stop.wait(0.2):
                    pass
                out.write("plantangenet serve: shutting down, finishing requests in flight\n")
                out.flush()
                pg.run(service.stop())
            finally:
                service.metrics.close()
            conflicts = int(service.metrics.conflicts._value.get())
            out.write(
                f"plantangenet serve: stopped after {service.handled} requests "
                f"({conflicts} conflicts, {service.forwarded} passed on to their owners)\n"
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def cmd_nats_config(args: argparse.Namespace, out: TextIO) -> int:
    from plantangenet.access import parse_size

    bots = []
    for spec in args.bot:
        user, _, rest = spec.partition(":")
        password, _, sessions = rest.rpartition(":")
        if not user or not password or not sessions:
            raise InvalidCommand(f"--bot expects USER:PASSWORD:SESSION[,SESSION...], got {user}:…")
        bots.append(BotAccess(user, password, tuple(sessions.split(","))))
    options: dict[str, Any] = {
        "service_user": args.service_user,
        "service_password": args.service_password,
        "bots": bots,
        "account": args.service_account,
        "stream": args.stream,
        "event_prefix": args.subject_prefix,
        "command_prefix": args.command_prefix,
        "live_prefix": args.live_prefix,
        "lanes": args.lanes,
        "system_account": args.system_account,
    }
    if args.bot_max_consumers is not None:
        options["bot_max_consumers"] = args.bot_max_consumers
    if args.bot_max_streams is not None:
        options["bot_max_streams"] = args.bot_max_streams
    if args.bot_max_storage is not None:
        options["bot_max_storage"] = parse_size(args.bot_max_storage)
    if args.bot_max_memory is not None:
        options["bot_max_memory"] = parse_size(args.bot_max_memory)
    if args.out:
        path = write_config(args.out, **options)
        out.write(f"wrote {path} ({len(bots)} bots); start: nats-server -c {path} -sd STORE\n")
    else:
        out.write(server_config(**options))
    return 0


# -- entry point ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--nats-url",
        default=os.environ.get("NATS_URL"),
        help="NATS server/cluster URL (default: $NATS_URL, else an embedded nats-server)",
    )
    common.add_argument(
        "--store-dir",
        default=None,
        help=f"embedded server store (default: $PLANTANGENET_STORE_DIR or {default_store_dir()})",
    )
    common.add_argument(
        "--stream",
        default=os.environ.get("PLANTANGENET_STREAM") or DEFAULT_STREAM,
        help="JetStream stream name",
    )
    common.add_argument(
        "--subject-prefix",
        default=os.environ.get("PLANTANGENET_SUBJECT_PREFIX") or DEFAULT_SUBJECT_PREFIX,
        help="subject prefix of sessions",
    )
    common.add_argument(
        "--live-prefix",
        default=os.environ.get("PLANTANGENET_LIVE_PREFIX") or DEFAULT_LIVE_PREFIX,
        help="where the stream republishes each stored event for live readers "
        f"(default: $PLANTANGENET_LIVE_PREFIX or {DEFAULT_LIVE_PREFIX})",
    )
    # The stream's limits, for every command that may create the stream (any that opens
    # the log): set on a new stream, and on an existing one where they differ.
    unset = "else as the stream has it; none for a new stream"
    common.add_argument(
        "--max-bytes",
        type=_limit("max_bytes"),
        metavar="SIZE",
        help="the most bytes the stream holds: bytes, or e.g. 512M, 10G; -1: no limit "
        f"(default: ${LIMIT_ENV['max_bytes']}, {unset}). A full stream refuses appends",
    )
    common.add_argument(
        "--max-msgs",
        type=_limit("max_msgs"),
        metavar="N",
        help="the most events the stream holds, all sessions together; -1: no limit "
        f"(default: ${LIMIT_ENV['max_msgs']}, {unset})",
    )
    common.add_argument(
        "--replicas",
        type=_limit("replicas"),
        metavar="N",
        help=f"stream replicas, 1 to 5; 3 on a cluster (default: ${LIMIT_ENV['replicas']}, "
        "else as the stream has it; 1 for a new stream)",
    )
    common.add_argument(
        "--monitor-url",
        default=os.environ.get(MONITOR_URL_ENV) or None,
        metavar="URL",
        help="the server's HTTP monitoring, e.g. http://127.0.0.1:8222: a late append asks "
        f"its /healthz whether the store can write (default: ${MONITOR_URL_ENV}; the "
        "embedded server's own)",
    )
    common.add_argument(
        "--ack-timeout",
        type=_seconds("ack_timeout"),
        metavar="SECONDS",
        help="how long an append may take in all, its retries included "
        f"(default: ${TIMEOUT_ENV['ack_timeout']}, else 10)",
    )
    common.add_argument(
        "--attempt-timeout",
        type=_seconds("attempt_timeout"),
        metavar="SECONDS",
        help="how long one attempt of an append waits before it is sent again under the same "
        f"message ids (default: ${TIMEOUT_ENV['attempt_timeout']}, else 1)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")

    parser = argparse.ArgumentParser(prog="plantangenet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", parents=[common], help="run a scripted session and rehydrate it")
    demo.add_argument("--session-id", default=None, help="session id (default: demo-<time>)")
    demo.set_defaults(run=cmd_demo)
    status = sub.add_parser(
        "status",
        parents=[common],
        help="the server, its store and the stream: usage, limits, leader, lag, problems",
    )
    status.set_defaults(run=cmd_status)
    sessions = sub.add_parser("sessions", parents=[common], help="list sessions in the log")
    sessions.set_defaults(run=cmd_sessions)
    history = sub.add_parser("history", parents=[common], help="list a session's events")
    history.add_argument("session_id")
    history.add_argument(
        "--from", dest="from_position", help="first event: revision N, or stream sequence seq:N"
    )
    history.add_argument(
        "--to", dest="to_position", help="last event: revision N, or stream sequence seq:N"
    )
    history.add_argument(
        "--type",
        dest="types",
        action="append",
        metavar="TYPE",
        help="only events of this type, e.g. CursorMoved (repeatable)",
    )
    history.add_argument("--agent", help="only events issued by or about this agent")
    history.add_argument("--since", help="only events at or after this ISO time (UTC if no offset)")
    history.add_argument("--until", help="only events at or before this ISO time")
    history.set_defaults(run=cmd_history)
    position_help = (
        "a revision N (the session's Nth event), a stream sequence seq:N, "
        "an event id (32 hex) or an ISO time (UTC if no offset)"
    )
    state = sub.add_parser("state", parents=[common], help="a session's state, now or back then")
    state.add_argument("session_id")
    state.add_argument("--at", metavar="POSITION", help=f"{position_help} (default: now)")
    state.set_defaults(run=cmd_state)
    differ = sub.add_parser("diff", parents=[common], help="what changed between two positions")
    differ.add_argument("session_id")
    differ.add_argument("a", metavar="A", help=position_help)
    differ.add_argument("b", metavar="B", help=position_help)
    differ.add_argument(
        "--against",
        metavar="OTHER_SESSION",
        help="B is a position of OTHER_SESSION (e.g. a fork against its origin); "
        "the session ids and agents' attach sequences do not count as differences",
    )
    differ.set_defaults(run=cmd_diff)
    explain = sub.add_parser(
        "why", parents=[common], help="the command and request chain behind an event"
    )
    explain.add_argument("session_id")
    explain.add_argument("event", metavar="EVENT", help=position_help)
    explain.add_argument(
        "--across",
        action="store_true",
        help="also list the events of other sessions sharing the correlation id, from the "
        "correlation index (a key-value bucket next to the stream, caught up first)",
    )
    explain.add_argument(
        "--no-index",
        action="store_true",
        help="like --across, but read every other session instead of the index (writes nothing)",
    )
    explain.set_defaults(run=cmd_why)
    forking = sub.add_parser(
        "fork", parents=[common], help="a new session with another's history up to a position"
    )
    forking.add_argument("session_id")
    forking.add_argument("--at", metavar="POSITION", help=f"{position_help} (default: now)")
    forking.add_argument("--as", dest="new_id", metavar="NEW_ID", required=True)
    forking.set_defaults(run=cmd_fork)
    explore = sub.add_parser(
        "explore", parents=[common], help="step through a session's history in the terminal"
    )
    explore.add_argument("session_id")
    explore.add_argument("--at", metavar="POSITION", help=f"open on this event ({position_help})")
    explore.set_defaults(run=cmd_explore)
    audit = sub.add_parser("audit", parents=[common], help="who did or tried what, and why")
    audit.add_argument("session_id")
    audit.add_argument("--agent", help="only this agent's decisions")
    audit.add_argument("--action", help="action pattern, e.g. 'cursor.*'")
    audit.add_argument("--resource", help="resource pattern, e.g. 'axis.ocean.*'")
    audit.add_argument("--outcome", choices=["allowed", "denied"])
    audit.add_argument("--since", help="ISO time (UTC if no offset)")
    audit.add_argument("--until", help="ISO time (UTC if no offset)")
    audit.add_argument(
        "--group-by", choices=GROUP_BY, help="count the decisions per agent, action, ... instead"
    )
    audit.add_argument(
        "--rebuild",
        action="store_true",
        help="discard the session's audit read model and build it again from the log",
    )
    audit.set_defaults(run=cmd_audit)
    serve = sub.add_parser("serve", parents=[common], help="serve sessions to bots over NATS")
    serve.add_argument(
        "--idle-timeout", type=float, default=300.0, help="stop session actors idle this long (s)"
    )
    serve.add_argument("--command-prefix", default=DEFAULT_COMMAND_PREFIX)
    serve.add_argument(
        "--per-principal",
        type=int,
        default=16,
        help="requests of one principal handled at once (the rest wait their turn)",
    )
    serve.add_argument(
        "--queued-per-principal",
        type=int,
        default=256,
        help="requests of one principal waiting at most (more: too_many_requests)",
    )
    serve.add_argument(
        "--lanes",
        type=int,
        default=DEFAULT_LANES,
        help="ingress lanes (connections bots' requests arrive on); as nats-config --lanes",
    )
    serve.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="partitions sessions hash into, each owned by one serve process of the stream "
        f"at a time (default {DEFAULT_PARTITIONS}; 0: any process serves any session)",
    )
    serve.add_argument(
        "--lease-ttl",
        type=float,
        default=DEFAULT_LEASE_TTL,
        metavar="SECONDS",
        help="a dead process's partitions are taken over this long after its last renewal "
        f"(default {DEFAULT_LEASE_TTL})",
    )
    serve.add_argument(
        "--compositor",
        action="append",
        default=[],
        metavar="SPEC",
        help="provide a compositor: 'synthetic', 'recorded' or 'module:attribute' (repeatable)",
    )
    serve.add_argument(
        "--compositor-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a compositor answering later answers compositor_failed, recording nothing "
        "(default 5; 0: no limit)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://ADDRESS:PORT/metrics (0: any free port; "
        "default: none)",
    )
    serve.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address the metrics listen on (default: 127.0.0.1; 0.0.0.0: every interface)",
    )
    serve.add_argument(
        "--log-level",
        default="warning",
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
        help="log messages of this level and above, to stderr (default: warning)",
    )
    serve.set_defaults(run=cmd_serve)
    from plantangenet import access as nats_access

    access = sub.add_parser(
        "nats-config",
        help="write nats-server accounts: one per bot, which reaches only its own sessions",
    )
    access.add_argument("--service-user", default="plantangenet")
    access.add_argument(
        "--service-password",
        default=os.environ.get("PLANTANGENET_SERVICE_PASSWORD"),
        required=os.environ.get("PLANTANGENET_SERVICE_PASSWORD") is None,
        help="(default: $PLANTANGENET_SERVICE_PASSWORD)",
    )
    access.add_argument(
        "--service-account", default=nats_access.DEFAULT_ACCOUNT, help="the service's account"
    )
    access.add_argument(
        "--bot",
        action="append",
        default=[],
        metavar="USER:PASSWORD:SESSIONS",
        help="a bot and the comma-separated sessions it may command and follow (repeatable); "
        "its account is bot-USER",
    )
    access.add_argument("--stream", default=DEFAULT_STREAM)
    access.add_argument("--subject-prefix", default=DEFAULT_SUBJECT_PREFIX)
    access.add_argument("--command-prefix", default=DEFAULT_COMMAND_PREFIX)
    access.add_argument(
        "--lanes",
        type=int,
        default=DEFAULT_LANES,
        help="ingress lanes of the service (as serve --lanes): bot i arrives on lane i mod N",
    )
    access.add_argument(
        "--live-prefix", default=DEFAULT_LIVE_PREFIX, help="where the stream republishes events"
    )
    access.add_argument(
        "--bot-max-consumers",
        type=int,
        metavar="N",
        help="JetStream consumers per stream in a bot's account "
        f"(default: {nats_access.DEFAULT_BOT_MAX_CONSUMERS})",
    )
    access.add_argument(
        "--bot-max-streams",
        type=int,
        metavar="N",
        help="JetStream streams in a bot's account "
        f"(default: {nats_access.DEFAULT_BOT_MAX_STREAMS})",
    )
    access.add_argument(
        "--bot-max-storage",
        metavar="SIZE",
        help="file storage of a bot's account: bytes, or e.g. 256M, 1G (default: 256M)",
    )
    access.add_argument(
        "--bot-max-memory",
        metavar="SIZE",
        help="memory storage of a bot's account: bytes, or e.g. 32M (default: 32M)",
    )
    access.add_argument(
        "--system-account",
        action="store_true",
        help="add a SYS account with user SERVICE_USER-sys (for monitoring tools)",
    )
    access.add_argument("--out", help="write to this file (mode 0600) instead of stdout")
    access.set_defaults(run=cmd_nats_config)
    cursors = sub.add_parser(
        "cursors", parents=[common], help="a session's cursors, or those covering an axis"
    )
    cursors.add_argument("session_id")
    cursors.add_argument("--axis", help="only cursors watching this axis (or a parent axis)")
    cursors.add_argument("--time", type=float, help="... at this time (needs --axis)")
    cursors.set_defaults(run=cmd_cursors)
    ledger = sub.add_parser(
        "ledger", parents=[common], help="a session's dust balances and movements"
    )
    ledger.add_argument("session_id")
    ledger.add_argument("--account", help="only this account's movements")
    ledger.set_defaults(run=cmd_ledger)
    check = sub.add_parser("verify", parents=[common], help="check a session's hash chain")
    check.add_argument("session_id")
    check.set_defaults(run=cmd_verify)
    quarantine = sub.add_parser(
        "quarantine",
        parents=[common],
        help="skip a message that is not an event of the session (it stays in the log)",
    )
    quarantine.add_argument("session_id")
    quarantine.add_argument("sequence", type=int, help="its stream sequence (verify names it)")
    quarantine.add_argument("--reason", default="", help="recorded with the quarantine")
    quarantine.set_defaults(run=cmd_quarantine)
    from plantangenet import replay_cli

    replay_cli.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args, out or sys.stdout)
    except PlantangenetError as exc:
        sys.stderr.write(f"plantangenet: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `plantangenet history X | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``state``, ``diff``, ``why``, ``fork`` and ``explore``: travel in a session's history."""

from __future__ import annotations

import argparse
from typing import TextIO

from plantangenet.cli.common import (
    dump_json,
    open_runtime,
    optional_position,
)
from plantangenet.cli.output import progress_on_stderr
from plantangenet.domain.decide import check_id
from plantangenet.events.envelope import Envelope
from plantangenet.log.correlations import CorrelationIndex
from plantangenet.projections.views import describe
from plantangenet.timetravel.fork import fork
from plantangenet.timetravel.history import (
    Grounds,
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


def cmd_state(args: argparse.Namespace, out: TextIO) -> int:
    position = optional_position(args.at)
    with open_runtime(args) as pg, progress_on_stderr() as progress:
        if position is None:
            state = pg.replay(args.session_id, progress=progress)
        else:
            state = pg.state_at(args.session_id, position, progress=progress)
    if args.json:
        dump_json(state_record(state), out)
    else:
        out.write("\n".join(describe_state(state)) + "\n")
    return 0


def cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    a, b = parse_position(args.a), parse_position(args.b)
    other = args.against
    with open_runtime(args) as pg, progress_on_stderr() as progress:
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
        dump_json(change.to_dict(), out)
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
    with open_runtime(args) as pg, progress_on_stderr() as progress:
        check_id(args.session_id, "session_id")
        index = CorrelationIndex(pg.journal) if args.across and not args.no_index else None
        answer = pg.run(
            why(
                pg.journal,
                args.session_id,
                position,
                progress=progress,
                across=args.across or args.no_index,
                index=index,
            )
        )
    if args.json:
        dump_json(answer.to_dict(), out)
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
    from plantangenet.timetravel.explore import run  # Textual: loaded only when needed

    with open_runtime(args) as pg:
        return run(pg, args.session_id, optional_position(args.at))


def cmd_fork(args: argparse.Namespace, out: TextIO) -> int:
    position = optional_position(args.at)
    with open_runtime(args) as pg, progress_on_stderr() as progress:
        if position is None:
            check_id(args.session_id, "session_id")
            position = StreamSequence(pg.run(pg.journal.last_sequence(args.session_id)))
        state = fork(pg, args.session_id, position, args.new_id, progress=progress)
        last = pg.history(state.session_id, from_sequence=state.sequence)[-1]
    origin = fork_origin(last)
    origin_sequence = origin[1] if origin is not None else None
    if args.json:
        dump_json(
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

"""The ``plantangenet`` command line.

``plantangenet demo`` runs a short scripted session on the embedded server;
``plantangenet sessions`` lists the sessions in the log; ``plantangenet
history SESSION_ID`` lists a session's events. Every command takes
``--json`` for machine output and ``--nats-url`` (or ``NATS_URL``) to use an
external server or cluster instead of the embedded one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from plantangenet.actors.agent import Agent, AgentContext
from plantangenet.errors import PlantangenetError
from plantangenet.events.envelope import Envelope
from plantangenet.journal import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, JournalConfig
from plantangenet.projections.session import SessionState
from plantangenet.runtime import Plantangenet, default_store_dir


def plain(value: Any) -> Any:
    """``value`` as JSON-friendly data (events, views, mappings, tuples, datetimes)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def envelope_record(envelope: Envelope) -> dict[str, Any]:
    """One event as a flat JSON-friendly record."""
    return {
        "sequence": envelope.sequence,
        "type": envelope.type_name,
        "version": envelope.event.version,
        "occurred_at": envelope.occurred_at.isoformat(),
        "session_id": envelope.session_id,
        "agent_id": envelope.agent_id,
        "event_id": envelope.event_id,
        "causation_id": envelope.causation_id,
        "correlation_id": envelope.correlation_id,
        "data": plain(envelope.event),
    }


def describe(envelope: Envelope) -> str:
    """A short human-readable summary of an event's content."""
    data = plain(envelope.event)
    parts = []
    for key, value in data.items():
        if value in ({}, [], None, ""):
            continue
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"{key}={shown}")
    return " ".join(parts)


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
    return Plantangenet.open(
        nats_url=args.nats_url,
        store_dir=args.store_dir,
        journal=JournalConfig(stream=args.stream, subject_prefix=args.subject_prefix),
    )


# -- commands ---------------------------------------------------------------------


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


async def _print_history(
    pg: Plantangenet, args: argparse.Namespace, out: TextIO, progress: _Progress
) -> int:
    count = 0
    if not args.json:
        out.write(f"{'SEQ':>6}  {'TIME (UTC)':<26}  {'EVENT':<22}  {'BY':<12}  DETAILS\n")
    async for envelope in pg.journal.read(
        args.session_id,
        from_sequence=args.from_sequence,
        to_sequence=args.to_sequence,
        progress=progress,
    ):
        count += 1
        if args.json:
            out.write(json.dumps(envelope_record(envelope)) + "\n")
        else:
            at = envelope.occurred_at.strftime("%Y-%m-%d %H:%M:%S.%f")
            by = envelope.agent_id or "-"
            out.write(
                f"{envelope.sequence:>6}  {at:<26}  {envelope.type_name:<22}  {by:<12}  "
                f"{describe(envelope)}\n"
            )
    return count


class _DemoAgent(Agent):
    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def setup(self, context: AgentContext) -> None:
        self.say(f"    [{context.agent_id}] setup ({context.origin})")

    def teardown(self, context: AgentContext, reason: str) -> None:
        self.say(f"    [{context.agent_id}] teardown ({reason})")


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    lines: list[str] = []

    def say(text: str) -> None:
        if not args.json:
            out.write(text + "\n")
            out.flush()
        lines.append(text)

    session_id = args.session_id or datetime.now(UTC).strftime("demo-%Y%m%d-%H%M%S")
    with _runtime(args) as pg:
        where = (
            f"embedded nats-server at {pg.url} (store {pg.server.store_dir})"
            if pg.server
            else pg.url
        )
        say(f"plantangenet demo: session {session_id} on {where}")
        session = pg.session(session_id)
        events: list[Envelope] = []
        session.on_change(events.append)

        def step(title: str, result: Any) -> None:
            say(f"  {title:<48} -> sequence {result.sequence}")

        step("start the session", session.start({"purpose": "demo", "region": "north-sea"}))
        for agent_id, kind, name in (
            ("tide-bot", "bot", "Tide gauge bot"),
            ("weather-bot", "bot", "Weather bot"),
            ("viewer", "client", "Harbour viewer"),
        ):
            step(
                f"attach {agent_id} ({kind})",
                session.attach(agent_id, kind, name, behaviour=_DemoAgent(say)),
            )
            time.sleep(0.05)  # let the agent's setup line print in order
        step(
            "tide-bot watches ocean.tide over [0, 60]",
            session.add_cursor("tide-bot", "tide", ["ocean.tide"], 0, 60),
        )
        step(
            "weather-bot watches air.* over [0, 30]",
            session.add_cursor("weather-bot", "wx", ["air.wind", "air.pressure"], 0, 30),
        )
        step(
            "viewer watches both over [0, 120]",
            session.add_cursor("viewer", "view", ["ocean.tide", "air.wind"], 0, 120),
        )
        for t in (10, 20, 30):
            step(
                f"tide-bot moves its cursor to [{t}, {t + 60}]",
                session.move_cursor("tide-bot", "tide", ["ocean.tide"], t, t + 60),
            )
        step("metadata: status=observing", session.change_metadata({"status": "observing"}))
        step("policy p1 set", session.change_policy("p1", ["viewer may read ocean.*"]))
        step(
            "weather-bot leaves (its cursor goes with it)",
            session.detach("weather-bot", "storm over"),
        )
        time.sleep(0.05)
        live = session.state
        say(
            f"  live state: {len(live.agents)} agents {sorted(live.agents)}, "
            f"cursors {sorted(live.cursors)}, {live.event_count} events, "
            f"last sequence {live.sequence}"
        )
        say(f"  the on-change hook saw {len(events)} events")

        pg.stop_session(session_id)
        time.sleep(0.05)
        say("  actor stopped; rehydrating the session from the log…")
        rehydrated = pg.session(session_id).state
        time.sleep(0.05)
        replayed = pg.replay(session_id)
        same = rehydrated == live == replayed
        say(f"  rehydrated state {'EQUALS' if same else 'DIFFERS FROM'} the live state")
        middle = pg.state_at(session_id, live.sequence - 4)
        say(
            f"  state at sequence {middle.sequence}: agents {sorted(middle.agents)}, "
            f"tide cursor at [{middle.cursors['tide'].start:g}, {middle.cursors['tide'].end:g}]"
        )
        say(f"  see it all: plantangenet history {session_id}")
        if args.json:
            json.dump(
                {
                    "session_id": session_id,
                    "equal": same,
                    "state": state_summary(live),
                    "events": [envelope_record(e) for e in events],
                },
                out,
            )
            out.write("\n")
    return 0 if same else 1


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
    common.add_argument("--json", action="store_true", help="machine-readable output")

    parser = argparse.ArgumentParser(prog="plantangenet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", parents=[common], help="run a scripted session and rehydrate it")
    demo.add_argument("--session-id", default=None, help="session id (default: demo-<time>)")
    demo.set_defaults(run=cmd_demo)
    sessions = sub.add_parser("sessions", parents=[common], help="list sessions in the log")
    sessions.set_defaults(run=cmd_sessions)
    history = sub.add_parser("history", parents=[common], help="list a session's events")
    history.add_argument("session_id")
    history.add_argument("--from", dest="from_sequence", type=int, default=1, help="first sequence")
    history.add_argument("--to", dest="to_sequence", type=int, default=None, help="last sequence")
    history.set_defaults(run=cmd_history)
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

"""``plantangenet replay-agent`` and ``replay-serve``: replay a bot against a recorded session.

``replay-agent`` runs an in-process agent (:mod:`plantangenet.timetravel.botreplay`),
``replay-serve`` serves a fork of the session to a remote bot
(:mod:`plantangenet.timetravel.replay_serve`). Exit status 0 when the bot issues the
commands it issued then, 1 when it diverges (or one of its hooks raises), 2 on an
error (unknown session, agent or position, a behaviour that cannot be loaded, a
fork id in use).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from plantangenet.actors.agent import Agent
from plantangenet.actors.session import CommandResult
from plantangenet.cli.common import open_runtime
from plantangenet.cli.output import progress_on_stderr
from plantangenet.errors import PlantangenetError
from plantangenet.events.envelope import Envelope
from plantangenet.projections.session import SessionState
from plantangenet.runtime import Plantangenet
from plantangenet.timetravel.botreplay import (
    BehaviourFactory,
    BreakAction,
    EventFilter,
    ReplayReport,
    describe_break,
    replay_agent,
)
from plantangenet.timetravel.history import StreamSequence, parse_position
from plantangenet.timetravel.replay_serve import Release, replay_serve
from plantangenet.wire.protocol import DEFAULT_COMMAND_PREFIX

POSITION_HELP = (
    "a revision N, a stream sequence seq:N, an event id (32 hex) or an ISO time (UTC if no offset)"
)


def load_behaviour(spec: str) -> BehaviourFactory:
    """``module:attribute``: an :class:`Agent` subclass or a factory ``(agent_id, kind)``.

    The current directory is searched first, as ``python -m`` does.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise PlantangenetError(f"--behaviour expects module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise PlantangenetError(f"--behaviour {spec}: {exc}") from None
    if isinstance(target, type) and not issubclass(target, Agent):
        raise PlantangenetError(f"--behaviour {spec}: {target.__name__} is not an Agent")
    if not callable(target):
        raise PlantangenetError(f"--behaviour {spec}: not a class or factory")
    factory: BehaviourFactory = target
    return factory


def _ask(question: str, out: TextIO) -> str | None:
    """Write ``question``, read a line of stdin: its answer in lower case, None at its end."""
    out.write(question)
    out.flush()
    line = sys.stdin.readline()
    if not line:
        out.write("\n")
        return None
    if not sys.stdin.isatty():  # a piped answer is not echoed
        out.write(line if line.endswith("\n") else line + "\n")
    return line.strip().lower()


class Prompt:
    """Stops at a breakpoint: shows where, then reads a line of stdin (Enter, ``s``, ``q``).

    Enter (or ``c``) continues to the next breakpoint, ``s`` stops before the next
    event, ``q`` ends the replay there, and ``x`` (given ``explore``) opens the
    explorer on the event (the recorded session), then asks again. At the end of the
    input it continues without stopping again.
    """

    def __init__(self, out: TextIO, explore: Callable[[Envelope], None] | None = None) -> None:
        self.out = out
        self.explore = explore
        self.ended = False
        #: Report entries already shown at an earlier stop.
        self.shown = 0

    def __call__(
        self, envelope: Envelope, state: SessionState, report: ReplayReport
    ) -> BreakAction:
        if self.ended:
            return "continue"
        lines = describe_break(envelope, state, report, self.shown)
        self.shown = len(report.entries)
        keys = "[Enter] continue  [s] step  [q] quit" + ("  [x] explore" if self.explore else "")
        answer = _ask("\n".join(lines) + f"\n{keys} > ", self.out)
        while answer in {"x", "explore"} and self.explore is not None:
            self.explore(envelope)
            answer = _ask(f"{keys} > ", self.out)
        if answer is None:
            self.ended = True
            self.out.write("(end of input: continuing without stopping)\n")
            return "continue"
        if answer in {"s", "step", "n", "next"}:
            return "step"
        if answer in {"q", "quit"}:
            return "quit"
        return "continue"


def _explorer(pg: Plantangenet, session_id: str) -> Callable[[Envelope], None] | None:
    """At a breakpoint, ``x`` opens the explorer on the event (on a terminal only)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return None

    def explore(envelope: Envelope) -> None:
        from plantangenet.timetravel.explore import run  # Textual: loaded only when needed

        run(pg, session_id, StreamSequence(envelope.sequence or 0))

    return explore


def cmd_replay_agent(args: argparse.Namespace, out: TextIO) -> int:
    behaviour = load_behaviour(args.behaviour)
    start = None if args.from_position is None else parse_position(args.from_position)
    stop = None if args.to_position is None else parse_position(args.to_position)
    breakpoint = EventFilter(tuple(args.break_types or ()), args.break_agent, args.break_outcome)
    stops = bool(breakpoint or args.step)
    # A bar on stderr while the replay runs; none while it stops and asks at breakpoints.
    with (
        open_runtime(args) as pg,
        progress_on_stderr(enabled=not stops, label="replaying") as progress,
    ):
        prompt = Prompt(sys.stderr if args.json else out, _explorer(pg, args.session_id))
        report = replay_agent(
            pg,
            args.session_id,
            args.agent_id,
            behaviour,
            start=start,
            stop=stop,
            breakpoint=breakpoint if breakpoint else None,
            on_break=prompt if stops else None,
            step=args.step,
            progress=progress,
        )
    return _write_report(args, out, report)


def _write_report(args: argparse.Namespace, out: TextIO, report: ReplayReport) -> int:
    if args.json:
        json.dump(report.to_dict(), out)
        out.write("\n")
    else:
        out.write("\n".join(report.describe()) + "\n")
    return 1 if report.diverged else 0


@contextlib.contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (in the main thread; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_replay_serve(args: argparse.Namespace, out: TextIO) -> int:
    at = None if args.at is None else parse_position(args.at)
    say = sys.stderr if args.json else out

    def ready(fork: SessionState) -> None:
        say.write(
            f"replay-serve: session {fork.session_id} holds the {fork.event_count} events of "
            f"{args.session_id} before the replay; serving it on {pg.url} "
            f"({args.command_prefix}.*.*): start {args.agent_id} on session {fork.session_id}\n"
        )
        say.flush()

    def released(release: Release, outcome: CommandResult | PlantangenetError | None) -> None:
        if outcome is None:
            result = f"skipped: {release.skipped}"
        elif isinstance(outcome, PlantangenetError):
            result = f"refused in the fork: {outcome}"
        else:
            result = f"fork sequence {outcome.first_sequence}"
        say.write(f"released {release.describe()} -> {result}\n")
        say.flush()

    asking = [True]  # until the input ends

    def step(release: Release) -> bool:
        if not asking[0]:
            return True
        answer = _ask(f"next: {release.describe()}\n[Enter] release  [q] stop > ", say)
        if answer is None:
            asking[0] = False
            say.write("(end of input: releasing the rest without asking)\n")
            return True
        return answer not in {"q", "quit"}

    stop = threading.Event()
    with open_runtime(args) as pg, _stopped_by_signals(stop):
        report = replay_serve(
            pg,
            args.session_id,
            args.fork_id,
            args.agent_id,
            at=at,
            speed=args.speed,
            step=step if args.step else None,
            patience=args.patience,
            stop=stop,
            on_ready=ready,
            on_release=released,
            command_prefix=args.command_prefix,
        )
    return _write_report(args, out, report)


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``replay-agent`` and ``replay-serve`` to the command line's subcommands."""
    replay = sub.add_parser(
        "replay-agent",
        parents=[common],
        help="run a bot against a recorded session; exit 1 if it acts differently",
        description="Run an in-process agent's behaviour against a session's recorded events "
        "and compare the commands it issues now with those it issued then "
        "(same / different / new / missing). Nothing is written to the session.",
    )
    replay.add_argument("session_id")
    replay.add_argument("agent_id", metavar="agent")
    replay.add_argument(
        "--behaviour",
        required=True,
        metavar="MODULE:ATTR",
        help="an Agent subclass or an agent factory (agent_id, kind) -> Agent",
    )
    replay.add_argument(
        "--from", dest="from_position", metavar="POS", help=f"report from here on ({POSITION_HELP})"
    )
    replay.add_argument("--to", dest="to_position", metavar="POS", help="replay up to here")
    stops = replay.add_argument_group(
        "breakpoints", "stop before matching events, show the session there, wait for a key"
    )
    stops.add_argument(
        "--break-type",
        dest="break_types",
        action="append",
        metavar="GLOB",
        help="event type pattern, e.g. 'Cursor*' (repeatable)",
    )
    stops.add_argument("--break-agent", metavar="AGENT", help="events issued by or about it")
    stops.add_argument("--break-outcome", choices=["allowed", "denied"])
    stops.add_argument("--step", action="store_true", help="stop before every event")
    replay.set_defaults(run=cmd_replay_agent)
    serve = sub.add_parser(
        "replay-serve",
        parents=[common],
        help="serve a fork of a recorded session to a remote bot; exit 1 if it acts differently",
        description="Fork SESSION just before AGENT's first command (or --at), serve the fork "
        "over NATS as `serve` does, and send the other participants' recorded commands to it "
        "again, in order, at the recorded pace (--speed) or one at a time (--step), never ahead "
        "of the bot. Run the bot on session FORK: its commands land in the fork only. At the "
        "end, its commands now are compared with its commands then.",
    )
    serve.add_argument("session_id")
    serve.add_argument("--as", dest="fork_id", metavar="FORK", required=True, help="a new id")
    serve.add_argument("--agent", dest="agent_id", required=True, help="the bot's agent id")
    serve.add_argument("--at", metavar="POS", help=f"fork there ({POSITION_HELP})")
    pace = serve.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="times the recorded pace (default 1; 0: no pauses, only waiting for the bot)",
    )
    pace.add_argument("--step", action="store_true", help="release one event per Enter")
    serve.add_argument(
        "--patience",
        type=float,
        default=10.0,
        help="seconds to wait for the bot to catch up, and its quiet time that ends the replay",
    )
    serve.add_argument("--command-prefix", default=DEFAULT_COMMAND_PREFIX)
    serve.set_defaults(run=cmd_replay_serve)

"""``plantangenet replay-agent``: replay a bot against a recorded session (see botreplay).

Exit status 0 when the agent issues the commands it issued then, 1 when it
diverges (or one of its hooks raises), 2 on an error (unknown session, agent or
position, a behaviour that cannot be loaded).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, TextIO

from plantangenet.actors.agent import Agent
from plantangenet.botreplay import (
    BehaviourFactory,
    BreakAction,
    EventFilter,
    ReplayReport,
    describe_break,
    replay_agent,
)
from plantangenet.errors import PlantangenetError
from plantangenet.events.envelope import Envelope
from plantangenet.history import parse_position
from plantangenet.projections.session import SessionState

POSITION_HELP = "a stream sequence, an event id (32 hex) or an ISO time (UTC if no offset)"


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


class Prompt:
    """Stops at a breakpoint: shows where, then reads a line (Enter, ``s``, ``q``).

    Enter (or ``c``) continues to the next breakpoint, ``s`` stops before the next
    event, ``q`` ends the replay there. At the end of the input it continues
    without stopping again.
    """

    def __init__(self, inp: TextIO, out: TextIO) -> None:
        self.inp = inp
        self.out = out
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
        self.out.write("\n".join(lines) + "\n")
        self.out.write("[Enter] continue  [s] step  [q] quit > ")
        self.out.flush()
        line = self.inp.readline()
        if line and not self.inp.isatty():  # a piped answer is not echoed
            self.out.write(line if line.endswith("\n") else line + "\n")
        if not line:
            self.ended = True
            self.out.write("\n(end of input: continuing without stopping)\n")
            return "continue"
        answer = line.strip().lower()
        if answer in {"s", "step", "n", "next"}:
            return "step"
        if answer in {"q", "quit"}:
            return "quit"
        return "continue"


def cmd_replay_agent(args: argparse.Namespace, out: TextIO) -> int:
    from plantangenet.cli import _runtime  # cli imports this module: import it when run

    behaviour = load_behaviour(args.behaviour)
    start = None if args.from_position is None else parse_position(args.from_position)
    stop = None if args.to_position is None else parse_position(args.to_position)
    breakpoint = EventFilter(tuple(args.break_types or ()), args.break_agent, args.break_outcome)
    prompt = Prompt(sys.stdin, sys.stderr if args.json else out)
    with _runtime(args) as pg:
        report = replay_agent(
            pg,
            args.session_id,
            args.agent_id,
            behaviour,
            start=start,
            stop=stop,
            breakpoint=breakpoint if breakpoint else None,
            on_break=prompt if (breakpoint or args.step) else None,
            step=args.step,
        )
    if args.json:
        json.dump(report.to_dict(), out)
        out.write("\n")
    else:
        out.write("\n".join(report.describe()) + "\n")
    return 1 if report.diverged else 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``replay-agent`` to the command line's subcommands."""
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

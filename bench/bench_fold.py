"""Fold rate of a small and a large session: events/s, and their ratio (issue 18).

Pure CPU (no NATS): the envelopes are built in memory (not timed), then each
fold takes them one by one, as a replay does:

* ``session``: :func:`plantangenet.projections.session.evolve` (the session state);
* ``cursor index``: :meth:`CursorIndex.apply`;
* ``audit``: :class:`Audit` (one entry per authorized resource);
* ``ledger``: :meth:`Ledger.apply`;
* ``agents``: :func:`evolve_agent`, each event into the state of the agent it is
  about (as the session actor hands them out);
* ``(dicts)``: not a fold of the library but a reference: the same events into
  plain dicts changed in place (no state kept per event). It costs nothing per
  event but memory traffic, so its ratio is what the machine's caches alone do
  to a session of 10,000 agents.

Two sessions of ``--events`` events each (100,000 by default), of the same
event types in the same order; only how many agents and cursors they spread over
differs:

* large: ``--large`` agents (10,000) attach, each adding a cursor and being given
  dust (30,000 events), then the mix below up to ``--events``;
* small: ``--small`` agents (10) do the same, attaching in turn as many times
  (again and again: the fold takes that leniently), then the same mix.

The mix: 90% cursor moves, 5% charges, 2% role grants, 2% revokes, and 1% an
agent detaching (its cursor going with it) and attaching again with a new one.
A fold whose cost per event does not grow with the session runs both at the same
rate: ratio (large / small events/s) near 1; the target is at least 0.8.

Timed ``--repeats`` times (small and large alternating, each after a
``gc.collect()``); the median is printed, and in brackets the ratio of the best runs. Run:
``.venv/bin/python bench/bench_fold.py [--events 100000] [--small 10] [--large 10000]``
(``--only session,cursor index``, ``--require-ratio R``: exit 2 if the session
fold's ratio is below ``R``).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plantangenet.events import (
    AgentAttached,
    AgentDetached,
    Authorization,
    CursorAdded,
    CursorMoved,
    Envelope,
    Event,
    RoleGranted,
    RoleRevoked,
    SessionStarted,
)
from plantangenet.events.dust import DustCharged, DustDeposited, movements
from plantangenet.projections.agent import AgentState, evolve_agent
from plantangenet.projections.audit import Audit
from plantangenet.projections.cursors import CursorIndex
from plantangenet.projections.ledger import Ledger
from plantangenet.projections.session import CursorView, SessionState, cursor_view, evolve

SID = "bench"
AT = datetime(2025, 1, 1, tzinfo=UTC)
AXES = ("ocean.temperature", "ocean.salinity", "air.pressure", "ocean")


def session_events(agents: int, total: int, attachments: int, seed: int = 18) -> list[Envelope]:
    """``attachments`` attachments of ``agents`` agents in turn, each with a cursor and dust,
    then the mix up to ``total`` events (the same types for any ``agents``)."""
    rng = random.Random(seed)
    envelopes: list[Envelope] = []

    def add(event: Event, action: str, resource: str) -> None:
        sequence = len(envelopes) + 1
        auth = Authorization(action, (resource,), ("bench",), 1)
        envelopes.append(
            Envelope(
                event,
                SID,
                f"e{sequence}",
                f"c{sequence}",
                f"c{sequence}",
                AT,
                getattr(event, "agent_id", None),
                sequence,
                authorization=auth,
            )
        )

    def region() -> tuple[tuple[str, ...], float, float]:
        start = rng.uniform(0.0, 1000.0)
        return (rng.choice(AXES),), start, start + rng.uniform(1.0, 50.0)

    def attach(n: int) -> None:
        agent, cursor = f"a{n}", f"c{n}"
        add(AgentAttached(agent, "bot", f"Bot {n}", f"bot{n}@bots"), "agent.attach", agent)
        add(CursorAdded(agent, cursor, *region()), "cursor.add", f"cursor.{cursor}")
        add(DustDeposited(agent, 1000), "dust.deposit", agent)

    add(SessionStarted(SID, {"purpose": "bench"}), "session.start", "session")
    for n in range(attachments):
        attach(n % agents)
    while len(envelopes) < total:
        n = int(rng.random() * agents)  # one draw whatever the number of agents
        agent, cursor = f"a{n}", f"c{n}"
        roll = rng.random()
        if roll < 0.90:
            add(CursorMoved(agent, cursor, *region()), "cursor.move", f"cursor.{cursor}")
        elif roll < 0.95:
            add(DustCharged(agent, 1, "cursor.query", cursor), "cursor.query", cursor)
        elif roll < 0.97:
            add(RoleGranted(agent, "watcher"), "role.grant", agent)
        elif roll < 0.99:
            add(RoleRevoked(agent, "watcher"), "role.revoke", agent)
        else:  # leave (its cursor goes with it), come back with a new one
            add(AgentDetached(agent, "bench"), "agent.detach", agent)
            attach(n)
    return envelopes[:total]


def folds(envelopes: Sequence[Envelope]) -> dict[str, Callable[[], object]]:
    """Each fold of ``envelopes``, by name."""

    def session() -> object:
        state = SessionState(SID)
        for envelope in envelopes:
            state = evolve(state, envelope)
        return state

    def cursor_index() -> object:
        index = CursorIndex()
        for envelope in envelopes:
            index.apply(envelope)
        return index

    def audit() -> object:
        trail = Audit()
        for envelope in envelopes:
            trail(envelope)
        return trail

    def ledger() -> object:
        book = Ledger()
        for envelope in envelopes:
            book.apply(envelope)
        return book

    def agents() -> object:  # each event to the agent it is about, as the session actor does
        states: dict[str, AgentState] = {}
        for envelope in envelopes:
            agent_id = getattr(envelope.event, "agent_id", None)
            if agent_id is not None:
                state = states.get(agent_id) or AgentState(agent_id)
                states[agent_id] = evolve_agent(state, envelope)
        return states

    def dicts() -> object:  # the reference: plain dicts changed in place, no state per event
        cursors: dict[str, CursorView] = {}
        attached: dict[str, AgentAttached] = {}
        roles: dict[str, tuple[str, ...]] = {}
        balances: dict[str, int] = {}
        for envelope in envelopes:
            event = envelope.event
            match event:
                case CursorMoved() | CursorAdded():
                    cursors[event.cursor_id] = cursor_view(event)
                case AgentAttached(agent_id=agent_id):
                    attached[agent_id] = event
                case AgentDetached(agent_id=agent_id):
                    attached.pop(agent_id, None)
                    roles.pop(agent_id, None)
                case RoleGranted(agent_id=agent_id, role=role):
                    roles[agent_id] = (role,)
                case RoleRevoked(agent_id=agent_id):
                    roles.pop(agent_id, None)
                case DustDeposited() | DustCharged():
                    for account, amount in movements(event).items():
                        balances[account] = balances.get(account, 0) + amount
        return cursors, attached, roles, balances

    return {
        "session": session,
        "cursor index": cursor_index,
        "audit": audit,
        "ledger": ledger,
        "agents": agents,
        "(dicts)": dicts,
    }


FOLDS = tuple(folds(()))


def timed(fold: Callable[[], object]) -> float:
    """CPU seconds ``fold`` takes (another process's load does not count)."""
    gc.collect()
    start = time.process_time()
    result = fold()
    elapsed = time.process_time() - start
    del result  # freed outside the timing
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10, help="agents in the small session")
    parser.add_argument("--large", type=int, default=10_000, help="agents in the large session")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=",".join(FOLDS), help="folds to run, comma-separated")
    parser.add_argument("--require-ratio", type=float, default=None)
    args = parser.parse_args(argv)
    names = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(names) - set(FOLDS))
    if unknown:
        raise SystemExit(f"unknown fold {unknown[0]!r} (known: {', '.join(FOLDS)})")
    if 3 * args.large + 1 > args.events:
        raise SystemExit("--events must leave room for the large session's attachments")
    sessions = {
        f"{args.small} agents": session_events(args.small, args.events, args.large),
        f"{args.large} agents": session_events(args.large, args.events, args.large),
    }
    print(
        f"bench_fold: {args.events} events per session; {args.repeats} runs of each, "
        "alternating small and large; median (best)"
    )
    print(f"{'fold':<14}" + "".join(f"{label + ' ev/s':>20}" for label in sessions) + "   ratio")
    session_ratio = None
    runners = [folds(envelopes) for envelopes in sessions.values()]
    for name in names:
        times: list[list[float]] = [[] for _ in sessions]
        for _ in range(args.repeats):
            for runs, runner in zip(times, runners, strict=True):
                runs.append(timed(runner[name]))
        medians = [args.events / statistics.median(runs) for runs in times]
        bests = [args.events / min(runs) for runs in times]
        ratio, best_ratio = medians[1] / medians[0], bests[1] / bests[0]
        if name == "session":
            session_ratio = ratio
        print(
            f"{name:<14}"
            + "".join(f"{rate:>20,.0f}" for rate in medians)
            + f"   {ratio:.2f} ({best_ratio:.2f})"
        )
    print("ratio: large / small events/s (1.00: the same rate; the target is >= 0.80)")
    if args.require_ratio is not None and session_ratio is not None:
        print(f"session fold ratio {session_ratio:.2f}, required {args.require_ratio}")
        return 2 if session_ratio < args.require_ratio else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

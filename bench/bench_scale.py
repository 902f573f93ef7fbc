"""Scale: one session with 10 / 1,000 / 10,000 attached agents, in one run.

For each size, in a child process of its own (so that its threads and RSS are its
own; the parent starts one nats-server for all of them):

* attach: ``N`` ``AttachAgent`` commands sent with ``submit_many`` (batches of
  ``--chunk``, all outstanding at once) until every one is stored; agents/s.
  A share ``--active`` of the agents (at least one) gets a behaviour from the
  runtime's agent factory that listens (``on_event``) and counts its hooks: those
  run in agent actors. The others are remote bots: no behaviour, no actor.
* cursors (not timed): one ``AddCursor`` per agent.
* move: ``MoveCursor`` commands round-robin over the agents (see ``--events``),
  with ``submit_many``; moves/s. Every active agent is woken by its moves.
* idle: the agent actors are passivated after ``--idle`` seconds without an
  event (``Plantangenet(agent_idle_timeout=...)``); the run waits until all are.
* probes (issue 18 point 3), once the agent actors sleep: ``--probe`` rounds, each
  attaching one probe agent to the session and to an empty one started beside it
  (which one first alternates), each sent alone and waited for (the round trip),
  then detaching both (not timed); then as many moves of a probe cursor in each, in
  turn the same way. Median round trip in µs, full and empty; interleaved, so both
  see the same moments of a noisy machine. The parent measures the same round trip
  for a raw nats-py ``js.publish`` (one at a time, with
  ``Nats-Expected-Last-Subject-Sequence``): the single-append latency.

The moves are as many as make each session ``--events`` events long (100,000 by
default, at least ``--moves``). At the end the parent replays every size's session
(``Plantangenet.replay`` on a fresh runtime), the sizes in turn, ``--replays`` times:
median events/s, and the median share of each replay's wall time spent in CPython's
cyclic garbage collector (``gc.callbacks``).

Threads are ``threading.active_count()`` of the child: at rest before the session,
the peak while attaching and moving (sampled every 5 ms by one more thread, not
counted), after the moves, and once the agent actors were passivated. RSS is the
child's ``VmRSS`` at the end and its peak (``VmHWM``). At the end the run checks
that each active agent saw every event about it exactly once, in order, and that
setup ran once per agent and teardown never (no agent with behaviour was detached).

Run: .venv/bin/python bench/bench_scale.py (``--agents 10,1000,10000 --active 0.01
--moves 2000 --events 100000 --probe 200 --replays 3 --chunk 1000 --idle 1.0``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

import nats
from nats.js.api import StorageType, StreamConfig

from plantangenet import (
    AddCursor,
    Agent,
    AgentContext,
    AttachAgent,
    Command,
    DetachAgent,
    Envelope,
    JournalConfig,
    Limits,
    MoveCursor,
    Plantangenet,
    SessionHandle,
)
from plantangenet.nats.embedded import EmbeddedNats

STREAM = "BENCH_SCALE"
PREFIX = "bench.scale"


def journal_config() -> JournalConfig:
    return JournalConfig(stream=STREAM, subject_prefix=PREFIX, idle_timeout=30.0)


class Counting(Agent):
    """An active agent: counts its hooks, and checks the events come in order, once."""

    def __init__(self) -> None:
        self.setups = 0
        self.teardowns = 0
        self.seen = 0
        self.last = 0
        self.disorder = 0

    def setup(self, context: AgentContext) -> None:
        self.setups += 1

    def teardown(self, context: AgentContext, reason: str) -> None:
        self.teardowns += 1

    def on_event(self, context: AgentContext, envelope: Envelope) -> None:
        sequence = envelope.sequence or 0
        if sequence <= self.last:
            self.disorder += 1
        self.last = sequence
        self.seen += 1


class PeakThreads:
    """Samples ``threading.active_count()`` (less its own thread) until stopped."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-threads", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, threading.active_count() - 1)

    def __enter__(self) -> PeakThreads:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def send(session: SessionHandle, commands: list[Command], chunk: int) -> float:
    """Send ``commands`` in ``submit_many`` batches, all outstanding; seconds until stored."""
    start = time.perf_counter()
    futures = [session.submit_many(commands[i : i + chunk]) for i in range(0, len(commands), chunk)]
    for future in futures:
        for outcome in future.result(600):
            if isinstance(outcome, Exception):
                raise outcome
    return time.perf_counter() - start


class GcTime:
    """Seconds spent in CPython's cyclic garbage collector while in the ``with`` block."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started

    def __enter__(self) -> GcTime:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def _timed(session: SessionHandle, command: Command) -> float:
    """Seconds until ``command`` is answered (sent alone, nothing else outstanding)."""
    began = time.perf_counter()
    outcome = session.submit(command).result(60)
    took = time.perf_counter() - began
    if isinstance(outcome, Exception):
        raise outcome
    return took


def probe(full: SessionHandle, empty: SessionHandle, count: int) -> dict[str, float]:
    """Median µs of one-at-a-time attaches and moves, in ``full`` and in ``empty`` in turn.

    Each round attaches a probe agent to both sessions (which one first alternates),
    timing each round trip, then detaches both (not timed): the sessions keep their
    sizes. Then a probe cursor in each is moved ``count`` times, in turn the same way.
    Interleaving makes the two medians see the same moments of a noisy machine.
    """
    times: dict[str, list[float]] = {
        f"{what}_rtt_{side}": [] for what in ("attach", "move") for side in ("full", "empty")
    }
    sides = [("full", full), ("empty", empty)]
    for i in range(count):
        for side, session in sides if i % 2 == 0 else sides[::-1]:
            times[f"attach_rtt_{side}"].append(
                _timed(session, AttachAgent(agent_id=f"probe-{i}", kind="bot"))
            )
        for _, session in sides:
            _timed(session, DetachAgent(agent_id=f"probe-{i}"))
    for _, session in sides:
        _timed(session, AttachAgent(agent_id="probe-mover", kind="bot"))
        _timed(
            session,
            AddCursor(agent_id="probe-mover", cursor_id="c-probe", axes=("x",), start=0, end=1),
        )
    for i in range(count):
        for side, session in sides if i % 2 == 0 else sides[::-1]:
            move = MoveCursor(
                agent_id="probe-mover", cursor_id="c-probe", axes=("x",), start=i, end=i + 1
            )
            times[f"move_rtt_{side}"].append(_timed(session, move))
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


async def raw_append_us(url: str, count: int, size: int) -> float:
    """Median µs of a raw ``js.publish`` with the concurrency guard, one at a time."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream = f"{STREAM}_RAW"
    await js.add_stream(
        StreamConfig(name=stream, subjects=[f"{PREFIX}.raw.>"], storage=StorageType.FILE)
    )
    payload, last, times = b"x" * size, 0, []
    for _ in range(count):
        start = time.perf_counter()
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
        ack = await js.publish(f"{PREFIX}.raw.s", payload, headers=headers)
        times.append(time.perf_counter() - start)
        last = ack.seq
    await js.delete_stream(stream)
    await nc.close()
    return statistics.median(times) * 1e6


def _sleeping(session: SessionHandle) -> tuple[int, int]:
    """(agent actors running, agents passivated)."""
    return session.query(lambda actor: (len(actor.agents), len(actor.sleeping))).result(30)


def child(url: str, agents: int, args: argparse.Namespace) -> dict[str, Any]:
    active_every = max(1, round(1 / args.active)) if args.active > 0 else agents + 1
    behaviours: dict[str, Counting] = {}

    def factory(agent_id: str, kind: str) -> Agent | None:
        if agent_id.startswith("probe") or int(agent_id.rsplit("-", 1)[1]) % active_every:
            return None  # a remote bot: no behaviour, no actor
        behaviours[agent_id] = Counting()
        return behaviours[agent_id]

    session_id = f"scale-{agents}"
    limits = Limits(max_agents=max(agents, 1_000) + 2)
    result: dict[str, Any] = {"agents": agents}
    with Plantangenet.open(
        nats_url=url,
        journal=journal_config(),
        agent_factory=factory,
        limits=limits,
        agent_idle_timeout=args.idle,
    ) as pg:
        session = pg.session(session_id)
        session.start()
        result["threads_at_rest"] = threading.active_count()
        ids = [f"agent-{i}" for i in range(agents)]
        with PeakThreads() as peak:
            attach: list[Command] = [AttachAgent(agent_id=a, kind="bot") for a in ids]
            attach_s = send(session, attach, args.chunk)
            result["threads_after_attach"] = threading.active_count() - 1
            cursors: list[Command] = [
                AddCursor(agent_id=a, cursor_id=f"c-{a}", axes=("x",), start=0, end=1) for a in ids
            ]
            send(session, cursors, args.chunk)
            moves = max(agents, args.moves, args.events - 2 * agents - 1)
            moving: list[Command] = [
                MoveCursor(
                    agent_id=ids[i % agents],
                    cursor_id=f"c-{ids[i % agents]}",
                    axes=("x",),
                    start=i,
                    end=i + 1,
                )
                for i in range(moves)
            ]
            move_s = send(session, moving, args.chunk)
            result["threads_after_moves"] = threading.active_count() - 1
        result["threads_peak"] = peak.peak
        result["attach_per_s"] = agents / attach_s
        result["moves"] = moves
        result["move_per_s"] = moves / move_s
        result["active"] = len(behaviours)
        result["actors_after_moves"] = _sleeping(session)[0]
        deadline = time.monotonic() + 30 + 4 * args.idle
        while _sleeping(session)[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        running, sleeping = _sleeping(session)
        time.sleep(0.2)  # the passivated actors' threads finish
        result["threads_idle"] = threading.active_count()
        empty = pg.session(f"{session_id}-empty")
        empty.start()
        result |= probe(session, empty, args.probe)
        result["actors_idle"] = running
        result["passivated"] = sleeping
        events = session.state.event_count
        # What each active agent must have seen: its attach, its cursor, its moves.
        expected = {a: 2 + sum(1 for i in range(moves) if ids[i % agents] == a) for a in behaviours}
        result["seen_ok"] = all(b.seen == expected[a] for a, b in behaviours.items())
        result["disorder"] = sum(b.disorder for b in behaviours.values())
        result["setups"] = sorted({b.setups for b in behaviours.values()})
        result["teardowns"] = sum(b.teardowns for b in behaviours.values())
        result["rss_mib"] = h.rss_kib() / 1024
        result["rss_peak_mib"] = h.peak_rss_kib() / 1024
    result["events"] = events
    return result


def replays(url: str, rows: list[dict[str, Any]], rounds: int) -> None:
    """Replay every size's session on a fresh runtime, the sizes in turn, ``rounds`` times;
    the median events/s and share of the time in CPython's GC go into each row."""
    rates: dict[int, list[float]] = {row["agents"]: [] for row in rows}
    collecting: dict[int, list[float]] = {row["agents"]: [] for row in rows}
    limits = Limits(max_agents=max(r["agents"] for r in rows) + 1_000)
    for round_ in range(rounds):
        for row in rows if round_ % 2 == 0 else rows[::-1]:
            agents = row["agents"]
            with Plantangenet.open(nats_url=url, journal=journal_config(), limits=limits) as fresh:
                gc.collect()
                with GcTime() as gc_time:
                    start = time.perf_counter()
                    replayed = fresh.replay(f"scale-{agents}")
                    took = time.perf_counter() - start
            assert replayed.event_count == row["events"]
            assert len(replayed.agents) == agents + 1  # and the probes' mover
            rates[agents].append(row["events"] / took)
            collecting[agents].append(gc_time.seconds / took)
    for row in rows:
        row["replay_per_s"] = statistics.median(rates[row["agents"]])
        row["replay_gc_share"] = statistics.median(collecting[row["agents"]])


def table(rows: Iterable[dict[str, Any]]) -> str:
    columns = [
        ("agents", "agents", "{:,}"),
        ("active", "with behaviour", "{:,}"),
        ("attach_per_s", "attach/s", "{:,.0f}"),
        ("move_per_s", "moves/s", "{:,.0f}"),
        ("events", "events", "{:,}"),
        ("replay_per_s", "replay events/s", "{:,.0f}"),
        ("replay_gc_share", "of it in GC", "{:.0%}"),
        ("attach_rtt_empty", "attach µs empty", "{:,.0f}"),
        ("attach_rtt_full", "attach µs full", "{:,.0f}"),
        ("move_rtt_empty", "move µs empty", "{:,.0f}"),
        ("move_rtt_full", "move µs full", "{:,.0f}"),
        ("threads_at_rest", "threads at rest", "{}"),
        ("threads_peak", "threads peak", "{}"),
        ("threads_after_moves", "after moves", "{}"),
        ("threads_idle", "idle (passivated)", "{}"),
        ("rss_mib", "RSS MiB", "{:.0f}"),
        ("rss_peak_mib", "peak RSS MiB", "{:.0f}"),
    ]
    data = [[fmt.format(row[key]) for key, _, fmt in columns] for row in rows]
    widths = [
        max(len(title), *(len(r[i]) for r in data)) for i, (_, title, _) in enumerate(columns)
    ]
    lines = ["  ".join(title.rjust(w) for (_, title, _), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in data]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="10,1000,10000", help="sizes, comma-separated")
    parser.add_argument("--active", type=float, default=0.01, help="share with behaviour")
    parser.add_argument("--moves", type=int, default=2000, help="at least this many moves")
    parser.add_argument("--events", type=int, default=100_000, help="session length to replay")
    parser.add_argument("--probe", type=int, default=200, help="one-at-a-time attaches/moves")
    parser.add_argument("--replays", type=int, default=3, help="replays (median)")
    parser.add_argument("--chunk", type=int, default=1000, help="commands per submit_many")
    parser.add_argument("--idle", type=float, default=1.0, help="agent_idle_timeout (s)")
    parser.add_argument("--child", nargs=2, metavar=("URL", "AGENTS"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.child:
        url, agents = args.child
        print(json.dumps(child(url, int(agents), args)))
        return 0
    sizes = [int(s) for s in args.agents.split(",")]
    print(h.environment_line())
    print(
        f"one session per size; {args.active:.0%} of the agents with behaviour (listening), "
        f"the rest remote bots; agent_idle_timeout={args.idle}s; submit_many batches of "
        f"{args.chunk}"
    )
    rows = []
    with EmbeddedNats() as server:
        for agents in sizes:
            cmd = [
                sys.executable,
                __file__,
                *("--child", server.url, str(agents)),
                *("--active", str(args.active), "--moves", str(args.moves)),
                *("--events", str(args.events), "--probe", str(args.probe)),
                *("--replays", str(args.replays)),
                *("--chunk", str(args.chunk), "--idle", str(args.idle)),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                print(done.stdout, done.stderr, file=sys.stderr)
                return 1
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{agents:,} agents: {row['events']:,} events ({row['moves']:,} moves); "
                f"agent actors running after the moves {row['actors_after_moves']}, "
                f"after idling {row['actors_idle']} ({row['passivated']} passivated); "
                f"active agents saw every event about them once, in order: "
                f"{row['seen_ok'] and not row['disorder']}; setups per agent {row['setups']}, "
                f"teardowns {row['teardowns']}",
                flush=True,
            )
        raw_us = asyncio.run(raw_append_us(server.url, max(args.probe, 50), 400))
        replays(server.url, rows, args.replays)
    print()
    print(table(rows))
    print()
    print(f"raw single append (js.publish with the guard, one at a time): {raw_us:,.0f} µs median")
    for row in rows:
        print(
            f"{row['agents']:,} agents: attach round trip full/empty "
            f"{row['attach_rtt_full'] / row['attach_rtt_empty']:.2f}, move round trip "
            f"full/empty {row['move_rtt_full'] / row['move_rtt_empty']:.2f}, "
            f"move/raw append {row['move_rtt_full'] / raw_us:.2f}, attach/raw append "
            f"{row['attach_rtt_full'] / raw_us:.2f}"
        )
    small, large = rows[0], rows[-1]
    print(
        f"replay {large['agents']:,} agents / {small['agents']:,} agents (events/s, "
        f"{large['events']:,} / {small['events']:,} events): "
        f"{large['replay_per_s'] / small['replay_per_s']:.2f}; attach round trip at "
        f"{large['agents']:,} agents / at {small['agents']:,}: "
        f"{large['attach_rtt_full'] / small['attach_rtt_full']:.2f}"
    )
    ok = all(r["seen_ok"] and not r["disorder"] and r["teardowns"] == 0 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

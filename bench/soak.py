"""Soak: N bots for M minutes against one ``plantangenet serve``, then an exact replay check.

Starts an embedded ``nats-server`` (temporary store, removed on exit) and one
``plantangenet serve`` subprocess on it. Each of ``--bots`` bots (default 10), a
``BotClient`` with its own NATS connection in this process, opens its OWN session,
gives it a policy letting its agent work cursors and metadata, attaches itself once,
then loops for ``--minutes`` (default 2) over commands issued as its agent: add a
cursor (up to 5), move one (most of the time), remove one, set or remove metadata
keys. Every command has a fresh id; a request with no reply is sent again with the
same id until it is answered. The bot counts acknowledged commands and errors (by
code) and keeps its own model of the session from the acknowledged ones only.

Every ``--sample-every`` seconds the service process's RSS and thread count are read
from ``/proc/<pid>/status``. At the end the service is stopped (SIGTERM), and a fresh
runtime rehydrates every session from the log: the session's events must be caused by
exactly the commands its bot was told were acknowledged (by command id, each with the
events its reply named), the hash chain must verify, and the folded state (agents,
cursors, metadata) must equal the bot's model. Prints a summary; exits 1 on any
mismatch or unresolved command.

The replay check's reads are timed too: ``pg.history``, ``verify`` and
``pg.replay`` each read every session once, and so, after them, does the raw
baseline -- the raw nats-py push consumer (callback), the fastest read of the
same messages we found with raw nats-py (``_harness.raw_push_read``: an
ephemeral AckNone push consumer with flow control delivering to an ``async``
callback; the variants measured are in its docstring). The summary prints each
library read's events/s, the raw msgs/s and the ratios library / raw.

Run: .venv/bin/python bench/soak.py [--bots 10] [--minutes 2] [--sample-every 5]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

from plantangenet import EmbeddedNats, JournalConfig, Plantangenet
from plantangenet.errors import PlantangenetError
from plantangenet.events.envelope import new_id
from plantangenet.log.verify import verify
from plantangenet.wire.client import BotClient

STREAM = "SOAK"
PREFIX = "soak.events"
AXES = (("ocean.temp",), ("ocean.temp", "ocean.salinity"), ("air.wind",))
KEYS = tuple(f"k{i}" for i in range(8))
MAX_CURSORS = 5


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bots", type=int, default=10, help="bots, one session each")
    p.add_argument("--minutes", type=float, default=2.0, help="how long the bots work")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--seed", type=int, default=7, help="seed of the bots' choices")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply")
    return p.parse_args()


# -- the service process ---------------------------------------------------------------------


class Serve:
    """``plantangenet serve`` as a subprocess on ``url``."""

    def __init__(self, url: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "plantangenet",
            "serve",
            "--nats-url",
            url,
            "--stream",
            STREAM,
            "--subject-prefix",
            PREFIX,
        ]
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._err, cwd=h.ROOT, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.stop()
            raise RuntimeError(f"plantangenet serve did not start: {line!r}\n{self.stderr()}")
        self.pid = self.proc.pid

    def status(self) -> dict[str, int]:
        """``VmRSS`` (KiB) and ``Threads`` of the service process now."""
        values: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "Threads"):
                    values[key] = int(rest.split()[0])
        return values

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")

    def stop(self) -> tuple[int | None, str]:
        """SIGTERM, wait; the exit status and what it printed after the ready line."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return self.proc.returncode, out or ""


# -- bots ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Model:
    """What a bot believes its session is, from its acknowledged commands only."""

    agents: set[str] = dataclasses.field(default_factory=set)
    cursors: dict[str, tuple[tuple[str, ...], float, float]] = dataclasses.field(
        default_factory=dict
    )
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Bot:
    index: int
    session_id: str
    agent_id: str
    rng: random.Random
    model: Model = dataclasses.field(default_factory=Model)
    #: command id -> event type names its reply listed (acknowledged, stored)
    acked: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: command id -> the AccessDenied sequence (refused, but recorded in the log)
    recorded_refusals: dict[str, int] = dataclasses.field(default_factory=dict)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    unresolved: list[str] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)
    retries: int = 0
    next_cursor: int = 0

    async def send(
        self, client: BotClient, name: str, args: dict[str, Any], *, as_agent: bool = True
    ) -> dict[str, Any] | None:
        """One command, resent with the same id until answered; the reply, or None if refused."""
        command_id = new_id()
        issued_by = self.agent_id if as_agent else None
        began = time.monotonic()
        for attempt in range(6):
            try:
                reply = await client.request(
                    self.session_id, name, args, command_id=command_id, issued_by=issued_by
                )
            except PlantangenetError as exc:
                if exc.code == "journal_error" and "no reply" in str(exc) and attempt < 5:
                    self.retries += 1
                    continue  # no answer at all: the same id again (applied at most once)
                if exc.code == "access_refused":
                    self.recorded_refusals[command_id] = int(getattr(exc, "sequence", 0))
                if exc.code == "journal_error" and "no reply" in str(exc):
                    self.unresolved.append(command_id)
                self.errors[exc.code] += 1
                return None
            self.latencies.append(time.monotonic() - began)
            self.acked[command_id] = list(reply["events"])
            return reply
        raise AssertionError("unreachable")

    async def setup(self, client: BotClient) -> None:
        await client.open(self.session_id, {"bot": self.index})
        self.model.metadata = {"bot": self.index}
        statement = {
            "id": "bot-works",
            "effect": "allow",
            "roles": ["worker"],
            "actions": ["cursor.*", "metadata.*"],
            "resources": ["*"],
        }
        assert await self.send(client, "change_policy", {"replace": [statement]}, as_agent=False)
        assert await self.send(client, "attach", {"agent_id": self.agent_id}, as_agent=False)
        self.model.agents.add(self.agent_id)
        grant = {"agent_id": self.agent_id, "role": "worker"}
        assert await self.send(client, "grant_role", grant, as_agent=False)

    async def step(self, client: BotClient) -> None:
        rng, model = self.rng, self.model
        roll = rng.random()
        cursors = sorted(model.cursors)
        if not cursors or (roll < 0.08 and len(cursors) < MAX_CURSORS):
            cursor = f"c{self.next_cursor}"
            self.next_cursor += 1
            region = self.region()
            if await self.send(client, "add_cursor", self.cursor_args(cursor, region)):
                model.cursors[cursor] = region
        elif roll < 0.14:
            cursor = rng.choice(cursors)
            args: dict[str, Any] = {"agent_id": self.agent_id, "cursor_id": cursor}
            if await self.send(client, "remove_cursor", args):
                del model.cursors[cursor]
        elif roll < 0.26:
            changed = {rng.choice(KEYS): rng.randint(0, 1000) for _ in range(rng.randint(0, 2))}
            removed = [k for k in rng.sample(KEYS, rng.randint(0, 2)) if k not in changed]
            if not changed and not removed:
                changed = {KEYS[0]: 0}
            args = {"changed": changed, "removed": removed}
            if await self.send(client, "change_metadata", args):
                for key in removed:
                    model.metadata.pop(key, None)
                model.metadata.update(changed)
        else:
            cursor = rng.choice(cursors)
            region = self.region()
            if await self.send(client, "move_cursor", self.cursor_args(cursor, region)):
                model.cursors[cursor] = region

    def region(self) -> tuple[tuple[str, ...], float, float]:
        start = float(self.rng.randint(0, 10_000))
        return self.rng.choice(AXES), start, start + self.rng.randint(0, 600)

    def cursor_args(
        self, cursor: str, region: tuple[tuple[str, ...], float, float]
    ) -> dict[str, Any]:
        axes, start, end = region
        return {
            "agent_id": self.agent_id,
            "cursor_id": cursor,
            "axes": list(axes),
            "start": start,
            "end": end,
        }


async def run_bots(url: str, bots: list[Bot], seconds: float, timeout: float) -> float:
    config = JournalConfig(stream=STREAM, subject_prefix=PREFIX)
    clients = [
        await BotClient.connect(url, journal=config, timeout=timeout, retries=0) for _ in bots
    ]
    try:
        await asyncio.gather(*(bot.setup(c) for bot, c in zip(bots, clients, strict=True)))
        began = time.monotonic()
        deadline = began + seconds

        async def work(bot: Bot, client: BotClient) -> None:
            while time.monotonic() < deadline:
                await bot.step(client)

        await asyncio.gather(*(work(b, c) for b, c in zip(bots, clients, strict=True)))
        return time.monotonic() - began
    finally:
        for client in clients:
            await client.close()


class Sampler(threading.Thread):
    """Reads the service's RSS and threads every ``every`` seconds."""

    def __init__(self, serve: Serve, every: float) -> None:
        super().__init__(daemon=True)
        self.serve, self.every = serve, every
        self.samples: list[tuple[float, int, int]] = []  # (seconds, RSS KiB, threads)
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while True:
            try:
                status = self.serve.status()
            except OSError:
                return
            self.samples.append(
                (time.monotonic() - self.t0, status.get("VmRSS", 0), status.get("Threads", 0))
            )
            if self.stop.wait(self.every):
                return


# -- the check -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Reads:
    """Seconds the replay check's reads took, summed over the sessions, and events read."""

    events: int = 0
    history: float = 0.0
    verify: float = 0.0
    replay: float = 0.0
    raw: float = 0.0
    raw_messages: int = 0
    #: wall time of the raw reads, connection included (not part of the check's time)
    raw_wall: float = 0.0


def check(url: str, bots: list[Bot]) -> tuple[list[str], Reads]:
    """Rehydrate every session with a fresh runtime; the mismatches found, the read times."""
    problems: list[str] = []
    reads = Reads()
    config = JournalConfig(stream=STREAM, subject_prefix=PREFIX)
    with Plantangenet.open(nats_url=url, journal=config) as pg:
        for bot in bots:
            sid = bot.session_id
            began = time.perf_counter()
            history = pg.history(sid)
            reads.history += time.perf_counter() - began
            reads.events += len(history)
            stored: dict[str, list[str]] = {}
            for envelope in history:
                stored.setdefault(envelope.causation_id, []).append(envelope.type_name)
            start_ids = [c for c, types in stored.items() if types == ["SessionStarted"]]
            expected = {**bot.acked, **{c: ["AccessDenied"] for c in bot.recorded_refusals}}
            # `open` started the session through BotClient.open (its id is the client's).
            for cid in start_ids:
                expected.setdefault(cid, ["SessionStarted"])
            missing = expected.keys() - stored.keys()
            extra = stored.keys() - expected.keys()
            if missing:
                problems.append(f"{sid}: {len(missing)} acknowledged commands not in the log")
            if extra:
                problems.append(f"{sid}: {len(extra)} commands in the log nobody acknowledged")
            wrong = [c for c in expected.keys() & stored.keys() if expected[c] != stored[c]]
            if wrong:
                problems.append(f"{sid}: {len(wrong)} commands stored with other events")
            sequences = [e.sequence or 0 for e in history]
            if sequences != sorted(set(sequences)):
                problems.append(f"{sid}: sequences out of order or repeated")
            began = time.perf_counter()
            intact = pg.run(verify(pg.journal, sid), 120)
            reads.verify += time.perf_counter() - began
            if not intact.intact:
                problems.append(intact.describe())
            began = time.perf_counter()
            state = pg.replay(sid)
            reads.replay += time.perf_counter() - began
            cursors = {
                c: (tuple(v.axes), v.start, v.end)
                for c, v in state.cursors.items()
                if v.agent_id == bot.agent_id
            }
            if set(state.agents) != bot.model.agents:
                problems.append(f"{sid}: agents {sorted(state.agents)} != {bot.model.agents}")
            if cursors != bot.model.cursors or len(cursors) != len(state.cursors):
                problems.append(f"{sid}: cursors differ from the bot's model")
            if dict(state.metadata) != bot.model.metadata:
                problems.append(f"{sid}: metadata differs from the bot's model")
            if state.event_count != len(history):
                problems.append(f"{sid}: replay folded {state.event_count} of {len(history)}")
            if bot.unresolved:
                problems.append(f"{sid}: {len(bot.unresolved)} commands never answered")
    # The raw baseline reads the same messages, session after session, as the reads above.
    began = time.perf_counter()
    with h.RawClient(url) as raw:
        for bot in bots:
            seconds, messages = raw.push_read(STREAM, f"{PREFIX}.{bot.session_id}")
            reads.raw += seconds
            reads.raw_messages += messages
    reads.raw_wall = time.perf_counter() - began
    if reads.raw_messages != reads.events:
        problems.append(f"raw read {reads.raw_messages} messages, the history {reads.events}")
    return problems, reads


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def run() -> int:
    args = parse_args()
    print(h.environment_line())
    print(f"soak: {args.bots} bots, {args.minutes:g} min, RSS every {args.sample_every:g} s")
    with tempfile.TemporaryDirectory(prefix="pg-soak-") as store:
        server = EmbeddedNats(store).start()
        try:
            serve = Serve(server.url)
            sampler = Sampler(serve, args.sample_every)
            sampler.start()
            bots = [
                Bot(i, f"soak-{i}", f"bot-{i}", random.Random(args.seed * 1000 + i))
                for i in range(args.bots)
            ]
            try:
                wall = asyncio.run(run_bots(server.url, bots, args.minutes * 60, args.timeout))
            finally:
                sampler.stop.set()
                sampler.join()
                status, out = serve.stop()
            print(f"service exit status {status}; " + " | ".join(out.strip().splitlines()[-1:]))
            checked_at = time.monotonic()
            problems, reads = check(server.url, bots)
            check_seconds = time.monotonic() - checked_at - reads.raw_wall
        finally:
            server.stop()
    return report(args, bots, wall, sampler.samples, status, problems, check_seconds, reads)


def report(
    args: argparse.Namespace,
    bots: list[Bot],
    wall: float,
    samples: list[tuple[float, int, int]],
    status: int | None,
    problems: list[str],
    check_seconds: float,
    reads: Reads,
) -> int:
    acked = sum(len(b.acked) for b in bots)
    events = sum(len(t) for b in bots for t in b.acked.values())
    errors: Counter[str] = Counter()
    for bot in bots:
        errors.update(bot.errors)
    latencies = sorted(x for b in bots for x in b.latencies)
    print()
    print(
        h.table(
            ["", "value"],
            [
                ["wall time of the loop (s)", f"{wall:.1f}"],
                ["acknowledged commands", f"{acked:,}"],
                ["events they stored", f"{events:,}"],
                ["acknowledged commands/s", f"{acked / wall:,.0f}"],
                ["errors", f"{sum(errors.values())} {dict(errors) or ''}".strip()],
                ["resent after no reply (same id)", str(sum(b.retries for b in bots))],
                ["never answered", str(sum(len(b.unresolved) for b in bots))],
                [
                    "reply latency p50 / p99 / max (ms)",
                    " / ".join(
                        f"{1000 * v:.1f}"
                        for v in (
                            h.percentile(latencies, 50),
                            h.percentile(latencies, 99),
                            latencies[-1],
                        )
                    )
                    if latencies
                    else "-",
                ],
                ["acknowledged per bot (min / max)", per_bot(bots)],
            ],
        )
    )
    print()
    print("service RSS over time:")
    print(
        h.table(
            ["t (s)", "RSS (MiB)", "threads"],
            [[f"{t:.0f}", mib(rss), str(threads)] for t, rss, threads in samples],
        )
    )
    flat = rss_trend(samples)
    print(flat)
    print()
    report_reads(reads, len(bots))
    print()
    if problems or status != 0:
        print(f"REPLAY CHECK FAILED ({check_seconds:.1f} s):")
        for problem in problems:
            print(" -", problem)
        if status != 0:
            print(f" - the service exited with status {status}")
        return 1
    print(
        f"replay check: OK ({check_seconds:.1f} s) -- {len(bots)} sessions rehydrated by a "
        "fresh runtime; each log holds exactly its bot's acknowledged commands (by id, with "
        "the events their replies named), the hash chains verify, and every folded state "
        "equals its bot's model"
    )
    return 0


def report_reads(reads: Reads, sessions: int) -> None:
    """The replay check's reads against the raw baseline on the same messages."""
    print(
        f"replay check reads ({reads.events:,} events in {sessions} sessions, each read "
        "session by session, consumer creation included):"
    )
    if not reads.events or not reads.raw:
        print("  nothing read")
        return
    h.report_against_raw(
        [
            ("pg.replay (decode + fold)", reads.events / reads.replay),
            ("verify (hash chain)", reads.events / reads.verify),
            ("pg.history (decode)", reads.events / reads.history),
        ],
        reads.raw_messages / reads.raw,
    )


def per_bot(bots: list[Bot]) -> str:
    counts = [len(b.acked) for b in bots]
    return f"{min(counts):,} / {max(counts):,}"


def rss_trend(samples: list[tuple[float, int, int]]) -> str:
    """RSS after warm-up: growth overall, and the slope over the last third (flat or not)."""
    if len(samples) < 6:
        return "RSS trend: too few samples"
    later = samples[len(samples) // 6 :]  # skip the warm-up
    last = later[-max(len(later) // 3, 3) :]

    def slope(points: list[tuple[float, int, int]]) -> float:  # MiB per minute
        fit = statistics.linear_regression([p[0] for p in points], [p[1] for p in points])
        return fit.slope * 60 / 1024

    rss = [s[1] for s in later]
    return (
        f"RSS after warm-up (t >= {later[0][0]:.0f} s): {mib(later[0][1])} -> {mib(later[-1][1])}"
        f" MiB (max {mib(max(rss))}), fitted slope {slope(later):+.2f} MiB/min; over the last "
        f"third (t >= {last[0][0]:.0f} s): {mib(min(p[1] for p in last))}-"
        f"{mib(max(p[1] for p in last))} MiB, slope {slope(last):+.2f} MiB/min"
    )


if __name__ == "__main__":
    h.main(run)

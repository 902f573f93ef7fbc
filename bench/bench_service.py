"""Session service throughput and latency: concurrent BotClients vs raw request/reply.

Library: ONE session service -- a ``plantangenet serve`` subprocess by default
(``--in-process``: a ``SessionService`` on a ``Plantangenet`` runtime inside
this process) -- and, for each level of ``--bots`` (default 1, 10, 100), that
many bots in this process, each a ``BotClient`` with its own NATS connection
(``retries=0``, so nothing is hidden by a retry). Each bot works on its OWN
session (``--shared-session``: its own agent and cursor in one shared session)
that it opened, gave a policy allowing cursor moves, attached itself to and
added a cursor to (not timed). Then every bot sends ``BotClient.move_cursor``
requests one after the other, all bots at once, ``--commands`` in all per
level (split evenly). Reported: commands/s (all replies / wall time) and the
p50/p99 of the per-request reply latency seen by the bots.

Raw: the same number of bots, each with its own plain nats-py connection,
sending ``await nc.request(...)`` one after the other with a request payload
of the same bytes a BotClient sends (encoded once), to a trivial responder: a
nats-py subprocess that answers every request with its payload (echo). Same
server, same concurrency, same counts, same run.

Append-echo: the same again, but the responder first stores each request's
payload in JetStream (a stream of its own, file storage, as many replicas as the
session stream, no republish) with the headers a session's append carries
(``Nats-Msg-Id``, ``Nats-Expected-Last-Subject-Sequence``: the responder tracks
each session subject's last sequence), waits for the acknowledgement, then
replies with the payload: the least any service that stores a command must do.
The service's ratio is reported against both. The responder runs with the
garbage-collector settings ``serve`` makes (``settle_collector``: young
generation every 10,000 allocations, startup frozen), as the service does.

Both are measured on one ``nats-server`` (stream replicas 1), then on a three-node
``EmbeddedCluster`` (``serve --replicas 3``; ``--no-cluster`` skips it), and the
cluster is reported relative to the one node. Everything shares this machine's
cores: the servers, the service, the responder and the bots. The CPU time each
process used during the timed part (from /proc) is reported per command, which
shows which process is the limit. Each run checks that the service and the echo
answered exactly the requests sent, and that every bot's cursor ended where its
last move put it. ``--profile``: the service runs under cProfile (all threads).

Run: .venv/bin/python bench/bench_service.py [--commands 2000] [--bots 1,10,100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

import nats
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from plantangenet import JournalConfig, Plantangenet
from plantangenet.cli.collector import settle_collector
from plantangenet.nats.cluster import EmbeddedCluster
from plantangenet.nats.embedded import EmbeddedNats
from plantangenet.wire.access import BotAccess, LockedDownNats
from plantangenet.wire.client import BotClient
from plantangenet.wire.protocol import DEFAULT_COMMAND_PREFIX, encode_request
from plantangenet.wire.service import SessionService

STREAM = "BENCH_SERVICE"
PREFIX = "bench.service"
ECHO_PREFIX = "bench.echo"
#: The append-echo's stream and its subjects (one per session).
APPEND_STREAM = "BENCH_APPEND_ECHO"
APPEND_LOG = "bench.appendlog"
#: The request name that asks the echo responder to store the payload first.
APPEND = "append"
AXES = ("ocean.x",)
POLICY = [
    {
        "id": "bots-move-cursors",
        "effect": "allow",
        "actions": ["cursor.*"],
        "resources": ["axis.ocean.*", "cursor.*"],
    },
    {  # --shared-session --locked-down: the other bots (other principals) attach themselves
        "id": "bots-join",
        "effect": "allow",
        "actions": ["session.attach"],
        "resources": ["agent.*"],
        "conditions": [{"key": "agent.kind", "op": "eq", "value": "bot"}],
    },
]
SIDES = ("library", "raw", "append")
#: What each side is called in the reports.
LABELS = {"library": "library", "raw": "echo", "append": "append-echo"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--commands", type=int, default=2000, help="timed commands per level (split over bots)"
    )
    p.add_argument("--bots", default="1,10,100", help="comma-separated concurrency levels")
    p.add_argument("--warmup", type=int, default=5, help="untimed commands per bot first")
    p.add_argument(
        "--repeats", type=int, default=2, help="rounds per level (rates: median; latency: pooled)"
    )
    p.add_argument("--no-cluster", action="store_true", help="skip the three-node cluster")
    p.add_argument(
        "--serve-processes",
        type=int,
        default=3,
        help="`plantangenet serve` processes on the cluster, owning the sessions by partition "
        "(one node: always one; default 3)",
    )
    p.add_argument(
        "--locked-down",
        action="store_true",
        help="also run on one node locked down by `plantangenet nats-config` (a NATS account "
        "per bot: what authenticating each request costs)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run SessionService in this process instead of a `plantangenet serve` subprocess",
    )
    p.add_argument(
        "--shared-session",
        action="store_true",
        help="all bots in one session (own agent + cursor each) instead of a session per bot",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply")
    p.add_argument(
        "--profile",
        action="store_true",
        help="one node only, library only: the service runs in a child process under "
        "cProfile (all threads); print its top costs",
    )
    p.add_argument("--echo-child", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--echo-replicas", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--service-child", nargs=2, metavar=("URL", "REPLICAS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    try:
        args.levels = [int(b) for b in args.bots.split(",") if b.strip()]
    except ValueError:
        p.error("--bots takes comma-separated integers")
    if not args.levels or min(args.levels) < 1:
        p.error("--bots needs positive levels")
    if args.commands < max(args.levels) or args.repeats < 1 or args.warmup < 0:
        p.error("--commands must be at least the largest level; --repeats positive")
    return args


# -- the trivial responder (a child process) ------------------------------------------------


def echo_child(url: str, replicas: int) -> int:
    """Answer every request on ``bench.echo.>`` with its own payload until SIGTERM; a
    request named ``append`` only once its payload is stored in JetStream (see the
    module docs: append-echo)."""

    async def serve() -> None:
        nc = await nats.connect(servers=url.split(","), name="bench-echo")
        js = nc.jetstream(timeout=30)
        config = StreamConfig(
            name=APPEND_STREAM,
            subjects=[f"{APPEND_LOG}.*"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120.0,
            discard=DiscardPolicy.NEW,
        )
        await js.add_stream(config)
        deadline = time.monotonic() + 60
        while (info := await js.stream_info(APPEND_STREAM)).cluster is not None and not (
            info.cluster.leader
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream {APPEND_STREAM} elected no leader")
            await asyncio.sleep(0.05)
        answered = 0
        run = h.new_id()[:12]
        stored = 0
        last: dict[str, int] = {}
        locks: dict[str, asyncio.Lock] = {}

        async def append(session_id: str, payload: bytes) -> None:
            """Store ``payload`` as the session's next message, as a session's append does."""
            nonlocal stored
            subject = f"{APPEND_LOG}.{session_id}"
            lock = locks.get(subject) or locks.setdefault(subject, asyncio.Lock())
            async with lock:  # one append of a session at a time, as its actor does
                for _ in range(8):
                    stored += 1
                    headers = {
                        "Nats-Msg-Id": f"{run}-{stored}",
                        "Nats-Expected-Last-Subject-Sequence": str(last.get(subject, 0)),
                    }
                    reply = await nc.request(subject, payload, timeout=30, headers=headers)
                    ack = json.loads(reply.data)
                    error = ack.get("error")
                    if error is None:
                        last[subject] = int(ack["seq"])
                        return
                    if error.get("err_code") != 10071:  # not "wrong last sequence"
                        raise RuntimeError(f"append-echo: {error}")
                    msg = await js.get_last_msg(APPEND_STREAM, subject)
                    last[subject] = int(msg.seq or 0)
                raise RuntimeError(f"append-echo: {subject} kept losing races")

        tasks: set[asyncio.Task[None]] = set()

        async def store_and_reply(session_id: str, msg: Any) -> None:
            nonlocal answered
            try:
                await append(session_id, msg.data)
            except Exception as exc:  # the bot sees it: its echo check fails
                await msg.respond(f"append-echo failed: {exc}".encode())
                raise
            await msg.respond(msg.data)
            answered += 1

        async def answer(msg: Any) -> None:
            nonlocal answered
            tokens = msg.subject.split(".")
            if tokens[-1] == APPEND:
                # nats-py runs a subscription's callbacks one at a time: each append
                # waits for its acknowledgement in a task of its own, as the service's
                # requests do, so that appends of different sessions overlap.
                task = asyncio.create_task(store_and_reply(tokens[-2], msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                return
            await msg.respond(msg.data)
            answered += 1

        await nc.subscribe(f"{ECHO_PREFIX}.>", queue="bench-echo", cb=answer)
        await nc.flush()
        settle_collector()  # as `serve` does: the two sides run with the same collector
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(f"bench echo: listening on {ECHO_PREFIX}.>", flush=True)
        await stop.wait()
        if tasks:
            await asyncio.wait(list(tasks), timeout=30)
        kept = (await js.stream_info(APPEND_STREAM)).state.messages
        await nc.drain()
        print(f"bench echo: stopped after {answered} requests ({kept} stored)", flush=True)

    asyncio.run(serve())
    return 0


def service_child(url: str, replicas: int) -> int:
    """A session service under cProfile (all threads) until SIGTERM; then print the profile."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    profiler = h.ThreadProfiler().start()
    config = JournalConfig(stream=STREAM, subject_prefix=PREFIX, replicas=replicas)
    with Plantangenet.open(nats_url=url, journal=config) as pg:
        service = SessionService(pg)
        pg.run(service.start())
        settle_collector()  # as `serve` does
        print("service child: listening", flush=True)
        while not stop.wait(0.2):
            pass
        pg.run(service.stop())
        handled = service.handled
    print(f"service child: stopped after {handled} requests", flush=True)
    print(profiler.report(40), flush=True)
    return 0


class Child:
    """A child process that prints a ready line first and stops on SIGTERM."""

    def __init__(self, name: str, cmd: list[str], ready: str, timeout: float = 60.0) -> None:
        self.name = name
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._err, cwd=h.ROOT, start_new_session=True
        )
        try:
            line = self._readline(timeout)
            if ready not in line:
                raise RuntimeError(f"{name} did not start: {line!r}\n{self.stderr_tail()}")
        except BaseException:
            self.stop()
            raise

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise RuntimeError(f"{self.name}: no output within {timeout}s")
        return self.proc.stdout.readline().decode(errors="replace")

    def stderr_tail(self, size: int = 3000) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-size:]

    def stop(self, timeout: float = 30.0) -> str:
        """SIGTERM, wait, kill if needed; returns what it printed after the ready line."""
        out = b""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self._err.close()
        return (out or b"").decode(errors="replace")


def conflict_count(output: str) -> int:
    """The conflicts a ``serve`` child printed on exit ("... (N conflicts, ...)")."""
    found = re.search(r"\((\d+) conflicts", output)
    return int(found.group(1)) if found else 0


def handled_count(output: str) -> int | None:
    """The request count a child printed on exit ("... stopped after N requests")."""
    for line in output.splitlines():
        if "stopped after" in line:
            return int(line.split("stopped after", 1)[1].split()[0])
    return None


# -- the service ---------------------------------------------------------------------------------


class Service:
    """One session service on ``url``: a ``plantangenet serve`` child, or in this process."""

    def __init__(
        self,
        url: str,
        replicas: int,
        in_process: bool,
        profile: bool = False,
        processes: int = 1,
    ) -> None:
        self.in_process = in_process
        self.pid: int | None = None
        self.pids: list[int] = []
        self.profile_output = ""
        self.conflicts = 0
        self._child: Child | None = None
        self._others: list[Child] = []
        self._pg: Plantangenet | None = None
        self._service: SessionService | None = None
        if in_process:
            config = JournalConfig(stream=STREAM, subject_prefix=PREFIX, replicas=replicas)
            self._pg = Plantangenet.open(nats_url=url, journal=config)
            try:
                self._service = SessionService(self._pg)
                self._pg.run(self._service.start())
            except BaseException:
                self._pg.close()
                raise
        elif profile:
            cmd = [sys.executable, __file__, "--service-child", url, str(replicas)]
            self._child = Child("profiled service", cmd, "listening")
            self.pid = self._child.proc.pid
        else:
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
                "--replicas",
                str(replicas),
            ]
            urls = url.split(",")
            for i in range(processes):
                # Each process on a node of its own first (their sessions' owners spread).
                own = ",".join(urls[i % len(urls) :] + urls[: i % len(urls)])
                child = Child(f"plantangenet serve {i}", [*cmd[:5], own, *cmd[6:]], "listening")
                if self._child is None:
                    self._child = child
                else:
                    self._others.append(child)
            self.pid = self._child.proc.pid if self._child else None
        self.pids = [c.proc.pid for c in [self._child, *self._others] if c is not None]

    def stop(self) -> int | None:
        """Stop it; the number of requests it says it handled (all processes together)."""
        if self._child is not None:
            outputs = [child.stop() for child in [self._child, *self._others]]
            self.profile_output = outputs[0]
            counts = [handled_count(out) for out in outputs]
            self.conflicts = sum(conflict_count(out) for out in outputs)
            return None if None in counts else sum(c or 0 for c in counts)
        assert self._pg is not None and self._service is not None
        try:
            self._pg.run(self._service.stop())
            return self._service.handled
        finally:
            self._pg.close()


# -- bots ------------------------------------------------------------------------------------------


@dataclass
class Level:
    """What one round of one concurrency level measured."""

    rate: float
    latencies: list[float]
    requests: int  # every request sent, setup included
    cpu: dict[str, float]  # CPU seconds per process group during the timed part


@dataclass
class Results:
    """Per side and level: rates of every round, pooled latencies."""

    rates: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    latencies: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    cpu: dict[tuple[str, int], list[dict[str, float]]] = field(default_factory=dict)

    def add(self, side: str, bots: int, level: Level, commands: int) -> None:
        self.rates.setdefault((side, bots), []).append(level.rate)
        self.latencies.setdefault((side, bots), []).extend(level.latencies)
        per_command = {k: v / commands for k, v in level.cpu.items()}
        per_command["wall"] = 1 / level.rate
        self.cpu.setdefault((side, bots), []).append(per_command)

    def cpu_per_command(self, side: str, bots: int) -> dict[str, float]:
        """Median CPU seconds per timed command of each process group (and wall time)."""
        rounds = self.cpu[(side, bots)]
        return {k: h.median([r[k] for r in rounds]) for k in rounds[0]}

    def summary(self, side: str, bots: int) -> dict[str, float]:
        ordered = sorted(self.latencies[(side, bots)])
        return {
            "rate": h.median(self.rates[(side, bots)]),
            "p50": h.percentile(ordered, 50),
            "p99": h.percentile(ordered, 99),
        }


def bot_urls(urls: Sequence[str], i: int) -> str:
    """Bot ``i``'s server list: rotated, so bots spread round-robin over a cluster's nodes."""
    k = i % len(urls)
    return ",".join([*urls[k:], *urls[:k]])


def split(total: int, bots: int) -> list[int]:
    return [total // bots + (1 if i < total % bots else 0) for i in range(bots)]


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return float("nan")


def cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_seconds(p) for p in group) for name, group in pids.items()}


async def timed(
    calls: Sequence[Any], pids: dict[str, list[int]]
) -> tuple[float, list[list[float]], dict[str, float]]:
    """Run ``calls`` at once; wall time, their results, CPU seconds used per process group."""
    gc.collect()
    before = cpu_snapshot(pids)
    start = time.perf_counter()
    out = await asyncio.gather(*calls)
    elapsed = time.perf_counter() - start
    after = cpu_snapshot(pids)
    return elapsed, list(out), {k: after[k] - before[k] for k in pids}


async def library_level(dep: Deployment, bots: int, args: argparse.Namespace, tag: str) -> Level:
    config = JournalConfig(stream=STREAM, subject_prefix=PREFIX)
    clients = await asyncio.gather(
        *(
            BotClient.connect(
                dep.bot_url(i),
                agent_id=f"bot-{i}",
                journal=config,
                timeout=args.timeout,
                retries=0,
                name=f"bench-bot-{i}",
                dont_randomize=True,
            )
            for i in range(bots)
        )
    )
    requests = 0
    try:
        shared = args.shared_session
        sessions = [f"{tag}" if shared else f"{tag}-b{i}" for i in range(bots)]
        cursors = [f"c{i}" if shared else "c" for i in range(bots)]

        async def open_session(client: BotClient, session_id: str) -> int:
            await client.request(session_id, "start", {"metadata": {"bench": "service"}})
            await client.change_policy(session_id, replace=POLICY)
            return 2

        async def join(client: BotClient, session_id: str, cursor: str) -> int:
            # As its own agent: in a shared session of a locked-down deployment, only the
            # first bot owns the session; the others attach themselves (policy bots-join).
            who = {"issued_by": client.agent_id} if shared else {}
            await client.attach(session_id, kind="bot", name=client.agent_id or "", **who)
            await client.add_cursor(session_id, cursor, AXES, 0.0, 1.0)
            return 2

        if shared:
            requests += await open_session(clients[0], sessions[0])
        else:
            requests += sum(await asyncio.gather(*map(open_session, clients, sessions)))
        requests += sum(await asyncio.gather(*map(join, clients, sessions, cursors)))

        async def moves(i: int, count: int, first: int) -> list[float]:
            client, session_id, cursor = clients[i], sessions[i], cursors[i]
            out: list[float] = []
            last_seq = 0
            perf = time.perf_counter
            for k in range(first, first + count):
                start = perf()
                reply = await client.move_cursor(session_id, cursor, AXES, float(k), float(k + 1))
                out.append(perf() - start)
                if reply["events"] != ["CursorMoved"] or reply["seq"] <= last_seq:
                    raise RuntimeError(f"library: unexpected reply {reply}")
                last_seq = reply["seq"]
            return out

        if args.warmup:
            await asyncio.gather(*(moves(i, args.warmup, 1) for i in range(bots)))
        counts = split(args.commands, bots)
        first = args.warmup + 1
        elapsed, samples, cpu = await timed(
            [moves(i, counts[i], first) for i in range(bots)], args.pids
        )
        requests += bots * args.warmup + args.commands

        # Every bot's cursor ended where its last move put it.
        queried = [0] if shared else list(range(bots))
        states = await asyncio.gather(*(clients[i].state(sessions[i]) for i in queried))
        requests += len(states)
        for i in range(bots):
            state = states[0 if shared else i]
            end = state["cursors"][cursors[i]]["end"]
            if end != float(first + counts[i]):
                raise RuntimeError(f"library: bot {i}'s cursor ends at {end}")
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    flat = [x for s in samples for x in s]
    return Level(args.commands / elapsed, flat, requests, cpu)


async def raw_level(
    dep: Deployment, bots: int, args: argparse.Namespace, tag: str, name: str = "move_cursor"
) -> Level:
    """The raw side: plain requests to the echo responder (``name``: ``append`` for the
    append-echo)."""
    conns = await asyncio.gather(
        *(
            nats.connect(
                servers=dep.raw_bot_url(i).split(","),
                name=f"bench-raw-{i}",
                dont_randomize=True,
            )
            for i in range(bots)
        )
    )
    try:

        async def requests(i: int, count: int) -> list[float]:
            nc = conns[i]
            session_id = tag if args.shared_session else f"{tag}-b{i}"
            subject = f"{ECHO_PREFIX}.{session_id}.{name}"
            # The bytes a BotClient sends for a move (encoded once here).
            payload = encode_request(
                {
                    "agent_id": f"bot-{i}",
                    "cursor_id": "c",
                    "axes": list(AXES),
                    "start": 1.0,
                    "end": 2.0,
                },
                command_id=h.new_id(),
                issued_by=f"bot-{i}",
            )
            out: list[float] = []
            perf = time.perf_counter
            for _ in range(count):
                start = perf()
                msg = await nc.request(subject, payload, timeout=args.timeout)
                out.append(perf() - start)
                if msg.data != payload:
                    raise RuntimeError(f"raw: the echo did not echo ({msg.data[:200]!r})")
            return out

        if args.warmup:
            await asyncio.gather(*(requests(i, args.warmup) for i in range(bots)))
        counts = split(args.commands, bots)
        elapsed, samples, cpu = await timed(
            [requests(i, counts[i]) for i in range(bots)], args.pids
        )
    finally:
        await asyncio.gather(*(nc.drain() for nc in conns), return_exceptions=True)
    flat = [x for s in samples for x in s]
    return Level(args.commands / elapsed, flat, bots * args.warmup + args.commands, cpu)


# -- one deployment (one node or the cluster) --------------------------------------------------


@dataclass
class Deployment:
    name: str
    urls: list[str]
    replicas: int
    server_pids: list[int]
    cluster: EmbeddedCluster | None = None
    #: Locked down: the URL (with credentials) of bot i, on the library's server and on the
    #: raw side's (a server of its own, where the echo answers across the same imports), and
    #: the service's and the echo's URLs. Otherwise everyone connects to ``urls``.
    bot_urls: Callable[[int], str] | None = None
    raw_bot_urls: Callable[[int], str] | None = None
    service_url: str | None = None
    echo_url: str | None = None

    def bot_url(self, i: int) -> str:
        return self.bot_urls(i) if self.bot_urls else bot_urls(self.urls, i)

    def raw_bot_url(self, i: int) -> str:
        return self.raw_bot_urls(i) if self.raw_bot_urls else bot_urls(self.urls, i)


def connection_nodes(cluster: EmbeddedCluster, name_prefix: str) -> list[int]:
    """The nodes holding client connections whose name starts with ``name_prefix``."""
    nodes = []
    for i in range(cluster.size):
        url = f"{cluster.monitor_url(i)}/connz?limit=1024"
        with urllib.request.urlopen(url, timeout=5) as response:
            conns = json.load(response).get("connections") or []
        if any((c.get("name") or "").startswith(name_prefix) for c in conns):
            nodes.append(i)
    return nodes


def check_stream(urls: Sequence[str], replicas: int) -> None:
    async def info() -> Any:
        nc = await nats.connect(servers=list(urls), name="bench-check")
        try:
            return await nc.jetstream().stream_info(STREAM)
        finally:
            await nc.close()

    got = asyncio.run(info())
    if got.config.num_replicas != replicas:
        raise RuntimeError(f"stream {STREAM} has {got.config.num_replicas} replicas")


def measure(dep: Deployment, args: argparse.Namespace, results: Results) -> list[str]:
    """Run every level on ``dep``, library and raw in alternating order; notes to print."""
    notes: list[str] = []
    url = dep.service_url or ",".join(dep.urls)
    processes = args.serve_processes if dep.cluster is not None and not args.in_process else 1
    service = Service(url, dep.replicas, args.in_process, args.profile, processes)
    stopped = False
    echo: Child | None = None
    try:
        echo_url = dep.echo_url or url
        echo = Child(
            "echo responder",
            [
                sys.executable,
                __file__,
                "--echo-child",
                echo_url,
                "--echo-replicas",
                str(dep.replicas),
            ],
            "listening",
        )
        sent = dict.fromkeys(SIDES, 0)
        args.pids = {
            "nats-server": dep.server_pids,
            "service": service.pids,
            "echo": [echo.proc.pid],
            "bots": [os.getpid()],
        }
        runner = asyncio.Runner()
        with runner:
            for r in range(args.repeats):
                for n, bots in enumerate(args.levels):
                    sides = ["library"] if args.profile else h.rotate(list(SIDES), r + n)
                    for side in sides:
                        tag = f"{dep.name[:3]}-r{r}-n{bots}"
                        if side == "library":
                            level = runner.run(library_level(dep, bots, args, tag))
                        elif side == "raw":
                            level = runner.run(raw_level(dep, bots, args, tag))
                        else:
                            level = runner.run(raw_level(dep, bots, args, tag, APPEND))
                        sent[side] += level.requests
                        results.add(side, bots, level, args.commands)
                        print(
                            f"  {dep.name}, {bots:>3} bots, {LABELS[side]:<11}: "
                            f"{level.rate:>8,.0f} commands/s",
                            flush=True,
                        )
                    if r == 0 and n == 0:
                        check_stream(
                            (dep.service_url or ",".join(dep.urls)).split(","), dep.replicas
                        )
        if dep.cluster is not None:
            service_nodes = (
                connection_nodes(dep.cluster, "plantangenet") if not args.in_process else []
            )
            notes.append(
                f"{dep.name}: stream leader node-{dep.cluster.stream_leader(STREAM)}, "
                f"service on node(s) {service_nodes or '?'}, "
                f"echo on node(s) {connection_nodes(dep.cluster, 'bench-echo')}, "
                "bot i on node i mod 3"
            )
        handled = service.stop()
        stopped = True
        if handled is not None and handled != sent["library"]:
            raise RuntimeError(f"service handled {handled} requests, the bots sent {sent}")
        echo_output = echo.stop()
        echoed = handled_count(echo_output)
        echo = None
        stored = re.search(r"\((\d+) stored\)", echo_output)
        if stored is None or int(stored.group(1)) != sent["append"]:
            raise RuntimeError(
                f"append-echo stored {stored and stored.group(1)} messages, the bots sent "
                f"{sent['append']} append requests"
            )
        if args.profile:
            print(service.profile_output)
        if echoed is not None and echoed != sent["raw"] + sent["append"]:
            raise RuntimeError(f"echo answered {echoed} requests, the bots sent {sent}")
        notes.append(
            f"{dep.name}: service handled {handled} requests ({processes} process(es), "
            f"{service.conflicts} append conflicts); echo {echoed} ({stored.group(1)} "
            "of them stored by append-echo; as sent: no loss, no retry)"
        )
    finally:
        if echo is not None:
            echo.stop()
        if not stopped:
            with contextlib.suppress(Exception):
                service.stop()
    return notes


@contextlib.contextmanager
def deployment(kind: str, args: argparse.Namespace) -> Iterator[Deployment]:
    if kind == "one node":
        with EmbeddedNats() as server:
            yield Deployment(kind, [server.url], 1, [server.pid or 0])
    elif kind == "locked down":
        # A NATS account per bot, the sessions it works on imported (as nats-config writes
        # them); the raw side on a server of its own with the same accounts, so that its
        # requests cross the same imports to the echo.
        top = max(args.levels)
        sessions = {
            i: tuple(
                f"{kind[:3]}-r{r}-n{n}" if args.shared_session else f"{kind[:3]}-r{r}-n{n}-b{i}"
                for r in range(args.repeats)
                for n in args.levels
                if i < n
            )
            for i in range(top)
        }
        bots = [
            BotAccess(f"bot{i}", f"pw{i}", tuple(dict.fromkeys(sessions[i]))) for i in range(top)
        ]
        small = {"bot_max_storage": 1 << 20, "bot_max_memory": 1 << 20}
        with (
            tempfile.TemporaryDirectory() as root,
            LockedDownNats(f"{root}/lib", "svc-pw", bots, **small) as lib,
            LockedDownNats(
                f"{root}/raw", "svc-pw", bots, command_prefix=ECHO_PREFIX, **small
            ) as raw,
        ):
            yield Deployment(
                kind,
                [lib.url],
                1,
                [lib.server.pid or 0, raw.server.pid or 0],
                bot_urls=lambda i: lib.bot_url(f"bot{i}"),
                raw_bot_urls=lambda i: raw.bot_url(f"bot{i}"),
                service_url=lib.service_url,
                echo_url=raw.service_url,
            )
    else:
        with EmbeddedCluster() as cluster:
            yield Deployment(kind, cluster.urls, 3, [n.pid or 0 for n in cluster.nodes], cluster)


# -- output -----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def report(name: str, results: Results, levels: Sequence[int]) -> None:
    rows = []
    ratios = []
    for bots in levels:
        lib, raw, app = (results.summary(side, bots) for side in SIDES)
        row = [str(bots)]
        for side in (lib, raw, app):
            row += [f"{side['rate']:,.0f}", ms(side["p50"]), ms(side["p99"])]
        rows.append(row)
        ratios.append(
            [
                str(bots),
                f"{lib['rate'] / raw['rate']:.3f}",
                f"{lib['p50'] / raw['p50']:.1f}",
                f"{lib['p99'] / raw['p99']:.1f}",
                f"{lib['rate'] / app['rate']:.3f}",
                f"{lib['p50'] / app['p50']:.1f}",
                f"{lib['p99'] / app['p99']:.1f}",
            ]
        )
    print()
    print(f"{name}:")
    headers = ["bots", "library cmd/s", "p50 ms", "p99 ms", "echo req/s", "p50 ms", "p99 ms"]
    print(h.table([*headers, "append-echo req/s", "p50 ms", "p99 ms"], rows))
    print(f"{name}, the service relative to each baseline:")
    print(
        h.table(
            [
                "bots",
                "rate lib/echo",
                "p50 lib/echo",
                "p99 lib/echo",
                "rate lib/append",
                "p50 lib/append",
                "p99 lib/append",
            ],
            ratios,
        )
    )


def report_cpu(name: str, results: Results, levels: Sequence[int], in_process: bool) -> None:
    rows = []
    for bots in levels:
        for side in SIDES:
            if (side, bots) not in results.cpu:
                continue
            cpu = results.cpu_per_command(side, bots)
            worker = "service" if side == "library" else "echo"
            total = cpu["nats-server"] + cpu[worker] + cpu["bots"]
            if side != "library":
                worker_cell = f"{cpu[worker] * 1e6:,.0f} ({LABELS[side]})"
            elif in_process:
                worker_cell = "in this process"
            else:
                worker_cell = f"{cpu[worker] * 1e6:,.0f}"
            rows.append(
                [
                    f"{bots} bots, {LABELS[side]}",
                    f"{cpu['nats-server'] * 1e6:,.0f}",
                    worker_cell,
                    f"{cpu['bots'] * 1e6:,.0f}",
                    f"{total / cpu['wall']:.2f}",
                ]
            )
    print()
    print(f"{name}: CPU µs per timed command (/proc utime+stime), and cores busy")
    print(h.table(["", "nats-server(s)", "service", "bots (this process)", "cores"], rows))


def report_cluster(
    one: Results,
    three: Results,
    levels: Sequence[int],
    title: str = "three-node cluster (replicas 3) relative to one node (replicas 1):",
) -> None:
    rows = []
    for bots in levels:
        row = [str(bots)]
        for side in SIDES:
            a, b = one.summary(side, bots), three.summary(side, bots)
            row += [
                f"{b['rate'] / a['rate']:.2f}",
                f"{b['p50'] / a['p50']:.2f}",
                f"{b['p99'] / a['p99']:.2f}",
            ]
        rows.append(row)
    print()
    print(title)
    print(
        h.table(
            [
                "bots",
                *(f"{LABELS[side]} {what}" for side in SIDES for what in ("rate", "p50", "p99")),
            ],
            rows,
        )
    )


def run() -> int:
    args = parse_args()
    if args.echo_child:
        return echo_child(args.echo_child, args.echo_replicas)
    if args.service_child:
        return service_child(args.service_child[0], int(args.service_child[1]))
    if args.profile:
        args.no_cluster = True
        args.in_process = False
    mode = "in-process SessionService" if args.in_process else "`plantangenet serve` subprocess"
    layout = "one shared session" if args.shared_session else "a session per bot"
    print(
        f"bench_service: {args.commands} timed move_cursor commands per level, bots "
        f"{args.levels}, {args.warmup} warm-up per bot, {args.repeats} round(s); {mode}, "
        f"{layout}; command subjects {DEFAULT_COMMAND_PREFIX}.*.*"
    )
    print(h.environment_line())
    kinds = (
        ["one node"]
        + (["locked down"] if args.locked_down else [])
        + ([] if args.no_cluster else ["cluster"])
    )
    results: dict[str, Results] = {}
    notes: list[str] = []
    for kind in kinds:
        started = time.perf_counter()
        with deployment(kind, args) as dep:
            print(f"{kind}: {len(dep.urls)} server(s) up in {time.perf_counter() - started:.1f}s")
            results[kind] = Results()
            notes += measure(dep, args, results[kind])
    if args.profile:
        return 0
    for kind in kinds:
        report(
            f"{kind} (stream replicas {3 if kind == 'cluster' else 1})", results[kind], args.levels
        )
    for kind in kinds:
        report_cpu(kind, results[kind], args.levels, args.in_process)
    if "cluster" in results:
        report_cluster(results["one node"], results["cluster"], args.levels)
    if "locked down" in results:
        report_cluster(
            results["one node"],
            results["locked down"],
            args.levels,
            "locked down (a NATS account per bot, each request authenticated) relative to one "
            "node without accounts:",
        )
        if not args.in_process:
            rows = []
            for bots in args.levels:
                plain = results["one node"].cpu_per_command("library", bots)["service"]
                locked = results["locked down"].cpu_per_command("library", bots)["service"]
                rows.append(
                    [
                        str(bots),
                        f"{plain * 1e6:,.0f}",
                        f"{locked * 1e6:,.0f}",
                        f"{(locked - plain) * 1e6:+,.0f}",
                    ]
                )
            print()
            print("what authentication costs the service, CPU µs per command:")
            print(h.table(["bots", "no accounts", "locked down", "difference"], rows))
    print()
    for note in notes:
        print(note)
    print(
        "note: echo = nats-py request/reply to an echo subprocess (same payload bytes, encoded "
        "once): transport only -- no decoding, no decision, no append, no fold. append-echo = "
        "the same responder storing each payload in JetStream first (Nats-Msg-Id, "
        "Nats-Expected-Last-Subject-Sequence; one append of a session at a time; no republish) "
        "and replying once it is acknowledged: the least a service that stores a command must "
        "do. The library reply means the event is stored (and replicated on the cluster) and "
        "folded. Service and responders run with serve's garbage-collector settings."
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    h.main(run)

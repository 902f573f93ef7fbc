"""Memory probe: where the session service's slow RSS growth under bot load comes from.

Runs in ONE process: an embedded ``nats-server`` (temporary store), a ``Plantangenet``
runtime with a :class:`SessionService` on it, and ``--bots`` bots (``BotClient`` s on
their own asyncio loop in a thread) doing what ``soak.py``'s bots do: each opens its
own session, lets its agent work cursors and metadata, and loops over add / move /
remove cursor and metadata changes as that agent. The bots keep only counters, so the
growth measured is the service's (and the client library's, told apart by traceback).

After ``--warmup`` seconds ``tracemalloc`` starts (``--frames`` frames); after
``--settle`` more a first snapshot is taken, then one every ``--interval`` seconds,
``--snapshots`` times. Each snapshot also records the sizes of the bounded caches and
per-command structures (session actors' ``_results``/``_pending``/``_outbox``, the
service's ``_tasks``/``_busy``/``_last_used``, nats-py's ``_resp_map`` and pending
queues, the policy's wildcard-match lru_cache, the codec's ``_AUTHORIZATIONS``...),
the live GC objects by type, ``sys.getallocatedblocks()`` and glibc ``mallinfo2``. RSS is
sampled every ``--sample-every`` seconds throughout.

Prints: RSS / allocated blocks / malloc state over time; the cache sizes per snapshot;
the top ``--top`` growth sites of ``last.compare_to(first, 'traceback')`` with bytes per
command and their size at every snapshot (linear or levelling off); growth by file; the
live-object type diff; the measured cost of one wildcard-match cache entry with
the ceiling of that cache; pymalloc arenas per snapshot (untraced runs); and RSS before
and after a diagnostic ``malloc_trim(0)`` at the end, under load (RSS that it returns
was free heap glibc kept, not live objects).

Tracing 25 frames slows this service ~10x (about 70 instead of 800 commands/s on 2 busy
cores), and each snapshot adds ~20 MiB of RSS; ``--untraced`` runs the same load and marks
without either, for RSS / blocks / malloc slopes that mean something.

Run: .venv/bin/python bench/memory_probe.py [--bots 10] [--warmup 60] [--settle 180]
     [--interval 60] [--snapshots 5] [--frames 25] [--untraced]
     (about warmup + settle + interval * snapshots seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from typing import Any

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

from plantangenet import EmbeddedNats, JournalConfig, Plantangenet
from plantangenet.domain.policy import _wildcard_matches as pattern_cache
from plantangenet.errors import PlantangenetError
from plantangenet.events import codec as codec_module
from plantangenet.events.envelope import new_id
from plantangenet.wire.client import BotClient
from plantangenet.wire.protocol import _SHAPES
from plantangenet.wire.service import SessionService

STREAM = "PROBE"
PREFIX = "probe.events"
AXES = (("ocean.temp",), ("ocean.temp", "ocean.salinity"), ("air.wind",))
KEYS = tuple(f"k{i}" for i in range(8))
MAX_CURSORS = 5
#: Frames in these files mark an allocation as the bots' (client side), not the service's.
BOT_MARKERS = ("memory_probe.py", os.path.join("plantangenet", "client.py"))
SERVICE_MARKERS = (
    os.path.join("plantangenet", "loop.py"),
    os.path.join("plantangenet", "service.py"),
    os.path.join("plantangenet", "actors", ""),
    os.path.join("pykka", ""),
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bots", type=int, default=10, help="bots, one session each")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before tracemalloc")
    p.add_argument("--settle", type=float, default=180.0, help="seconds traced before snapshot 0")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between snapshots")
    p.add_argument("--snapshots", type=int, default=5, help="snapshots after the first")
    p.add_argument("--frames", type=int, default=25, help="tracemalloc frames per trace")
    p.add_argument("--top", type=int, default=25, help="growth sites shown")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--seed", type=int, default=7, help="seed of the bots' choices")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply")
    p.add_argument(
        "--untraced",
        action="store_true",
        help="no tracemalloc and no snapshots (RSS, blocks and malloc undisturbed); the same "
        "marks, cache sizes and object counts",
    )
    return p.parse_args()


# -- bots (soak.py's, keeping counters only) --------------------------------------------------


class Bot:
    def __init__(self, index: int, seed: int) -> None:
        self.index = index
        self.session_id = f"probe-{index}"
        self.agent_id = f"bot-{index}"
        self.rng = random.Random(seed * 1000 + index)
        self.cursors: dict[str, tuple[tuple[str, ...], float, float]] = {}
        self.next_cursor = 0
        self.acked = 0
        self.retries = 0
        self.errors: Counter[str] = Counter()

    async def send(
        self, client: BotClient, name: str, args: dict[str, Any], *, as_agent: bool = True
    ) -> bool:
        """One command, resent with the same id until answered; whether it was acknowledged."""
        command_id = new_id()
        issued_by = self.agent_id if as_agent else None
        for attempt in range(6):
            try:
                await client.request(
                    self.session_id, name, args, command_id=command_id, issued_by=issued_by
                )
            except PlantangenetError as exc:
                if exc.code == "journal_error" and "no reply" in str(exc) and attempt < 5:
                    self.retries += 1
                    continue
                self.errors[exc.code] += 1
                return False
            self.acked += 1
            return True
        return False

    async def setup(self, client: BotClient) -> None:
        await client.open(self.session_id, {"bot": self.index})
        statement = {
            "id": "bot-works",
            "effect": "allow",
            "roles": ["worker"],
            "actions": ["cursor.*", "metadata.*"],
            "resources": ["*"],
        }
        assert await self.send(client, "change_policy", {"replace": [statement]}, as_agent=False)
        assert await self.send(client, "attach", {"agent_id": self.agent_id}, as_agent=False)
        grant = {"agent_id": self.agent_id, "role": "worker"}
        assert await self.send(client, "grant_role", grant, as_agent=False)

    async def step(self, client: BotClient) -> None:
        rng = self.rng
        roll = rng.random()
        cursors = sorted(self.cursors)
        if not cursors or (roll < 0.08 and len(cursors) < MAX_CURSORS):
            cursor = f"c{self.next_cursor}"
            self.next_cursor += 1
            region = self.region()
            if await self.send(client, "add_cursor", self.cursor_args(cursor, region)):
                self.cursors[cursor] = region
        elif roll < 0.14:
            cursor = rng.choice(cursors)
            args: dict[str, Any] = {"agent_id": self.agent_id, "cursor_id": cursor}
            if await self.send(client, "remove_cursor", args):
                del self.cursors[cursor]
        elif roll < 0.26:
            changed = {rng.choice(KEYS): rng.randint(0, 1000) for _ in range(rng.randint(0, 2))}
            removed = [k for k in rng.sample(KEYS, rng.randint(0, 2)) if k not in changed]
            if not changed and not removed:
                changed = {KEYS[0]: 0}
            await self.send(client, "change_metadata", {"changed": changed, "removed": removed})
        else:
            cursor = rng.choice(cursors)
            region = self.region()
            if await self.send(client, "move_cursor", self.cursor_args(cursor, region)):
                self.cursors[cursor] = region

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


class BotThread(threading.Thread):
    """The bots on their own asyncio loop (as a separate client process would be)."""

    def __init__(self, url: str, bots: list[Bot], timeout: float) -> None:
        super().__init__(name="probe-bots", daemon=True)
        self.url, self.bots, self.timeout = url, bots, timeout
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.drive())
        except BaseException as exc:
            self.failure = exc
            self.ready.set()

    async def drive(self) -> None:
        config = JournalConfig(stream=STREAM, subject_prefix=PREFIX)
        clients = [
            await BotClient.connect(self.url, journal=config, timeout=self.timeout, retries=0)
            for _ in self.bots
        ]
        try:
            await asyncio.gather(*(b.setup(c) for b, c in zip(self.bots, clients, strict=True)))
            self.ready.set()

            async def work(bot: Bot, client: BotClient) -> None:
                while not self.stop.is_set():
                    await bot.step(client)

            await asyncio.gather(*(work(b, c) for b, c in zip(self.bots, clients, strict=True)))
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.close()

    @property
    def commands(self) -> int:
        return sum(b.acked for b in self.bots)


# -- process memory -----------------------------------------------------------------------------


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _load_mallinfo2() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2
    return fn


_MALLINFO2 = _load_mallinfo2()


def malloc_state() -> dict[str, int]:
    """glibc: bytes in use, free bytes kept in the arenas, mmapped bytes (all arenas)."""
    if _MALLINFO2 is None:
        return {}
    m = _MALLINFO2()
    return {"in_use": m.uordblks, "free": m.fordblks, "mmap": m.hblkhd, "arena": m.arena}


def pymalloc_state() -> dict[str, int]:
    """pymalloc arenas now and at most, bytes in used and in free blocks (``_debugmallocstats``).

    Empty while tracemalloc traces: it hooks the allocator, and CPython then prints nothing.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as out:
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    found: dict[str, int] = {}
    for key, label in (
        ("arenas", "# arenas allocated current"),
        ("arenas_peak", "# arenas highwater mark"),
        ("block_bytes", "# bytes in allocated blocks"),
        ("free_block_bytes", "# bytes in available blocks"),
    ):
        match = re.search(re.escape(label) + r"\s*=\s*([\d,]+)", text)
        if match:
            found[key] = int(match.group(1).replace(",", ""))
    return found


def trim_malloc() -> tuple[dict[str, int], int, dict[str, int], int]:
    """glibc state and RSS before and after ``malloc_trim(0)`` (free heap handed back)."""
    before, rss_before = malloc_state(), h.rss_kib()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    return before, rss_before, malloc_state(), h.rss_kib()


class Sampler(threading.Thread):
    """RSS, allocated blocks, malloc state and commands every ``every`` seconds."""

    def __init__(self, bots: BotThread, every: float) -> None:
        super().__init__(name="probe-sampler", daemon=True)
        self.bots, self.every = bots, every
        self.t0 = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            self.rows.append(
                {
                    "t": time.monotonic() - self.t0,
                    "rss": h.rss_kib(),
                    "blocks": sys.getallocatedblocks(),
                    "commands": self.bots.commands,
                    "traced": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0,
                    "tm_overhead": tracemalloc.get_tracemalloc_memory(),
                    **malloc_state(),
                }
            )
            if self.halt.wait(self.every):
                return


# -- what the service holds ----------------------------------------------------------------------


def _actor_sizes(actor: Any) -> dict[str, int]:
    results = actor._results
    sizes = {
        "results": len(results),
        "result_envelopes": sum(len(v) for v in results.values()),
        "pending": len(actor._pending),
        "queued": len(actor._queued),
        "outbox": sum(len(v) for v in actor._outbox.values()),
        "hooks": len(actor.hooks),
        "hook_failures": len(actor.hook_failures),
        "behaviours": len(actor._behaviours),
        "agents": len(actor.agents),
        "cursors": len(actor.state.cursors),
        "metadata": len(actor.state.metadata),
        "cursor_index": 0 if actor._cursor_index is None else 1,
        "agent_inbox": sum(ref.pending for ref in actor.agents.values()),
        "agent_failures": 0,
        "agent_cursors": 0,
    }
    for ref in actor.agents.values():
        agent = ref.actor
        sizes["agent_failures"] += len(agent.failures)
        sizes["agent_cursors"] += len(agent.state.cursors)
    return sizes


async def _loop_sizes(nc: Any) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    subs = list(nc._subs.values())
    return {
        "loop_tasks": len(asyncio.all_tasks()),
        "loop_ready": len(loop._ready),  # type: ignore[attr-defined]
        "loop_scheduled": len(loop._scheduled),  # type: ignore[attr-defined]
        "nc_resp_map": len(nc._resp_map),
        "nc_subs": len(subs),
        "nc_sub_pending": sum(s._pending_queue.qsize() for s in subs),
        "nc_pending_cmds": len(nc._pending),
        "nc_pongs": len(nc._pongs),
    }


def holdings(pg: Plantangenet, svc: SessionService) -> dict[str, int]:
    """Sizes of the bounded caches and per-command structures right now."""
    sizes: Counter[str] = Counter()
    with pg._lock:
        handles = list(pg._sessions.values())
    for handle in handles:
        sizes["actor_inbox"] += handle._actor.actor_inbox.qsize()
        try:
            sizes.update(handle.query(_actor_sizes).result(10))
        except Exception as exc:  # only informative
            print(f"  (could not inspect {handle.session_id}: {exc!r})")
    info = pattern_cache.cache_info()
    sizes.update(
        {
            "sessions": len(handles),
            "svc_tasks": len(svc._tasks),
            "svc_busy": len(svc._busy),
            "svc_last_used": len(svc._last_used),
            "pattern_matches": info.currsize,
            "pattern_misses": info.misses,
            "authorizations": len(codec_module._AUTHORIZATIONS),
            "encoded_authorizations": len(codec_module._ENCODED_AUTHORIZATIONS),
            "protocol_shapes": len(_SHAPES),
            "re_cache": len(re._cache),  # type: ignore[attr-defined]
            "threads": threading.active_count(),
        }
    )
    sizes.update(pg.run(_loop_sizes(pg.connection), 10))
    return dict(sizes)


def live_types() -> Counter[str]:
    """GC-tracked objects by type (module-qualified for classes outside builtins)."""
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        tp = type(obj)
        module = tp.__module__
        counts[tp.__qualname__ if module == "builtins" else f"{module}.{tp.__qualname__}"] += 1
    return counts


# -- analysis ---------------------------------------------------------------------------------


def side_of(tb: tracemalloc.Traceback) -> str:
    """Whose allocation: the bots' (client side), the service's, or unknown (truncated)."""
    names = [frame.filename for frame in tb]
    if any(marker in name for name in names for marker in BOT_MARKERS):
        return "bots"
    if any(marker in name for name in names for marker in SERVICE_MARKERS):
        return "service"
    return "?"


def short(path: str) -> str:
    for marker in ("site-packages" + os.sep, str(h.ROOT) + os.sep, "/lib/python3"):
        at = path.find(marker)
        if at >= 0:
            rest = path[at + len(marker) :]
            return rest.split(os.sep, 1)[1] if marker == "/lib/python3" else rest
    return path


def frames_of(tb: tracemalloc.Traceback, limit: int = 9) -> list[str]:
    """The most recent frames, then the interesting ones (library code) further down."""
    frames = list(reversed(tb))  # most recent first
    interesting = ("plantangenet", "nats", "pykka", "msgpack", "memory_probe")
    shown: list[str] = []
    for i, frame in enumerate(frames):
        name = short(frame.filename)
        if i < 3 or any(word in name for word in interesting):
            shown.append(f"{name}:{frame.lineno}")
        if len(shown) >= limit:
            break
    return shown


def slope_per_min(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 3:
        return float("nan")
    return statistics.linear_regression(xs, ys).slope * 60


def mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


#: The policy's wildcard-match cache bound.
CACHE_SIZE: int = pattern_cache.cache_info().maxsize or 0


def measure_full_pattern_cache(maxsize: int = CACHE_SIZE) -> int:
    """Bytes a copy of the policy's wildcard-match cache holds when full of new names.

    Pattern ``cursor.*`` against ``cursor.c<N>``, as ``RemoveCursor`` authorizations bring
    them (the names are built here and kept alive only by the cache, so they are counted).
    """
    cache = functools.lru_cache(maxsize=maxsize)(pattern_cache.__wrapped__)
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(maxsize):
        cache("cursor.*", f"cursor.c{i}")
    full = tracemalloc.get_traced_memory()[0] - before
    cache.cache_clear()
    return full


def run() -> int:
    args = parse_args()
    print(h.environment_line())
    total = args.warmup + args.settle + args.interval * args.snapshots
    print(
        f"memory probe: {args.bots} bots in-process; "
        + ("untraced" if args.untraced else f"tracemalloc ({args.frames} frames)")
        + f" from t={args.warmup:g}s, snapshot 0 at t={args.warmup + args.settle:g}s, then every "
        f"{args.interval:g}s x {args.snapshots}; ~{total / 60:.1f} min"
    )
    sys.stdout.flush()
    snapshots: list[tracemalloc.Snapshot] = []
    marks: list[dict[str, Any]] = []  # per snapshot: t, commands, holdings
    types: list[Counter[str]] = []
    excluded = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        tracemalloc.Filter(False, "<unknown>"),
    ]
    with tempfile.TemporaryDirectory(prefix="pg-probe-") as store, contextlib.ExitStack() as stack:
        server = EmbeddedNats(store).start()
        stack.callback(server.stop)
        pg = Plantangenet(
            nats_url=server.url, journal=JournalConfig(stream=STREAM, subject_prefix=PREFIX)
        )
        stack.callback(pg.close)
        pg.start()
        svc = SessionService(pg, idle_timeout=300)
        pg.run(svc.start())
        bots = BotThread(server.url, [Bot(i, args.seed) for i in range(args.bots)], args.timeout)
        sampler = Sampler(bots, args.sample_every)
        try:
            sampler.start()
            bots.start()
            bots.ready.wait(60)
            if bots.failure is not None:
                raise bots.failure
            time.sleep(args.warmup)
            print(f"t={time.monotonic() - sampler.t0:.0f}s warm: {bots.commands:,} commands")
            if not args.untraced:
                tracemalloc.start(args.frames)
            traced_from = bots.commands
            time.sleep(args.settle)
            next_at = time.monotonic()
            for k in range(args.snapshots + 1):
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += args.interval
                t, commands = time.monotonic() - sampler.t0, bots.commands
                if not args.untraced:
                    snapshots.append(tracemalloc.take_snapshot())
                took = time.monotonic() - sampler.t0 - t
                held = holdings(pg, svc)
                types.append(live_types())
                marks.append(
                    {
                        "t": t,
                        "commands": commands,
                        "traced_from": traced_from,
                        "held": held,
                        "traced": tracemalloc.get_traced_memory()[0],
                        "rss": h.rss_kib(),
                        "blocks": sys.getallocatedblocks(),
                        **(pymalloc_state() if args.untraced else {}),
                    }
                )
                print(
                    f"snapshot {k}: t={t:.0f}s, {commands:,} commands, RSS "
                    f"{marks[-1]['rss'] / 1024:.1f} MiB, traced {mib(marks[-1]['traced'])} MiB, "
                    f"pattern_matches {held['pattern_matches']:,}, snapshot took {took:.1f}s"
                )
                sys.stdout.flush()
                if bots.failure is not None:
                    raise bots.failure
            # Under load still: how much of the RSS is free heap glibc merely keeps?
            trimmed = trim_malloc()
        finally:
            bots.stop.set()
            bots.join(60)
            sampler.halt.set()
            sampler.join()
            with contextlib.suppress(Exception):
                pg.run(svc.stop(), 60)
            stack.close()  # the runtime, then the server
        if not tracemalloc.is_tracing():
            tracemalloc.start(1)
        full_cache = measure_full_pattern_cache()
        tracemalloc.stop()
    # Filtered only now (slow in Python): the bots are stopped, nothing waits for it.
    snapshots = [snapshot.filter_traces(excluded) for snapshot in snapshots]
    errors: Counter[str] = Counter()
    for bot in bots.bots:
        errors.update(bot.errors)
    report(args, sampler.rows, marks, snapshots, types, full_cache, bots, errors)
    before, rss_before, after, rss_after = trimmed
    print(
        f"\nmalloc_trim(0) at the end, under load: RSS {rss_before / 1024:.1f} -> "
        f"{rss_after / 1024:.1f} MiB; glibc free {mib(before.get('free', 0))} -> "
        f"{mib(after.get('free', 0))} MiB, in use {mib(before.get('in_use', 0))} -> "
        f"{mib(after.get('in_use', 0))} MiB (RSS that trimming returns was free heap, not "
        "live objects)"
    )
    return 0 if not errors else 1


def report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    marks: list[dict[str, Any]],
    snapshots: list[tracemalloc.Snapshot],
    types: list[Counter[str]],
    full_cache: int,
    bots: BotThread,
    errors: Counter[str],
) -> None:
    first, last = marks[0], marks[-1]
    commands = last["commands"] - first["commands"]
    seconds = last["t"] - first["t"]
    print()
    print(
        f"{bots.commands:,} acknowledged commands in all, errors {dict(errors) or 0}, resent "
        f"{sum(b.retries for b in bots.bots)}; between snapshot 0 and {len(marks) - 1}: "
        f"{commands:,} commands in {seconds:.0f} s ({commands / seconds:,.0f}/s)"
    )

    before = first["commands"] - marks[0].get("traced_from", 0)
    if snapshots:
        print(
            f"commands traced before snapshot 0: {before:,}. Bounded caches (the actors' "
            f"_results: {first['held'].get('results', 0):,} commands) must have turned over by "
            "then, or their refill with traced objects looks like growth; and blocks reused "
            "from free lists (tuples, lists, floats...) keep the trace of whoever allocated them "
            "first, so attribution drifts between sites for a while: judge a site by its size "
            "at every snapshot and by the live object counts, not by one difference"
        )
    print("\n== process memory over time (RSS includes the bots and tracemalloc's own) ==")
    table = []
    for row in rows:
        table.append(
            [
                f"{row['t']:.0f}",
                f"{row['commands']:,}",
                f"{row['rss'] / 1024:.1f}",
                f"{row['blocks']:,}",
                mib(row.get("in_use", 0)),
                mib(row.get("free", 0)),
                mib(row.get("mmap", 0)),
                mib(row["traced"]),
                mib(row["tm_overhead"]),
            ]
        )
    print(
        h.table(
            [
                "t (s)",
                "commands",
                "RSS MiB",
                "alloc blocks",
                "malloc in use",
                "malloc free",
                "mmap",
                "traced",
                "tracemalloc own",
            ],
            table,
        )
    )
    traced_rows = [r for r in rows if r["t"] >= first["t"] and r["t"] <= last["t"] + 1]
    if len(traced_rows) >= 3:
        ts = [r["t"] for r in traced_rows]
        cs = [float(r["commands"]) for r in traced_rows]
        rate = slope_per_min(ts, cs)

        def fit(key: str, scale: float = 1.0) -> str:
            per_min = slope_per_min(ts, [r.get(key, 0) * scale for r in traced_rows])
            return f"{per_min / 2**20:+.3f} MiB/min ({per_min / rate:+.2f} B/command)"

        print(
            f"fitted between snapshots ({rate:,.0f} commands/min): RSS {fit('rss', 1024)}, "
            f"traced {fit('traced')}, malloc in use {fit('in_use')}, malloc free {fit('free')}, "
            f"tracemalloc's own {fit('tm_overhead')}; allocated blocks "
            f"{slope_per_min(ts, [r['blocks'] for r in traced_rows]) / rate:+.4f} per command"
        )
        entries = [float(m["held"]["pattern_matches"]) for m in marks]
        if len(marks) >= 3:
            per_entry = full_cache / max(CACHE_SIZE, 1)
            cache_min = slope_per_min([m["t"] for m in marks], entries) * per_entry
            print(
                f"of which the wildcard-match cache ({per_entry:.0f} B per new entry): "
                f"{cache_min / 2**20:+.3f} MiB/min ({cache_min / rate:+.2f} B/command)"
            )

    if any("arenas" in m for m in marks):
        print("\n== pymalloc per snapshot (untraced runs only) ==")
        print(
            h.table(
                ["snapshot", "t (s)", "arenas", "arenas peak", "in blocks MiB", "free blocks MiB"],
                [
                    [
                        str(k),
                        f"{m['t']:.0f}",
                        str(m.get("arenas", "?")),
                        str(m.get("arenas_peak", "?")),
                        mib(m.get("block_bytes", 0)),
                        mib(m.get("free_block_bytes", 0)),
                    ]
                    for k, m in enumerate(marks)
                ],
            )
        )

    print("\n== caches and per-command structures, per snapshot (sum over the sessions) ==")
    keys = list(first["held"])
    print(
        h.table(
            ["", *[str(k) for k in range(len(marks))]],
            [[key, *[f"{m['held'].get(key, 0):,}" for m in marks]] for key in keys],
        )
    )

    if snapshots:
        print(f"\n== top {args.top} growth sites, snapshot {len(marks) - 1} vs 0, by traceback ==")
        print(
            "size at each snapshot (KiB) shows whether a site grows on or levels off; "
            "B/cmd = growth / commands between snapshot 0 and the last"
        )
        per_snapshot = [
            {stat.traceback: stat.size for stat in snap.statistics("traceback")}
            for snap in snapshots
        ]
        diffs = snapshots[-1].compare_to(snapshots[0], "traceback")
        growth = sorted(diffs, key=lambda d: d.size_diff, reverse=True)
        done = [float(m["commands"]) for m in marks]
        for rank, diff in enumerate(growth[: args.top], 1):
            sizes = [p.get(diff.traceback, 0) for p in per_snapshot]
            series = " ".join(f"{size / 1024:.0f}" for size in sizes)
            fitted = (
                statistics.linear_regression(done, [float(x) for x in sizes]).slope
                if len(done) >= 3 and len(set(done)) > 1
                else float("nan")
            )
            print(
                f"#{rank} {side_of(diff.traceback)}: {diff.size_diff / 1024:+.1f} KiB "
                f"({diff.size_diff / max(commands, 1):+.3f} B/cmd; fitted over all snapshots "
                f"{fitted:+.3f} B/cmd), {diff.count_diff:+,} blocks (now "
                f"{diff.size / 1024:.1f} KiB in {diff.count:,}); KiB by snapshot: {series}"
            )
            for frame in frames_of(diff.traceback):
                print(f"      {frame}")
        shrink = sum(d.size_diff for d in diffs if d.size_diff < 0)
        grow = sum(d.size_diff for d in diffs if d.size_diff > 0)
        by_side: Counter[str] = Counter()
        for d in diffs:
            by_side[side_of(d.traceback)] += d.size_diff
        print(
            f"all sites: grown {grow / 1024:+.1f} KiB, shrunk {shrink / 1024:+.1f} KiB, net "
            f"{(grow + shrink) / 1024:+.1f} KiB ({(grow + shrink) / max(commands, 1):+.3f} B/cmd); "
            "net by side: "
            + ", ".join(
                f"{side} {size / 1024:+.1f} KiB ({size / max(commands, 1):+.3f} B/cmd)"
                for side, size in by_side.most_common()
            )
        )

        print(f"\n== top {args.top} growth by allocating line (most recent frame) ==")
        for diff in sorted(
            snapshots[-1].compare_to(snapshots[0], "lineno"),
            key=lambda d: d.size_diff,
            reverse=True,
        )[: args.top]:
            frame = diff.traceback[-1] if len(diff.traceback) else None
            where = f"{short(frame.filename)}:{frame.lineno}" if frame else "?"
            print(
                f"  {diff.size_diff / 1024:+9.1f} KiB {diff.count_diff:+8,} blocks "
                f"({diff.size_diff / max(commands, 1):+.3f} B/cmd)  {where}"
            )

        print("\n== growth by file (most recent frame) ==")
        for diff in sorted(
            snapshots[-1].compare_to(snapshots[0], "filename"),
            key=lambda d: abs(d.size_diff),
            reverse=True,
        )[:15]:
            frame = diff.traceback[-1] if len(diff.traceback) else None
            print(
                f"  {diff.size_diff / 1024:+9.1f} KiB {diff.count_diff:+8,} blocks  "
                f"{short(frame.filename) if frame else '?'}"
            )

    print("\n== live GC objects by type, last vs first snapshot (largest changes) ==")
    change = Counter(types[-1])
    change.subtract(types[0])
    moved = sorted(change.items(), key=lambda kv: abs(kv[1]), reverse=True)[: args.top]
    print(
        h.table(
            ["type", "first", "last", "change", "per 1000 cmds"],
            [
                [
                    name,
                    f"{types[0][name]:,}",
                    f"{types[-1][name]:,}",
                    f"{n:+,}",
                    f"{1000 * n / max(commands, 1):+.3f}",
                ]
                for name, n in moved
            ],
        )
    )
    print(
        f"GC-tracked objects: {sum(types[0].values()):,} -> {sum(types[-1].values()):,}; "
        "by snapshot: " + " ".join(f"{sum(t.values()):,}" for t in types)
    )

    held = [m["held"] for m in marks]
    new_entries = held[-1]["pattern_matches"] - held[0]["pattern_matches"]
    hours_left = (CACHE_SIZE - held[-1]["pattern_matches"]) / max(new_entries, 1) * seconds / 3600
    print(f"\n== policy wildcard-match lru_cache (maxsize {CACHE_SIZE:,}) ==")
    print(
        f"entries {held[0]['pattern_matches']:,} -> {held[-1]['pattern_matches']:,} "
        f"(+{new_entries:,} = {new_entries / max(commands, 1) * 1000:.2f} per 1000 commands; "
        f"{new_entries / max(seconds, 1) * 60:.0f}/min); full ({CACHE_SIZE:,} 'cursor.c<N>' "
        f"entries, measured on a copy): {mib(full_cache)} MiB = "
        f"{full_cache / max(CACHE_SIZE, 1):.0f} B per entry "
        f"(cache node, key tuple, dict slot, the name it keeps alive); at this rate full after "
        f"{hours_left:.1f} h "
        "more of this load"
    )
    cursors = max(b.next_cursor for b in bots.bots)
    print(
        f"cursor ids the bots created: up to c{cursors - 1} per bot (bots reuse the same ids "
        "c0, c1, ..., so 'cursor.cN' names are shared across sessions)"
    )


if __name__ == "__main__":
    h.main(run)

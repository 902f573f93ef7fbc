"""Cursor coverage lookups and disclosure queries (issue 4).

Part 1, the cursor index (pure CPU, no NATS): a ``CursorIndex`` folded from
``--cursors`` ``CursorAdded`` envelopes (1-2 axes each, drawn from 50 dotted
axes at 2 and 3 levels; random intervals in ``[0, 1000]``, 1-50 long), then
``--lookups`` random ``covering(axis, t)`` lookups once every axis is built,
against a brute-force scan of every cursor doing the same lookups (results
checked equal). Also: the fold, the first lookup after the fold (it computes
the block maxima of the axes on its path), a lookup on every axis (computes
them all), and lookups that each follow one ``CursorMoved`` (which moves the
cursor within its axes' sorted arrays and marks their block maxima from there
stale): on a random axis, and on an axis the moved cursor watches (a refresh
every time: the worst case).

Part 2, disclosure queries through the session actor: one session with a
``SyntheticCompositor``, one agent and one cursor on one axis over 24 time
steps (24 samples per answer); ``--queries`` ``QueryCursor`` commands sent
with ``SessionHandle.submit``, at most ``--window`` outstanding; each answer
is a ``DisclosureMade`` event stored on the real log before its future
resolves. Raw: nats-py ``js.publish_async`` of as many envelopes shaped like
the stored ``DisclosureMade`` (same size), each with a unique
``Nats-Msg-Id``, at most ``--window`` acks outstanding. Then sequential
``query_cursor`` (one at a time) vs sequential raw ``await js.publish`` of the
same payloads: rate and p50/p99 latency.

Run: .venv/bin/python bench/bench_disclosure.py [--quick] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import random
import time
from collections import deque
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

from plantangenet import (
    CommandResult,
    CursorAdded,
    CursorIndex,
    CursorMoved,
    DisclosureMade,
    Envelope,
    JournalConfig,
    MoveCursor,
    Plantangenet,
    QueryCursor,
    SessionHandle,
    SyntheticCompositor,
)
from plantangenet.data.compositors import covers
from plantangenet.nats.embedded import EmbeddedNats
from plantangenet.projections.session import CursorView

STREAM = "BENCH_DISCLOSURE"
PREFIX = "bench.disclosure"
SPAN = 1000.0  # cursor intervals lie in [0, SPAN]
AXIS = "ocean.temperature"
SAMPLES = 24  # the cursor covers [0, 23] at the compositor's step 1.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cursors", type=int, default=10_000, help="cursors in the index")
    p.add_argument("--lookups", type=int, default=100_000, help="indexed lookups per round")
    p.add_argument("--brute", type=int, default=500, help="brute-force lookups per round")
    p.add_argument("--moves", type=int, default=10_000, help="move+lookup pairs per round")
    p.add_argument("--queries", type=int, default=10_000, help="pipelined queries per round")
    p.add_argument("--window", type=int, default=1000, help="futures/acks kept outstanding")
    p.add_argument("--sync", type=int, default=1000, help="sequential queries per round")
    p.add_argument("--repeats", type=int, default=3, help="rounds of each part (median kept)")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument(
        "--no-move-reference", action="store_true", help="skip the pipelined MoveCursor reference"
    )
    p.add_argument("--quick", action="store_true", help="small sizes, 1 round (a smoke run)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead: cProfile the move+lookup loop and one pipelined query run",
    )
    args = p.parse_args()
    if args.quick:
        args.lookups, args.brute, args.moves = 10_000, 100, 2_000
        args.queries, args.sync, args.repeats = 2_000, 200, 1
    sizes = (args.cursors, args.lookups, args.brute, args.moves, args.queries, args.window)
    if min(*sizes, args.sync, args.repeats) < 1:
        p.error("sizes and --repeats must be positive")
    return args


# -- part 1: the cursor index ---------------------------------------------------------------


def make_axes() -> list[str]:
    """50 dotted axes: 20 at 2 levels, 30 at 3 (children of 15 of the 20)."""
    roots = ["ocean", "air", "soil", "river", "ice"]
    kinds = ["temperature", "salinity", "pressure", "flow"]
    two = [f"{r}.{k}" for r in roots for k in kinds]
    three = [f"{a}.{d}" for a in two[:15] for d in ("surface", "deep")]
    return two + three


def interval(rng: random.Random) -> tuple[float, float]:
    start = rng.uniform(0.0, SPAN - 50.0)
    return start, start + rng.uniform(1.0, 50.0)


def envelope(event: Any, seq: int, now: datetime) -> Envelope:
    eid = f"e{seq}"
    return Envelope(event, "idx", eid, eid, eid, now, agent_id=None, sequence=seq)


def make_cursor_envelopes(n: int, axes: list[str], rng: random.Random) -> list[Envelope]:
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        watched = tuple(rng.sample(axes, rng.choice((1, 2))))
        start, end = interval(rng)
        out.append(envelope(CursorAdded(f"a{i % 100}", f"c{i}", watched, start, end), i + 1, now))
    return out


def brute_covering(cursors: list[CursorView], axis: str, t: float) -> list[CursorView]:
    """The same answer as ``CursorIndex.covering``, by scanning every cursor."""
    found = [c for c in cursors if c.start <= t <= c.end and any(covers(w, axis) for w in c.axes)]
    found.sort(key=lambda c: c.cursor_id)
    return found


def rebuilt_share(
    added: list[Envelope], axes: list[str], moves: list[Envelope], pairs: list[tuple[str, float]]
) -> float:
    """Untimed replay of move+lookup pairs: the share of lookups that met a stale axis.

    Peeks at the index's private per-axis ``dirty_from`` marks (the benchmark's business only).
    """
    index = CursorIndex.of(added)
    for a in axes:
        index.covering(a, 0.0)
    stale = 0
    for env, (axis, t) in zip(moves, pairs, strict=True):
        index.apply(env)
        parts = axis.split(".")
        path = (index._axes.get(".".join(parts[:d])) for d in range(1, len(parts) + 1))
        stale += any(entry is not None and entry.dirty_from is not None for entry in path)
        index.covering(axis, t)
    return stale / len(moves)


def bench_index(args: argparse.Namespace) -> dict[str, list[float]]:
    rng = random.Random(args.seed)
    axes = make_axes()
    added = make_cursor_envelopes(args.cursors, axes, rng)
    lookups = [(rng.choice(axes), rng.uniform(0.0, SPAN)) for _ in range(args.lookups)]
    out: dict[str, list[float]] = {
        k: []
        for k in (
            "fold_s",
            "first_ms",
            "all_axes_ms",
            "indexed",
            "brute",
            "matches",
            "move_only",
            "move_random",
            "move_same",
            "rebuilt_share",
        )
    }
    for _ in range(args.repeats):
        gc.collect()
        t0 = time.perf_counter()
        index = CursorIndex.of(added)
        out["fold_s"].append(time.perf_counter() - t0)
        if len(index) != args.cursors:
            raise RuntimeError("index: wrong number of cursors")
        axis, t = lookups[0]
        t0 = time.perf_counter()
        index.covering(axis, t)
        out["first_ms"].append((time.perf_counter() - t0) * 1e3)
        # A fresh index, then one lookup per axis: every axis rebuilt once.
        index = CursorIndex.of(added)
        t0 = time.perf_counter()
        for a in axes:
            index.covering(a, 0.0)
        out["all_axes_ms"].append((time.perf_counter() - t0) * 1e3)

        gc.collect()
        matches = 0
        t0 = time.perf_counter()
        for a, t in lookups:
            matches += len(index.covering(a, t))
        out["indexed"].append(len(lookups) / (time.perf_counter() - t0))
        out["matches"].append(matches / len(lookups))

        cursors = list(index.cursors.values())
        sample = lookups[: args.brute]
        t0 = time.perf_counter()
        brute = [brute_covering(cursors, a, t) for a, t in sample]
        out["brute"].append(len(sample) / (time.perf_counter() - t0))
        if brute != [index.covering(a, t) for a, t in sample]:
            raise RuntimeError("index: covering() and the brute-force scan disagree")

        # One CursorMoved before each lookup (envelopes built before the clock starts).
        now = datetime.now(UTC)
        views = list(index.cursors.values())
        moves, random_axis, same_axis = [], [], []
        for k in range(args.moves):
            c = rng.choice(views)
            start, end = interval(rng)
            event = CursorMoved(c.agent_id, c.cursor_id, c.axes, start, end)
            moves.append(envelope(event, args.cursors + k + 1, now))
            random_axis.append((rng.choice(axes), rng.uniform(0.0, SPAN)))
            same_axis.append((rng.choice(c.axes), rng.uniform(0.0, SPAN)))
        for name, pairs in (("move_random", random_axis), ("move_same", same_axis)):
            index = CursorIndex.of(added)
            for a in axes:
                index.covering(a, 0.0)
            gc.collect()
            t0 = time.perf_counter()
            for env, (a, t) in zip(moves, pairs, strict=True):
                index.apply(env)
                index.covering(a, t)
            out[name].append(len(moves) / (time.perf_counter() - t0))
            if name == "move_random" and not out["rebuilt_share"]:
                out["rebuilt_share"].append(rebuilt_share(added, axes, moves, pairs))
        index = CursorIndex.of(added)
        t0 = time.perf_counter()
        for env in moves:
            index.apply(env)
        out["move_only"].append(len(moves) / (time.perf_counter() - t0))
    return out


def report_index(args: argparse.Namespace, r: dict[str, list[float]]) -> None:
    med = {k: h.median(v) for k, v in r.items()}
    rows = [
        ["fold of the CursorAdded envelopes", f"{med['fold_s'] * 1e3:,.1f} ms", ""],
        ["first lookup after the fold (refreshes its axes)", f"{med['first_ms']:.2f} ms", ""],
        [
            "one lookup on each of the 50 axes (refreshes all)",
            f"{med['all_axes_ms']:.2f} ms",
            f"{med['all_axes_ms'] * 1e3 / 50:.0f} µs/axis",
        ],
        [
            "covering(axis, t), index built",
            f"{med['indexed']:,.0f}/s",
            f"{1e6 / med['indexed']:.1f} µs",
        ],
        [
            "brute-force scan of every cursor",
            f"{med['brute']:,.0f}/s",
            f"{1e6 / med['brute']:.0f} µs",
        ],
        ["CursorMoved applied (no lookup)", f"{med['move_only']:,.0f}/s", ""],
        [
            "CursorMoved + lookup, random axis",
            f"{med['move_random']:,.0f}/s",
            f"{1e6 / med['move_random']:.1f} µs",
        ],
        [
            "CursorMoved + lookup on the moved cursor's axis",
            f"{med['move_same']:,.0f}/s",
            f"{1e6 / med['move_same']:.1f} µs",
        ],
    ]
    print(
        f"cursor index: {args.cursors:,} cursors on 50 axes, median of {args.repeats} rounds; "
        f"{med['matches']:.1f} cursors match a lookup on average"
    )
    print(h.table(["", "median", "per lookup"], rows))
    print(f"speedup of the index over the brute-force scan: {med['indexed'] / med['brute']:,.0f}x")
    print(
        "speedup over brute force with a move before every lookup: "
        f"{med['move_random'] / med['brute']:,.0f}x (random axis), "
        f"{med['move_same'] / med['brute']:,.0f}x (moved cursor's axis)"
    )
    print(
        f"lookups after a move that met an axis marked for refresh (random axis): "
        f"{r['rebuilt_share'][0]:.0%}"
    )
    print()


# -- part 2: disclosure queries -------------------------------------------------------------


def open_session(pg: Plantangenet, session_id: str) -> SessionHandle:
    s = pg.session(session_id)
    s.start({"bench": "disclosure"})
    s.change_policy(
        replace=[
            {"id": "q", "effect": "allow", "actions": ["cursor.query"], "resources": ["axis.*"]}
        ]
    )
    s.register_compositor("synthetic")
    s.attach("ana", kind="bot", name="bench analyst")
    s.add_cursor("ana", "c1", [AXIS], 0.0, float(SAMPLES - 1))
    return s


def query() -> QueryCursor:
    return QueryCursor(agent_id="ana", cursor_id="c1", compositor="synthetic")


def check(result: CommandResult) -> int:
    if len(result.samples) != SAMPLES or len(result.events) != 1:
        raise RuntimeError("library: a query did not disclose 24 samples in one event")
    if not isinstance(result.events[0].event, DisclosureMade):
        raise RuntimeError("library: a query did not store a DisclosureMade")
    return result.sequence


def run_pipelined(
    pg: Plantangenet, session_id: str, n: int, window: int, *, moves: bool = False
) -> dict[str, Any]:
    """``n`` queries (or, with ``moves``, ``n`` MoveCursor commands) kept ``window`` deep."""
    s = open_session(pg, session_id)
    if moves:
        commands: list[Any] = [
            MoveCursor(agent_id="ana", cursor_id="c1", axes=(AXIS,), start=float(i), end=i + 23.0)
            for i in range(1, n + 1)
        ]
    else:
        commands = [query() for _ in range(n)]
    checked = (lambda r: r.sequence) if moves else check
    outstanding: deque[Future[CommandResult]] = deque()
    seqs: list[int] = []
    gc.collect()
    start = time.perf_counter()
    for command in commands:
        if len(outstanding) >= window:
            seqs.append(checked(outstanding.popleft().result(120)))
        outstanding.append(s.submit(command))
    while outstanding:
        seqs.append(checked(outstanding.popleft().result(120)))
    elapsed = time.perf_counter() - start
    if len(set(seqs)) != n or max(seqs) - min(seqs) + 1 != n:
        raise RuntimeError("library: the stored sequences are not contiguous")
    pg.stop_session(session_id)
    return {"elapsed": elapsed, "first": min(seqs), "last": max(seqs)}


def run_sync(pg: Plantangenet, session_id: str, n: int) -> tuple[float, list[float]]:
    s = open_session(pg, session_id)
    for _ in range(20):  # warm-up
        s.query_cursor("ana", "c1", "synthetic")
    latencies = []
    gc.collect()
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        check(s.query_cursor("ana", "c1", "synthetic"))
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    pg.stop_session(session_id)
    return n / elapsed, latencies


async def raw_pipelined(
    js: Any, subject: str, messages: list[tuple[bytes, dict[str, str]]]
) -> float:
    start = time.perf_counter()
    futures = [await js.publish_async(subject, payload, headers=hdr) for payload, hdr in messages]
    await js.publish_async_completed()
    acks = [f.result() for f in futures]
    elapsed = time.perf_counter() - start
    if any(ack.duplicate for ack in acks) or len({ack.seq for ack in acks}) != len(messages):
        raise RuntimeError("raw: duplicate or missing acknowledgements")
    return elapsed


async def raw_sync(
    js: Any, subject: str, messages: list[tuple[bytes, dict[str, str]]]
) -> tuple[float, list[float]]:
    latencies = []
    start = time.perf_counter()
    for payload, hdr in messages:
        t0 = time.perf_counter()
        ack = await js.publish(subject, payload, headers=hdr)
        latencies.append(time.perf_counter() - t0)
        if ack.duplicate:
            raise RuntimeError("raw: duplicate acknowledgement")
    return len(messages) / (time.perf_counter() - start), latencies


def raw_messages(template: Envelope, session_id: str, n: int) -> list[tuple[bytes, dict[str, str]]]:
    events = (template.event for _ in range(n))
    return [
        (payload, {"Nats-Msg-Id": h.msg_id(session_id, cid)})
        for cid, payload in h.encoded_like(template, session_id, events)
    ]


def bench_disclosure(args: argparse.Namespace) -> None:
    n = args.queries
    sides = ["library", "raw"] + ([] if args.no_move_reference else ["library moves"])
    rates: dict[str, list[float]] = {x: [] for x in sides}
    sync_rates: dict[str, list[float]] = {x: [] for x in ("library", "raw")}
    sync_lat: dict[str, list[float]] = {x: [] for x in ("library", "raw")}
    appends: list[int] = []
    rows = []
    with EmbeddedNats() as server:
        journal = JournalConfig(stream=STREAM, subject_prefix=PREFIX)
        with (
            Plantangenet.open(
                nats_url=server.url, journal=journal, compositors=[SyntheticCompositor()]
            ) as pg,
            h.RawClient(server.url, max_pending=args.window) as raw,
        ):
            # What a library-written DisclosureMade looks like: the raw payloads copy it.
            s = open_session(pg, "template")
            s.query_cursor("ana", "c1", "synthetic")
            s.query_cursor("ana", "c1", "synthetic")
            pg.stop_session("template")
            subject = f"{PREFIX}.template"
            template, _ = raw.run(h.last_envelope(raw.js, STREAM, subject))
            lib_size = len(raw.run(raw.js.get_last_msg(STREAM, subject)).data)
            raw_size = len(raw_messages(template, "raw-size", 2)[1][0])  # chained, like the log
            print(
                f"disclosure queries: {n:,} pipelined (window {args.window}) and {args.sync:,} "
                f"sequential per round, {args.repeats} rounds, {SAMPLES} samples per answer; "
                f"payload: stored DisclosureMade {lib_size} B, raw {raw_size} B"
            )
            for r in range(args.repeats):
                row: dict[str, float] = {}
                for side in h.rotate(sides, r):
                    gc.collect()
                    if side == "library":
                        sid = f"lib-{r}"
                        out = run_pipelined(pg, sid, n, args.window)
                        row[side] = n / out["elapsed"]
                        count, msgs = raw.run(
                            h.count_appends(raw.js, f"{PREFIX}.{sid}", out["first"], out["last"])
                        )
                        if msgs != n:
                            raise RuntimeError(f"library: {msgs} messages stored, expected {n}")
                        appends.append(count)
                        rate, lat = run_sync(pg, f"libsync-{r}", args.sync)
                    elif side == "library moves":
                        out = run_pipelined(pg, f"move-{r}", n, args.window, moves=True)
                        row[side] = n / out["elapsed"]
                        continue
                    else:
                        sid = f"raw-{r}"
                        messages = raw_messages(template, sid, n)
                        row[side] = n / raw.run(raw_pipelined(raw.js, f"{PREFIX}.{sid}", messages))
                        sid = f"rawsync-{r}"
                        messages = raw_messages(template, sid, args.sync)
                        rate, lat = raw.run(raw_sync(raw.js, f"{PREFIX}.{sid}", messages))
                    sync_rates[side].append(rate)
                    sync_lat[side].extend(lat)
                for side in sides:
                    rates[side].append(row[side])
                rows.append(
                    [
                        f"run {r + 1}",
                        *(f"{row[x]:,.0f}" for x in sides),
                        f"{row['library'] / row['raw']:.2f}",
                        f"{appends[-1]} ({n / appends[-1]:.0f}/append)",
                    ]
                )
    med = {x: h.median(v) for x, v in rates.items()}
    ratio = med["library"] / med["raw"]
    rows.append(
        [
            "median",
            *(f"{med[x]:,.0f}" for x in sides),
            f"{ratio:.2f}",
            f"{h.median(appends):.0f} ({n / h.median(appends):.0f}/append)",
        ]
    )
    names = {
        "library": "library queries",
        "raw": "raw publish_async",
        "library moves": "MoveCursor (ref.)",
    }
    headers = ["per s (pipelined)", *(names[x] for x in sides), "queries/raw", "query appends"]
    print(h.table(headers, rows))
    print()
    sync_rows = []
    for side in ("library", "raw"):
        lat = sorted(sync_lat[side])
        sync_rows.append(
            [
                "library query_cursor" if side == "library" else "raw await js.publish",
                f"{h.median(sync_rates[side]):,.0f}",
                f"{h.percentile(lat, 50) * 1e6:,.0f}",
                f"{h.percentile(lat, 99) * 1e6:,.0f}",
                f"{lat[-1] * 1e6:,.0f}",
            ]
        )
    print(h.table(["sequential", "per s (median)", "p50 µs", "p99 µs", "max µs"], sync_rows))
    lib, rw = sorted(sync_lat["library"]), sorted(sync_lat["raw"])
    sync_ratio = h.median(sync_rates["library"]) / h.median(sync_rates["raw"])
    p50_ratio = h.percentile(lib, 50) / h.percentile(rw, 50)
    print(f"sequential library/raw: rate {sync_ratio:.2f}, p50 {p50_ratio:.1f}x")
    print()
    print(f"pipelined disclosure queries / raw publish_async: {ratio:.2f}")
    if "library moves" in med:
        per_move = med["library"] / med["library moves"]
        print(f"pipelined disclosure queries / MoveCursor: {per_move:.2f}")
    print(
        "note: raw sends same-size payloads encoded before the clock starts; it does not decide, "
        "ask a compositor, shape samples, fold, or guard appends with "
        "Nats-Expected-Last-Subject-Sequence."
    )


# -- profile ------------------------------------------------------------------------------


def profile(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    axes = make_axes()
    added = make_cursor_envelopes(args.cursors, axes, rng)
    index = CursorIndex.of(added)
    views = list(index.cursors.values())
    now = datetime.now(UTC)
    pairs = []
    for k in range(args.moves):
        c = rng.choice(views)
        start, end = interval(rng)
        env = envelope(CursorMoved(c.agent_id, c.cursor_id, c.axes, start, end), k, now)
        pairs.append((env, rng.choice(c.axes), rng.uniform(0.0, SPAN)))
    prof = cProfile.Profile()
    prof.enable()
    for env, a, t in pairs:
        index.apply(env)
        index.covering(a, t)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    print(f"CursorMoved + lookup on the moved cursor's axis, {args.moves:,} pairs:")
    print(out.getvalue())

    with EmbeddedNats() as server:
        profiler = h.ThreadProfiler().start()
        journal = JournalConfig(stream=STREAM, subject_prefix=PREFIX)
        with Plantangenet.open(
            nats_url=server.url, journal=journal, compositors=[SyntheticCompositor()]
        ) as pg:
            out2 = run_pipelined(pg, "profiled", args.queries, args.window)
        print(f"library: {args.queries / out2['elapsed']:,.0f} queries/s under cProfile")
        print(profiler.report())
    return 0


def run() -> int:
    args = parse_args()
    if args.profile:
        return profile(args)
    print(f"bench_disclosure: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(h.environment_line())
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print()
    t0 = time.perf_counter()
    report_index(args, bench_index(args))
    t1 = time.perf_counter()
    bench_disclosure(args)
    t2 = time.perf_counter()
    print(f"\ntook {t1 - t0:.1f} s (index) + {t2 - t1:.1f} s (disclosure)")
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    h.main(run)

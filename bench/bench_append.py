"""Append throughput: pipelined MoveCursor commands vs raw nats-py publish_async.

Library: one runtime, one started session with one attached agent and one
cursor, then ``--commands`` MoveCursor commands sent with
``SessionHandle.submit`` keeping at most ``--window`` futures outstanding; the
clock stops when every future has resolved (every event is stored and folded).

Library, batched: the same commands sent with ``SessionHandle.submit_many`` in
batches of ``--batch`` (100), at most ``--window`` commands outstanding: one
message and one future per batch instead of per command; each command is still
decided, stored, folded and answered on its own.

Raw: the same CursorMoved envelopes (shaped like one the library stored:
same agent, authorization, hash chain), CODEC-encoded before the clock starts,
sent with nats-py ``js.publish_async`` to another session subject of the same
stream, each with a unique ``Nats-Msg-Id``, at most ``--window`` acks
outstanding; the clock stops when every ack arrived. Raw pipelining cannot
send ``Nats-Expected-Last-Subject-Sequence`` (the expected sequence of message
k+1 is unknown until message k is acknowledged), so it does no optimistic
concurrency check: it is an upper bound, not an equivalent.

Raw batched (reference): what the library sends on the wire, done by hand
-- sequential JetStream atomic batches of ``--max-batch`` events, the first
message guarded by ``Nats-Expected-Last-Subject-Sequence``.

Run: .venv/bin/python bench/bench_append.py [--commands 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

from plantangenet import (
    CommandResult,
    Envelope,
    JournalConfig,
    MoveCursor,
    Plantangenet,
    PlantangenetError,
)
from plantangenet.actors.session import DEFAULT_MAX_BATCH
from plantangenet.nats.embedded import EmbeddedNats

STREAM = "BENCH_APPEND"
PREFIX = "bench.append"
TARGET = 0.5


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commands", type=int, default=20_000, help="commands per run")
    p.add_argument("--window", type=int, default=1000, help="futures/acks kept outstanding")
    p.add_argument(
        "--batch", type=int, default=100, help="commands per submit_many (library, batched)"
    )
    p.add_argument("--repeats", type=int, default=3, help="runs of each side (median kept)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"library group-commit limit (its default: {DEFAULT_MAX_BATCH})",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead: one library run under cProfile (all threads), print the top costs",
    )
    p.add_argument(
        "--profile-many",
        action="store_true",
        help="with --profile: profile the submit_many run instead of submit",
    )
    p.add_argument("--no-raw-batched", action="store_true", help="skip the raw batched reference")
    p.add_argument(
        "--require-ratio",
        type=float,
        default=None,
        help=f"exit 2 if the median submit/raw ratio is below this (target: {TARGET})",
    )
    args = p.parse_args()
    if min(args.commands, args.window, args.repeats, args.max_batch, args.batch) < 1:
        p.error("--commands, --window, --batch, --repeats and --max-batch must be positive")
    return args


# -- library -------------------------------------------------------------------------------


def run_library(
    pg: Plantangenet, session_id: str, n: int, window: int, batch: int = 0
) -> dict[str, Any]:
    """``n`` moves through ``submit`` (``batch`` 0) or ``submit_many`` in batches of ``batch``."""
    handle = pg.session(session_id)
    handle.start({"bench": "append"})
    handle.attach("bot-1", kind="bot", name="bench bot")
    handle.add_cursor("bot-1", "c1", ["x"], 0.0, 1.0)
    commands = [
        MoveCursor(agent_id="bot-1", cursor_id="c1", axes=("x",), start=float(i), end=float(i + 1))
        for i in range(n)
    ]
    outstanding: deque[Future[CommandResult]] = deque()
    batches: deque[Future[tuple[CommandResult | PlantangenetError, ...]]] = deque()
    timeout = 120.0
    sequences: list[int] = []

    def settle(future: Future[CommandResult]) -> None:
        check(future.result(timeout))

    def settle_batch(future: Future[tuple[CommandResult | PlantangenetError, ...]]) -> None:
        for outcome in future.result(timeout):
            if not isinstance(outcome, CommandResult):
                raise RuntimeError(f"library: a command was refused: {outcome!r}")
            check(outcome)

    def check(result: CommandResult) -> None:
        if len(result.events) != 1:
            raise RuntimeError("library: a command did not store exactly one event")
        if sequences and result.sequence <= sequences[-1]:
            raise RuntimeError("library: sequences are not increasing")
        if len(sequences) < 2:
            sequences.append(result.sequence)
        else:
            sequences[-1] = result.sequence

    gc.collect()
    cpu = h.CpuSplit(pg.loop.name).start()
    start = time.perf_counter()
    if batch:
        for lo in range(0, n, batch):
            if len(batches) * batch >= window:
                settle_batch(batches.popleft())
            batches.append(handle.submit_many(commands[lo : lo + batch]))
        while batches:
            settle_batch(batches.popleft())
    else:
        for command in commands:
            if len(outstanding) >= window:
                settle(outstanding.popleft())
            outstanding.append(handle.submit(command))
        while outstanding:
            settle(outstanding.popleft())
    elapsed = time.perf_counter() - start
    split = cpu.stop(n)  # before the session's actor stops
    if sequences[-1] - sequences[0] + 1 != n:
        raise RuntimeError("library: the stored sequences are not contiguous")
    state = handle.state
    if state.cursors["c1"].end != float(n):
        raise RuntimeError("library: the session did not fold the last move")
    pg.stop_session(session_id)
    return {"elapsed": elapsed, "first": sequences[0], "last": sequences[-1], "cpu": split}


# -- raw -------------------------------------------------------------------------------------


async def raw_pipelined(
    js: Any, subject: str, messages: list[tuple[bytes, dict[str, str]]]
) -> float:
    start = time.perf_counter()
    futures = [await js.publish_async(subject, payload, headers=hdr) for payload, hdr in messages]
    acks = await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    if any(ack.duplicate for ack in acks) or len({ack.seq for ack in acks}) != len(messages):
        raise RuntimeError("raw: duplicate or missing acknowledgements")
    return elapsed


async def raw_batched(
    nc: Any, subject: str, messages: list[tuple[bytes, dict[str, str]]], batch: int
) -> float:
    """Sequential guarded atomic batches: the library's wire protocol, by hand."""
    last_seq = 0
    start = time.perf_counter()
    for lo in range(0, len(messages), batch):
        chunk = messages[lo : lo + batch]
        if len(chunk) == 1:
            payload, hdr = chunk[0]
            hdr = {**hdr, "Nats-Expected-Last-Subject-Sequence": str(last_seq)}
            reply = await nc.request(subject, payload, 10, headers=hdr)
        else:
            batch_id = h.new_id()
            final = len(chunk) - 1
            for i, (payload, base) in enumerate(chunk):
                hdr = {**base, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i + 1)}
                if i == 0:
                    hdr["Nats-Expected-Last-Subject-Sequence"] = str(last_seq)
                if i < final:
                    await nc.publish(subject, payload, headers=hdr)
                else:
                    hdr["Nats-Batch-Commit"] = "1"
                    reply = await nc.request(subject, payload, 10, headers=hdr)
        ack = json.loads(reply.data)
        if "error" in ack or ack.get("duplicate"):
            raise RuntimeError(f"raw batched: refused: {ack}")
        last_seq = int(ack["seq"])
    return time.perf_counter() - start


def raw_messages(template: Envelope, session_id: str, n: int) -> list[tuple[bytes, dict[str, str]]]:
    moves = (h.cursor_move(i + 1) for i in range(n))
    return [
        (payload, {"Nats-Msg-Id": h.msg_id(session_id, cid)})
        for cid, payload in h.encoded_like(template, session_id, moves)
    ]


def print_cpu(cpu: dict[str, list[dict[str, float]]]) -> None:
    """Median CPU per command of this process, split by thread where /proc says."""
    print("python CPU per command (median µs; less noisy than the rates on a shared VM):")
    raw = h.median([c["total"] for c in cpu["raw"]])
    for side in ("submit", "submit_many"):
        parts = {k: h.median([c[k] for c in cpu[side]]) for k in cpu[side][0]}
        split = ", ".join(f"{k} {parts[k]:.1f}" for k in ("caller", "loop", "actors") if k in parts)
        print(
            f"  {side}: {parts['total']:.1f}"
            + (f" ({split})" if split else "")
            + f"; raw/library {raw / parts['total']:.2f}"
        )
    print(f"  raw publish_async: {raw:.1f} (client and its loop)")


# -- main --------------------------------------------------------------------------------------


def profile(args: argparse.Namespace) -> int:
    with EmbeddedNats() as server:
        profiler = h.ThreadProfiler().start()
        journal = JournalConfig(stream=STREAM, subject_prefix=PREFIX)
        with Plantangenet.open(
            nats_url=server.url, journal=journal, max_batch=args.max_batch
        ) as pg:
            batch = args.batch if args.profile_many else 0
            out = run_library(pg, "profiled", args.commands, args.window, batch)
        side = "submit_many" if batch else "submit"
        print(f"library ({side}): {args.commands / out['elapsed']:,.0f} commands/s under cProfile")
        print(profiler.report())
    return 0


def run() -> int:
    args = parse_args()
    if args.profile:
        return profile(args)
    n = args.commands
    print(
        f"bench_append: {n} commands x {args.repeats} repeats, window {args.window}, "
        f"submit_many batches of {args.batch}"
    )
    print(h.environment_line())
    sides = ["submit", "submit_many", "raw"] + ([] if args.no_raw_batched else ["raw batched"])
    rates: dict[str, list[float]] = {s: [] for s in sides}
    cpu: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    appends: list[int] = []
    rows = []
    with EmbeddedNats() as server:
        journal = JournalConfig(stream=STREAM, subject_prefix=PREFIX)
        with (
            Plantangenet.open(nats_url=server.url, journal=journal, max_batch=args.max_batch) as pg,
            h.RawClient(server.url, max_pending=args.window) as raw,
        ):
            # What a library-written CursorMoved looks like: the raw payloads copy it.
            h.start_template_session(pg, "template")
            pg.stop_session("template")
            template, _ = raw.run(h.last_envelope(raw.js, STREAM, f"{PREFIX}.template"))
            for r in range(args.repeats):
                row: dict[str, float] = {}
                for side in h.rotate(sides, r):
                    gc.collect()
                    sid = f"{side.replace(' ', '')}-{r}"
                    if side in ("submit", "submit_many"):
                        per = args.batch if side == "submit_many" else 0
                        out = run_library(pg, sid, n, args.window, per)
                        row[side] = n / out["elapsed"]
                        cpu[side].append(out["cpu"])
                        count, msgs = raw.run(
                            h.count_appends(raw.js, f"{PREFIX}.{sid}", out["first"], out["last"])
                        )
                        if msgs != n:
                            raise RuntimeError(f"library: {msgs} messages stored, expected {n}")
                        appends.append(count)
                    elif side == "raw":
                        messages = raw_messages(template, sid, n)
                        started = time.process_time()
                        elapsed = raw.run(raw_pipelined(raw.js, f"{PREFIX}.{sid}", messages))
                        row[side] = n / elapsed
                        cpu[side].append({"total": (time.process_time() - started) / n * 1e6})
                    else:
                        messages = raw_messages(template, sid, n)
                        elapsed = raw.run(
                            raw_batched(raw.nc, f"{PREFIX}.{sid}", messages, args.max_batch)
                        )
                        row[side] = n / elapsed
                for side in sides:
                    rates[side].append(row[side])
                rows.append(
                    [
                        f"run {r + 1}",
                        *(f"{row[s]:,.0f}" for s in sides),
                        f"{row['submit'] / row['raw']:.2f}",
                        f"{row['submit_many'] / row['raw']:.2f}",
                        f"{appends[-2]} / {appends[-1]}",
                    ]
                )
    med = {s: h.median(v) for s, v in rates.items()}
    ratio = med["submit"] / med["raw"]
    ratio_many = med["submit_many"] / med["raw"]
    rows.append(
        [
            "median",
            *(f"{med[s]:,.0f}" for s in sides),
            f"{ratio:.2f}",
            f"{ratio_many:.2f}",
            f"{h.median(appends):.0f} ({n / h.median(appends):.0f} events/append)",
        ]
    )
    print()
    print(
        h.table(
            ["commands/s", *sides, "submit/raw", "submit_many/raw", "library appends"],
            rows,
        )
    )
    print()
    if "raw batched" in med:
        print(
            "library / raw batched (same wire protocol): "
            f"submit {med['submit'] / med['raw batched']:.2f}, "
            f"submit_many {med['submit_many'] / med['raw batched']:.2f}"
        )
    print_cpu(cpu)
    for label, value in (("submit", ratio), ("submit_many", ratio_many)):
        verdict = "meets" if value >= TARGET else "MISSES"
        print(f"library ({label}) / raw publish_async: {value:.2f} ({verdict} the {TARGET} target)")
    print(
        "note: raw publish_async pipelines without Nats-Expected-Last-Subject-Sequence "
        "(impossible while pipelining), so it has no optimistic concurrency check; "
        "the library guards every append with it."
    )
    if args.require_ratio is not None and ratio < args.require_ratio:
        return 2
    return 0


if __name__ == "__main__":
    h.main(run)

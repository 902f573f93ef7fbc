"""``state_at`` in the middle of a long session vs a raw nats-py push read of the events before it.

Setup (not timed): one hash-chained session of ``--events`` events (200,000 by
default; see ``_harness.prepare_long_session``). The position is the event in the
middle of the session.

Timed, ``--repeats`` times in rotating order, median kept:

* raw nats-py push consumer (callback): the fastest read of the same messages we
  found with raw nats-py (``_harness.raw_push_read``: an ephemeral AckNone push
  consumer with flow control delivering to an ``async`` callback, generous pending
  limits; the variants measured are in its docstring), up to the middle event,
  touching ``msg.data`` of each (no decoding). The ratios are library / this.
* library: ``Plantangenet.state_at(session_id, middle_sequence)`` (decode, upcast,
  fold every event up to the position), and the same by the event's *id* and by its
  *time* (which resolve the position first).

Memory: peak RSS growth of a ``state_at`` at a quarter and at the middle of the
session, each in a fresh child process: flat means it does not grow with the
number of events read.

Run: .venv/bin/python bench/bench_state_at.py [--events 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

from plantangenet import JournalConfig, Plantangenet
from plantangenet.nats.embedded import EmbeddedNats

STREAM = "BENCH_STATE_AT"
PREFIX = "bench.stateat"
SESSION = "long"


def config() -> JournalConfig:
    return JournalConfig(stream=STREAM, subject_prefix=PREFIX, idle_timeout=30.0)


def raw_read(raw: h.RawClient, count: int) -> float:
    """Seconds :func:`_harness.raw_push_read` takes for the session's first ``count`` events."""
    elapsed, read = raw.push_read(STREAM, f"{PREFIX}.{SESSION}", count=count)
    if read != count:
        raise RuntimeError(f"raw: read {read} events, expected {count}")
    return elapsed


def child(url: str, sequence: int) -> None:
    """In a fresh process: one state_at, then print the peak RSS growth (KiB)."""
    before = h.rss_kib()
    with Plantangenet.open(nats_url=url, journal=config()) as pg:
        state = pg.state_at(SESSION, sequence)
    print(json.dumps({"growth": h.peak_rss_kib() - before, "events": state.event_count}))


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    print(f"bench_state_at: a session of {args.events} events, {args.repeats} repeats")
    print(h.environment_line())
    with (
        EmbeddedNats() as server,
        Plantangenet.open(nats_url=server.url, journal=config()) as pg,
        h.RawClient(server.url) as raw,
    ):
        t = time.perf_counter()
        h.prepare_long_session(pg, raw, STREAM, PREFIX, SESSION, args.events)
        print(f"filled in {time.perf_counter() - t:.1f}s (not timed)")
        history_middle = args.events // 2
        # The only session in the stream: its k-th event is at stream sequence k.
        (target,) = pg.history(SESSION, from_sequence=history_middle, to_sequence=history_middle)
        (quarter,) = pg.history(
            SESSION, from_sequence=args.events // 4, to_sequence=args.events // 4
        )
        readers = {
            # The only session in the stream: the events up to the middle one are its first
            # `target.sequence`.
            "raw": lambda: raw_read(raw, target.sequence or 0),
            "state_at(sequence)": lambda: timed(lambda: pg.state_at(SESSION, target.sequence)),
            "state_at(event id)": lambda: timed(lambda: pg.state_at(SESSION, target.event_id)),
            "state_at(time)": lambda: timed(lambda: pg.state_at(SESSION, target.occurred_at)),
        }
        results: dict[str, list[float]] = {name: [] for name in readers}
        for r in range(args.repeats):
            for name in h.rotate(list(readers), r):
                results[name].append(readers[name]())
        raw_time = h.median(results["raw"])
        rows = []
        for name, times in results.items():
            seconds = h.median(times)
            rows.append(
                (
                    h.RAW_READ_LABEL if name == "raw" else name,
                    f"{seconds:.2f}",
                    f"{history_middle / seconds:,.0f}",
                    f"{raw_time / seconds:.2f}",
                )
            )
        print()
        print(h.table(("reader (medians)", "seconds", "events/s", "library/raw"), rows))
        print()
        h.report_against_raw(
            [(name, history_middle / h.median(t)) for name, t in results.items() if name != "raw"],
            history_middle / raw_time,
        )
        print()
        growth = []
        for seq, label in ((quarter.sequence, "quarter"), (target.sequence, "middle")):
            out = subprocess.run(
                [sys.executable, __file__, "--child", server.url, str(seq)],
                capture_output=True,
                text=True,
                check=True,
            )
            report = json.loads(out.stdout.strip().splitlines()[-1])
            growth.append((label, report["events"], report["growth"] / 1024))
        print(
            h.table(
                ("state_at at", "events folded", "peak RSS growth (MiB)"),
                [(label, f"{n:,}", f"{g:.1f}") for label, n, g in growth],
            )
        )
    return 0


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    h.main(run)

"""Command round-trip latency: sequential handle.execute vs sequential raw js.publish.

Library: one bot-like caller sends MoveCursor commands one at a time with
``SessionHandle.execute`` (returns once the event is stored and folded).

Raw: the same CursorMoved envelopes (shaped like one the library stored),
CODEC-encoded before the clock starts,
each sent with nats-py ``await js.publish(...)`` carrying ``Nats-Msg-Id`` and
``Nats-Expected-Last-Subject-Sequence`` (the caller tracks the last sequence
from each ack): the same optimistic-concurrency append the library makes.

Both sides run ``--repeats`` rounds in alternating order after a warm-up;
percentiles are over every timed command of all rounds.

Run: .venv/bin/python bench/bench_latency.py [--commands 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from typing import Any

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

from plantangenet import Envelope, JournalConfig, MoveCursor, Plantangenet, SessionHandle
from plantangenet.nats.embedded import EmbeddedNats

STREAM = "BENCH_LATENCY"
PREFIX = "bench.latency"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commands", type=int, default=3000, help="timed commands per side per round")
    p.add_argument("--warmup", type=int, default=200, help="untimed commands per side first")
    p.add_argument("--repeats", type=int, default=3, help="rounds, alternating the order")
    args = p.parse_args()
    if args.commands < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--commands and --repeats must be positive, --warmup not negative")
    return args


class LibrarySide:
    def __init__(self, pg: Plantangenet) -> None:
        self.handle: SessionHandle = h.start_template_session(pg, "lat-lib")
        self.moves = 1

    def run(self, n: int) -> list[float]:
        commands = []
        for _ in range(n):
            i = self.moves
            self.moves += 1
            commands.append(
                MoveCursor(
                    agent_id="bot-1", cursor_id="c1", axes=("x",), start=float(i), end=float(i + 1)
                )
            )
        out = []
        execute = self.handle.execute
        clock = time.perf_counter
        for command in commands:
            start = clock()
            result = execute(command)
            out.append(clock() - start)
            if result.sequence <= 0:
                raise RuntimeError("library: no sequence in the result")
        return out


class RawSide:
    def __init__(self, raw: h.RawClient, template: Envelope) -> None:
        self.raw = raw
        self.template = template
        self.moves = 1
        self.previous = b""
        self.session_id = "lat-raw"
        self.subject = f"{PREFIX}.{self.session_id}"
        self.last_seq = 0

    def run(self, n: int) -> list[float]:
        moves = [h.cursor_move(self.moves + i) for i in range(n)]
        self.moves += n
        messages = [
            (payload, h.msg_id(self.session_id, cid))
            for cid, payload in h.encoded_like(self.template, self.session_id, moves, self.previous)
        ]
        self.previous = hashlib.sha256(messages[-1][0]).digest()
        return self.raw.run(self._publish(messages))

    async def _publish(self, messages: list[tuple[bytes, str]]) -> list[float]:
        js: Any = self.raw.js
        subject = self.subject
        out = []
        clock = time.perf_counter
        for payload, mid in messages:
            start = clock()
            ack = await js.publish(
                subject,
                payload,
                headers={
                    "Nats-Msg-Id": mid,
                    "Nats-Expected-Last-Subject-Sequence": str(self.last_seq),
                },
            )
            out.append(clock() - start)
            self.last_seq = ack.seq
        return out


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": h.percentile(ordered, 50),
        "p90": h.percentile(ordered, 90),
        "p99": h.percentile(ordered, 99),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


def run() -> int:
    args = parse_args()
    print(
        f"bench_latency: {args.commands} sequential commands x {args.repeats} rounds per side "
        f"(+{args.warmup} warm-up)"
    )
    print(h.environment_line())
    samples: dict[str, list[float]] = {"library": [], "raw": []}
    rounds: list[list[str]] = []
    with EmbeddedNats() as server:
        journal = JournalConfig(stream=STREAM, subject_prefix=PREFIX)
        with (
            Plantangenet.open(nats_url=server.url, journal=journal) as pg,
            h.RawClient(server.url) as raw,
        ):
            library = LibrarySide(pg)
            template, _ = raw.run(h.last_envelope(raw.js, STREAM, f"{PREFIX}.lat-lib"))
            sides: dict[str, Any] = {"library": library, "raw": RawSide(raw, template)}
            if args.warmup:
                for side in sides.values():
                    side.run(args.warmup)
            for r in range(args.repeats):
                p50: dict[str, float] = {}
                for name in h.rotate(list(sides), r):
                    got = sides[name].run(args.commands)
                    samples[name].extend(got)
                    p50[name] = stats(got)["p50"]
                rounds.append(
                    [
                        f"round {r + 1} p50",
                        f"{p50['library'] * 1e6:,.0f}",
                        f"{p50['raw'] * 1e6:,.0f}",
                        f"{p50['library'] / p50['raw']:.2f}",
                    ]
                )
    lib, raw_stats = stats(samples["library"]), stats(samples["raw"])
    rows = [
        [
            key,
            f"{lib[key] * 1e6:,.0f}",
            f"{raw_stats[key] * 1e6:,.0f}",
            f"{lib[key] / raw_stats[key]:.2f}",
        ]
        for key in ("p50", "p90", "p99", "max", "mean")
    ]
    print()
    print(h.table(["latency (µs)", "library", "raw", "library/raw"], [*rows, *rounds]))
    print()
    n = len(samples["library"])
    print(
        f"{n} commands per side; library = handle.execute(MoveCursor) with one attached agent; "
        "raw = await js.publish with Nats-Msg-Id + Nats-Expected-Last-Subject-Sequence."
    )
    return 0


if __name__ == "__main__":
    h.main(run)

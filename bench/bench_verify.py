"""Hash-chain verification of a long session: plantangenet.log.verify vs a raw nats-py push read.

Setup (not timed): one session of ``--events`` events -- SessionStarted,
AgentAttached, CursorAdded and one CursorMoved written by the library, then
CursorMoved envelopes shaped like the library's, CODEC-encoded with
``previous_hash`` = SHA-256 of the previous payload (continuing the library's
chain), written quickly with raw nats-py ``publish_async``. The whole session
must verify as intact.

Timed, ``--repeats`` times in rotating order, median kept:

* raw read, the raw nats-py push consumer (callback): the fastest read of the
  same messages we found with raw nats-py (``_harness.raw_push_read``: an
  ephemeral AckNone push consumer with flow control delivering to an
  ``async`` callback, generous pending limits; the variants measured are in
  its docstring), touching ``msg.data`` of every message. No hashing, no
  decoding: the floor of any reader on nats-py. The headline ratio is library
  / this.
* library: ``verify(pg.journal, session_id)`` run on the runtime's loop with
  ``pg.run`` (as ``plantangenet verify`` does): the journal's own reader
  (a windowed push consumer), a msgpack unpack of every payload to read its
  ``previous_hash``, one SHA-256 per event, a link check per event.
* raw + chain (reference): the same raw push read plus the same per-event work
  done by hand in its callback (msgpack unpack, compare ``p``, SHA-256). Shows
  how much of the library's time is the check itself and how much is its reader.

Run: .venv/bin/python bench/bench_verify.py [--events 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import time

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

import msgpack

from plantangenet import JournalConfig, Plantangenet
from plantangenet.log.verify import VerifyResult, verify
from plantangenet.nats.embedded import EmbeddedNats

STREAM = "BENCH_VERIFY"
PREFIX = "bench.verify"
SESSION = "chain"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000, help="events in the session")
    p.add_argument("--repeats", type=int, default=3, help="runs of each reader (median kept)")
    p.add_argument(
        "--no-reference", action="store_true", help="skip the raw + chain reference reader"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead: fill, then one verify under cProfile (all threads); print the top costs",
    )
    args = p.parse_args()
    if args.events < 5 or args.repeats < 1:
        p.error("--events must be at least 5 and --repeats positive")
    return args


def journal_config() -> JournalConfig:
    return JournalConfig(stream=STREAM, subject_prefix=PREFIX, idle_timeout=30.0)


# -- readers -----------------------------------------------------------------------------------


class Chain:
    """The check by hand, message after message: unpack, compare the link, hash."""

    def __init__(self) -> None:
        self.previous = b""
        self.count = 0

    def __call__(self, data: bytes) -> None:
        if msgpack.unpackb(data, raw=False)["p"] != self.previous:
            raise RuntimeError(f"raw + chain: broken link at message {self.count + 1}")
        self.previous = hashlib.sha256(data).digest()
        self.count += 1


def raw_read(raw: h.RawClient, *, chain: bool) -> tuple[float, int]:
    """:func:`_harness.raw_push_read` over the session; with ``chain``, check every link."""
    return raw.push_read(STREAM, f"{PREFIX}.{SESSION}", on_data=Chain() if chain else None)


def library_verify(pg: Plantangenet, events: int) -> float:
    start = time.perf_counter()
    result: VerifyResult = pg.run(verify(pg.journal, SESSION))
    elapsed = time.perf_counter() - start
    if not result.intact or result.checked != events:
        raise RuntimeError(f"library verify: {result.describe()} (expected {events} intact)")
    return elapsed


# -- main ----------------------------------------------------------------------------------------


def profile(args: argparse.Namespace) -> int:
    with EmbeddedNats() as server:
        with (
            Plantangenet.open(nats_url=server.url, journal=journal_config()) as pg,
            h.RawClient(server.url) as raw,
        ):
            h.prepare_long_session(pg, raw, STREAM, PREFIX, SESSION, args.events)
        profiler = h.ThreadProfiler().start()
        with Plantangenet.open(nats_url=server.url, journal=journal_config()) as pg:
            elapsed = library_verify(pg, args.events)
        print(f"library verify: {args.events / elapsed:,.0f} events/s under cProfile")
        print(profiler.report())
    return 0


def run() -> int:
    args = parse_args()
    if args.profile:
        return profile(args)
    n = args.events
    print(f"bench_verify: a hash-chained session of {n} events, {args.repeats} repeats")
    print(h.environment_line())
    readers = ["raw read", "library verify"] + ([] if args.no_reference else ["raw + chain"])
    rates: dict[str, list[float]] = {r: [] for r in readers}
    rows = []
    with (
        EmbeddedNats() as server,
        Plantangenet.open(nats_url=server.url, journal=journal_config()) as pg,
        h.RawClient(server.url) as raw,
    ):
        start = time.perf_counter()
        h.prepare_long_session(pg, raw, STREAM, PREFIX, SESSION, n)
        print(f"filled in {time.perf_counter() - start:.1f}s (not timed)")
        for r in range(args.repeats):
            row: dict[str, float] = {}
            for reader in h.rotate(readers, r):
                gc.collect()
                if reader == "library verify":
                    elapsed = library_verify(pg, n)
                else:
                    elapsed, count = raw_read(raw, chain=reader == "raw + chain")
                    if count != n:
                        raise RuntimeError(f"{reader}: read {count} events, expected {n}")
                row[reader] = n / elapsed
            for reader in readers:
                rates[reader].append(row[reader])
            rows.append(
                [
                    f"run {r + 1}",
                    *(f"{row[x]:,.0f}" for x in readers),
                    *(f"{row[x] / row['raw read']:.2f}" for x in readers[1:]),
                ]
            )
    med = {x: h.median(v) for x, v in rates.items()}
    rows.append(
        [
            "median",
            *(f"{med[x]:,.0f}" for x in readers),
            *(f"{med[x] / med['raw read']:.2f}" for x in readers[1:]),
        ]
    )
    print()
    print(f"raw read = {h.RAW_READ_LABEL}, msgs/s")
    print(h.table(["events/s", *readers, *(f"{x}/raw read" for x in readers[1:])], rows))
    print()
    print("medians:")
    h.report_against_raw([("library verify", med["library verify"])], med["raw read"])
    print()
    print(
        f"library verify / {h.RAW_READ_LABEL}: "
        f"{med['library verify'] / med['raw read']:.2f} (every run: intact, {n:,} events checked)"
    )
    if "raw + chain" in med:
        print(
            "library verify / raw + chain (the same push consumer, the check by hand): "
            f"{med['library verify'] / med['raw + chain']:.2f}"
        )
    print(
        "note: raw read only touches msg.data; verify also unpacks every payload, hashes it "
        "(SHA-256) and checks the link, with the library's reader."
    )
    return 0


if __name__ == "__main__":
    h.main(run)

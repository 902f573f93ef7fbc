"""Wall time of each read command of the ``plantangenet`` CLI on a long session vs a raw read.

Setup (not timed): one hash-chained session of ``--events`` events (200,000 by
default; :func:`fill`: ``_harness.prepare_long_session`` with revisions), the only
session in its stream, so an event's revision is its stream sequence. The middle event (revision
``events // 2``) gives the positions: its revision, and its ``occurred_at`` as an
ISO time. ``diff`` goes from revision ``events // 4`` to the middle one, ``why``
asks about the last event.

Timed, ``--repeats`` times in rotating order, median kept:

* raw nats-py push consumer (callback): one full read of the session in this
  process (``_harness.raw_push_read``: an ephemeral AckNone push consumer with
  flow control delivering to an ``async`` callback, touching ``msg.data`` of
  every message; no decoding). Every ratio is CLI call / this.
* each CLI call as its own process, ``python -m plantangenet <command> SESSION
  ... --nats-url URL --stream STREAM --subject-prefix PREFIX``, stdout to
  /dev/null (``verify``'s is read and must say ``intact``), exit status 0 required:
  ``history``, ``audit``, ``state``, ``state --at`` the middle revision and the
  middle time, ``diff``, ``why``, ``verify``, ``cursors``, ``ledger``, ``sessions``.
  The wall time includes starting Python and importing the package: the
  process-start floor, ``python -c "import plantangenet"``, is timed (in the
  same rotation: timed once, the first process ran cold and slower than
  ``sessions``) and subtracted in "minus start".

"events needed" is the number of events the answer depends on: the position's
for the position calls, every one for the others (``sessions`` reads only the
stream's subject counts). A time is first resolved by a seek that decodes the
events stored within ``clock_skew`` (5 s by default) of it: on this session,
written at ~10,000 events/s, that is a large part of the log (printed before
the table; not timed).

Run: .venv/bin/python bench/bench_cli.py [--events 200000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

from plantangenet import JournalConfig, Plantangenet
from plantangenet.nats.embedded import EmbeddedNats

STREAM = "BENCH_CLI"
PREFIX = "bench.cli"
SESSION = "long"
TIMEOUT = 900.0


def config() -> JournalConfig:
    return JournalConfig(stream=STREAM, subject_prefix=PREFIX, idle_timeout=30.0)


def fill(pg: Plantangenet, raw: h.RawClient, events: int) -> int:
    """``_harness.prepare_long_session`` (each event numbered); returns the last sequence."""
    return h.prepare_long_session(pg, raw, STREAM, PREFIX, SESSION, events)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000, help="events in the session")
    p.add_argument("--repeats", type=int, default=2, help="runs of each call (median kept)")
    args = p.parse_args()
    if args.events < 8 or args.repeats < 1:
        p.error("--events must be at least 8, --repeats positive")
    return args


def run_process(argv: list[str], *, expect: str | None = None) -> float:
    """Wall seconds of one child process; it must exit 0 (and print ``expect`` if given)."""
    start = time.perf_counter()
    done = subprocess.run(
        argv,
        cwd=h.ROOT,  # `-m plantangenet` imports this checkout
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if expect is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[2:4])}: exit status {done.returncode}: {done.stderr.strip()[-500:]}"
        )
    if expect is not None and expect not in done.stdout:
        raise RuntimeError(f"{' '.join(argv[2:4])}: no {expect!r} in {done.stdout.strip()!r}")
    return elapsed


def run() -> int:
    args = parse_args()
    n = args.events
    print(f"bench_cli: a session of {n:,} events, {args.repeats} repeats, each call a process")
    print(h.environment_line())
    with (
        EmbeddedNats() as server,
        Plantangenet.open(nats_url=server.url, journal=config()) as pg,
        h.RawClient(server.url) as raw,
    ):
        t = time.perf_counter()
        last = fill(pg, raw, n)
        if last != n:
            raise RuntimeError(f"fill: last sequence {last}, expected {n}")
        print(f"filled in {time.perf_counter() - t:.1f}s (not timed)")
        # The only session in the stream: revision k is stream sequence k.
        middle, quarter = n // 2, n // 4
        (target,) = pg.history(SESSION, from_sequence=middle, to_sequence=middle)
        if target.revision != middle:
            raise RuntimeError(f"the event at sequence {middle} is revision {target.revision}")
        moment = target.occurred_at.isoformat()
        print(f"middle event: revision {middle:,}, occurred at {moment}")
        # Where the time seek looks (Journal.sequence_at): it bisects the events stored
        # within clock_skew of `moment`, a direct get per probe.
        skew = timedelta(seconds=pg.journal.config.clock_skew)
        low = pg.run(pg.journal.sequence_after(SESSION, target.occurred_at - skew)) or 1
        high = pg.run(pg.journal.sequence_after(SESSION, target.occurred_at + skew)) or n
        window = f"{high - low + 1:,} events (sequences {low:,}..{high:,})"
        probes = max(high - low + 1, 1).bit_length()
        print(
            f"the time seek bisects the events stored within {skew.total_seconds():g}s "
            f"(clock_skew) of it: {window}, ~{probes} probes"
        )

        common = ["--nats-url", server.url, "--stream", STREAM, "--subject-prefix", PREFIX]

        def cli(*command: str) -> list[str]:
            return [sys.executable, "-m", "plantangenet", *command, *common]

        def raw_full_read() -> float:
            elapsed, read = raw.push_read(STREAM, f"{PREFIX}.{SESSION}")
            if read != n:
                raise RuntimeError(f"raw: read {read} events, expected {n}")
            return elapsed

        # (label, argv, events needed, text verify must print)
        calls: list[tuple[str, list[str], int, str | None]] = [
            ("history > /dev/null", cli("history", SESSION), n, None),
            ("audit", cli("audit", SESSION), n, None),
            ("state", cli("state", SESSION), n, None),
            (f"state --at {middle}", cli("state", SESSION, "--at", str(middle)), middle, None),
            ("state --at <middle time>", cli("state", SESSION, "--at", moment), middle, None),
            (
                f"diff {quarter} {middle}",
                cli("diff", SESSION, str(quarter), str(middle)),
                middle,
                None,
            ),
            (f"why {n}", cli("why", SESSION, str(n)), n, None),
            ("verify", cli("verify", SESSION), n, "intact"),
            ("cursors", cli("cursors", SESSION), n, None),
            ("ledger", cli("ledger", SESSION), n, None),
            ("sessions", cli("sessions"), 0, None),
        ]
        floor_argv = [sys.executable, "-c", "import plantangenet"]
        runners: dict[str, Callable[[], float]] = {
            "raw": raw_full_read,
            "floor": lambda: run_process(floor_argv),
        }
        for label, argv, _, expect in calls:
            runners[label] = lambda argv=argv, expect=expect: run_process(argv, expect=expect)
        results: dict[str, list[float]] = {name: [] for name in runners}
        for r in range(args.repeats):
            for name in h.rotate(list(runners), r):
                results[name].append(runners[name]())
                sys.stdout.write(".")
                sys.stdout.flush()
        print()
        raw_time = h.median(results["raw"])
        floor = h.median(results["floor"])
        rows: list[tuple[object, ...]] = [
            (h.RAW_READ_LABEL + ", full read", f"{raw_time:.2f}", "-", "1.00", f"{n:,}")
        ]
        rows.append(
            ('python -c "import plantangenet"', f"{floor:.2f}", "-", f"{floor / raw_time:.2f}", "-")
        )
        for label, _, needed, _ in calls:
            seconds = h.median(results[label])
            rows.append(
                (
                    label,
                    f"{seconds:.2f}",
                    f"{seconds - floor:.2f}",
                    f"{seconds / raw_time:.2f}",
                    f"{needed:,}" if needed else "-",
                )
            )
        print()
        print(
            h.table(
                ("call (medians, wall)", "seconds", "minus start", "/ raw read", "events needed"),
                rows,
            )
        )
        print()
        print(
            f"raw full read: {n / raw_time:,.0f} msgs/s; 'minus start' subtracts the "
            f"process-start floor ({floor:.2f}s)"
        )
    return 0


if __name__ == "__main__":
    h.main(run)

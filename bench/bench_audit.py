"""The audit read model on a long session: first build vs a replay, then repeated answers.

Setup (not timed): one session of ``--events`` events (``prepare_long_session``:
every move is an owner's command, so every event is one audit entry).

Timed:

* ``Plantangenet.replay`` of the session (median of ``--repeats``);
* the read model's first build: ``audit_model`` after ``reset_audit_model``
  (folds every event, writes the chunks and the checkpoint), median of
  ``--repeats``; the ratio build / replay is the figure to hold (target <= 1.2);
* a repeated ``plantangenet audit`` through ``cli.main`` in this process
  (connect, catch up with nothing new, answer, close): ``--group-by agent``,
  ``--outcome denied`` (no row), and the full table of every entry (to a
  StringIO); median of ``--repeats`` each;
* after ``--append`` more events, the catch-up and answer of ``--group-by``;
* the same ``--group-by`` answer by ``python -m plantangenet`` in a process of
  its own (interpreter start and imports included), for reference.

Run: .venv/bin/python bench/bench_audit.py [--events 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

from plantangenet import JournalConfig, Plantangenet
from plantangenet.cli import main as cli_main
from plantangenet.nats.embedded import EmbeddedNats
from plantangenet.projections.audit_model import audit_model, reset_audit_model

STREAM = "BENCH_AUDIT"
PREFIX = "bench.audit"
SESSION = "long"


def timed(run: object) -> float:
    start = time.perf_counter()
    run()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--append", type=int, default=1000)
    args = p.parse_args()
    config = JournalConfig(stream=STREAM, subject_prefix=PREFIX, idle_timeout=30.0)
    with (
        EmbeddedNats() as server,
        Plantangenet.open(nats_url=server.url, journal=config) as pg,
        h.RawClient(server.url) as raw,
    ):
        last = h.prepare_long_session(pg, raw, STREAM, PREFIX, SESSION, args.events)
        print(h.environment_line())
        print(f"session of {args.events:,} events (last sequence {last:,})")
        replays, builds = [], []
        for _ in range(args.repeats):
            replays.append(timed(lambda: pg.replay(SESSION)))
            pg.run(reset_audit_model(pg.journal, SESSION))
            start = time.perf_counter()
            model = pg.run(audit_model(pg.journal, SESSION))
            builds.append(time.perf_counter() - start)
            assert model.rebuilt and model.position == last, model
        replay, build = statistics.median(replays), statistics.median(builds)
        print(f"replay (Plantangenet.replay):   {replay:6.3f} s   runs {fmt(replays)}")
        print(f"first build of the audit model: {build:6.3f} s   runs {fmt(builds)}")
        print(f"  build / replay = {build / replay:.2f}   ({model.entries:,} entries)")
        options = ["--nats-url", server.url, "--stream", STREAM, "--subject-prefix", PREFIX]

        def cli(*extra: str) -> str:
            out = io.StringIO()
            if cli_main(["audit", SESSION, *options, *extra], out) != 0:
                raise RuntimeError(f"audit {extra} failed")
            return out.getvalue()

        for label, extra in (
            ("--group-by agent", ("--group-by", "agent")),
            ("--outcome denied (no row)", ("--outcome", "denied")),
            ("full table (every entry)", ()),
            ("--json, every entry", ("--json",)),
        ):
            runs = [timed(lambda extra=extra: cli(*extra)) for _ in range(args.repeats)]
            print(f"repeated audit {label:<28} {statistics.median(runs):6.3f} s   runs {fmt(runs)}")
        print(cli("--group-by", "agent").rstrip())
        template, previous = raw.run(h.last_envelope(raw.js, STREAM, f"{PREFIX}.{SESSION}"))
        moves = (h.cursor_move(args.events + i) for i in range(args.append))
        raw.run(
            h.publish_chained(
                raw, f"{PREFIX}.{SESSION}", h.encoded_like(template, SESSION, moves, previous)
            )
        )
        runs = [timed(lambda: cli("--group-by", "agent"))]
        print(f"after {args.append:,} appends, audit --group-by agent: {runs[0]:6.3f} s (catch-up)")
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        cmd = [sys.executable, "-m", "plantangenet", "audit", SESSION, *options]
        runs = [
            timed(
                lambda: subprocess.run(
                    [*cmd, "--group-by", "agent"], env=env, check=True, capture_output=True
                )
            )
            for _ in range(args.repeats)
        ]
        print(
            f"plantangenet audit --group-by agent, own process: {statistics.median(runs):6.3f} s"
            f"   runs {fmt(runs)}"
        )
    return 0


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())

"""Batches over the wire: one bot's commands through ``plantangenet serve``, one by one or batched.

One ``plantangenet serve`` child process and one bot (``BotClient``) in this process.
The bot opens a session, attaches and adds a cursor, then moves its cursor
``--commands`` times, each a stored ``CursorMoved``:

- single: sequential ``move_cursor`` requests (one request/reply per command);
- batched: sequential ``request_many`` of ``--batch`` moves (one request per batch;
  the service decides and stores each command on its own and answers each);
- raw (reference): the bot's own nats-py ``js.publish_async`` of the same number of
  event-sized payloads straight to the stream, ≤1,000 acks outstanding -- what the
  NATS work of storing them costs without a service (no decision, no policy, no reply).

Rounds alternate the order of the sides; medians are printed with the ratios.

Run: .venv/bin/python bench/bench_batch.py [--commands 3000] [--batch 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

import bench_append
import bench_service
import nats

from plantangenet import JournalConfig
from plantangenet.nats.embedded import EmbeddedNats
from plantangenet.wire.client import BotClient

STREAM = bench_service.STREAM
PREFIX = bench_service.PREFIX


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commands", type=int, default=3000, help="moves per side and round")
    p.add_argument("--batch", type=int, default=100, help="moves per request_many (≤256)")
    p.add_argument("--repeats", type=int, default=3, help="rounds (median kept)")
    args = p.parse_args()
    if min(args.commands, args.batch, args.repeats) < 1 or args.batch > 256:
        p.error("--commands and --repeats must be positive, --batch 1..256")
    return args


def moves(first: int, n: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "move_cursor",
            {"agent_id": "bot", "cursor_id": "c", "axes": ["x"], "start": i, "end": i + 1},
        )
        for i in range(first, first + n)
    ]


async def single(client: BotClient, session_id: str, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        await client.move_cursor(session_id, "c", ["x"], i, i + 1)
    return time.perf_counter() - start


async def batched(client: BotClient, session_id: str, n: int, size: int) -> float:
    start = time.perf_counter()
    for lo in range(0, n, size):
        outcomes = await client.request_many(
            session_id, moves(lo, min(size, n - lo)), issued_by="bot"
        )
        if not all(isinstance(o, dict) for o in outcomes):
            raise RuntimeError(f"batched: a move was refused: {outcomes!r:.300}")
    return time.perf_counter() - start


ALLOW_CURSORS = {"id": "bots", "effect": "allow", "actions": ["cursor.*"], "resources": ["*"]}


async def prepare(client: BotClient, session_id: str) -> None:
    await client.open(session_id)
    await client.change_policy(session_id, add=[ALLOW_CURSORS])  # as the session's owner
    await client.attach(session_id)
    await client.add_cursor(session_id, "c", ["x"], 0, 1)


async def stored(client: BotClient, session_id: str) -> int:
    return len(await client.history(session_id))


def run() -> int:
    args = parse_args()
    n = args.commands
    print(f"bench_batch: {n} moves per side x {args.repeats} rounds, batches of {args.batch}")
    print(h.environment_line())
    sides = ["single", "batched", "raw"]
    rates: dict[str, list[float]] = {s: [] for s in sides}
    config = JournalConfig(stream=STREAM, subject_prefix=PREFIX)
    with EmbeddedNats() as server:
        service = bench_service.Service(server.url, 1, in_process=False)
        try:

            async def main() -> None:
                raw = await nats.connect(server.url, name="bench-raw")
                js = raw.jetstream(publish_async_max_pending=1000)
                async with await BotClient.connect(
                    server.url, agent_id="bot", journal=config
                ) as client:
                    await prepare(client, "template")
                    await client.move_cursor("template", "c", ["x"], 1, 2)
                    template = (await client.history("template"))[-1]
                    for r in range(args.repeats):
                        for side in h.rotate(sides, r):
                            sid = f"{side}-{r}"
                            if side == "raw":
                                messages = bench_append.raw_messages(template, sid, n)
                                subject = f"{PREFIX}.{sid}"
                                elapsed = await bench_append.raw_pipelined(js, subject, messages)
                            else:
                                await prepare(client, sid)
                                if side == "single":
                                    elapsed = await single(client, sid, n)
                                else:
                                    elapsed = await batched(client, sid, n, args.batch)
                                if await stored(client, sid) != 4 + n:
                                    raise RuntimeError(f"{side}: not every move was stored")
                            rates[side].append(n / elapsed)
                await raw.drain()

            asyncio.run(main())
        finally:
            service.stop()
    med = {s: h.median(v) for s, v in rates.items()}
    rows = [
        [f"round {r + 1}", *(f"{rates[s][r]:,.0f}" for s in sides)] for r in range(args.repeats)
    ]
    rows.append(["median", *(f"{med[s]:,.0f}" for s in sides)])
    print()
    print(h.table(["moves/s", "single requests", f"request_many ({args.batch})", "raw"], rows))
    print()
    print(f"batched / single: {med['batched'] / med['single']:.1f}x")
    print(f"batched / raw publish_async: {med['batched'] / med['raw']:.2f}")
    print(f"single / raw publish_async: {med['single'] / med['raw']:.3f}")
    return 0


if __name__ == "__main__":
    h.main(run)

"""A flood of refused requests from one bot, and what it costs a well-behaved bot on the session.

Deployment: a ``nats-server`` running ``plantangenet nats-config``'s accounts
(``LockedDownNats``: bots alice and mallory, each in an account of its own, on
ingress lanes of their own), ``plantangenet serve`` in a subprocess as the
service user. Alice owns the shared session, its policy lets agents with role
``writer`` move cursors, and alice holds it; mallory attached herself and holds
no role.

Measured, in one run, in this process (alice, a ``BotClient``):

* **quiet**: alice's sequential ``move_cursor`` round trips (p50, p99) with
  nobody else busy;
* **flood**: the same while mallory -- a separate process, raw nats-py -- fires
  ``--flood`` requests as fast as she can (publish with a reply inbox, no
  waiting), each a ``move_cursor`` as alice's agent, which the session refuses
  (her principal does not speak for alice's agent). Alice keeps moving until
  mallory has every reply. Reported: alice's p50/p99 during the flood and the
  ratio to quiet (target: p99 within 3x), mallory's send and answer times, and
  what the session recorded of her refusals (``AccessDenied`` one by one up to
  the refusal rate, then ``RefusalsSuppressed`` summaries).

Raw: the same three processes' roles with nats-py alone -- an echo responder
subprocess on one connection (the best a single raw responder does),
alice's requests and mallory's flood of the same bytes to it -- so the ratio
shows what the transport itself does to a quiet client under such a flood.

Run: .venv/bin/python bench/bench_flood.py [--flood 10000] [--quiet 500] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# isort: off
import _harness as h  # first: puts the checkout on sys.path
# isort: on

import nats

from plantangenet import Plantangenet
from plantangenet.wire.access import BotAccess, LockedDownNats
from plantangenet.wire.client import BotClient
from plantangenet.wire.protocol import command_subject, encode_request

SESSION = "shared"
SERVICE_PASSWORD = "flood-svc-pw"
ROOT = Path(__file__).resolve().parent.parent

#: Mallory: connect, prepare the payloads, wait for "go", fire them all, wait for replies.
MALLORY = r"""
import asyncio, json, secrets, sys, time
import nats
from plantangenet.wire.protocol import command_subject, encode_request

async def main(url: str, count: int, subject: str) -> None:
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
    inbox = nc.new_inbox()
    got = 0
    last = time.perf_counter()
    done = asyncio.Event()

    async def replied(msg) -> None:
        nonlocal got, last
        got += 1
        last = time.perf_counter()
        if got == count:
            done.set()

    await nc.subscribe(inbox + ".*", cb=replied, pending_msgs_limit=10 * count)
    args = {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": 0, "end": 1}
    round_ = secrets.token_hex(8)  # fresh ids each round: no retry of an earlier round
    payloads = [
        encode_request(args, command_id=f"flood-{round_}-{i}", issued_by="alice")
        for i in range(count)
    ]
    await nc.flush()
    print("ready", flush=True)
    sys.stdin.readline()
    began = time.time()
    start = time.perf_counter()
    for i, payload in enumerate(payloads):
        await nc.publish(subject, payload, reply=f"{inbox}.{i}")
    await nc.flush()
    sent = time.perf_counter() - start
    # Every request answered (or, should some go unanswered, none for a second).
    while not done.is_set() and time.perf_counter() - max(last, start + sent) < 1.0:
        await asyncio.sleep(0.05)
    print(
        json.dumps({"began": began, "sent": sent, "answered": last - start, "replies": got}),
        flush=True,
    )
    await nc.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""

#: A raw responder: answers every request with its payload, on one connection.
ECHO = r"""
import asyncio, gc, sys
import nats

async def main(url: str, subject: str) -> None:
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)

    async def echo(msg) -> None:
        await nc.publish(msg.reply, msg.data)

    await nc.subscribe(subject, cb=echo, pending_msgs_limit=1_000_000,
                       pending_bytes_limit=1024 ** 3)
    await nc.flush()
    gc.collect()  # the collector as `plantangenet serve` sets it (plantangenet.cli.collector)
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await nc.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def spawn(code: str, *args: str, nice: int = 0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"a child did not start: {line!r}")
    return proc


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "p50_ms": h.percentile(ordered, 50) * 1e3,
        "p99_ms": h.percentile(ordered, 99) * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


async def measure(
    request: Callable[[int], Awaitable[Any]], quiet: int, mallory: subprocess.Popen[str]
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Alice's round trips: ``quiet`` alone, then for as long as mallory's flood lasts."""
    for i in range(50):  # warm-up
        await request(i)
    calm = []
    for i in range(quiet):
        start = time.perf_counter()
        await request(i)
        calm.append(time.perf_counter() - start)
    assert mallory.stdin is not None and mallory.stdout is not None
    mallory.stdin.write("go\n")
    mallory.stdin.flush()
    timed: list[tuple[float, float]] = []  # (wall-clock start, round trip)
    i = 0
    while mallory.poll() is None:
        began, start = time.time(), time.perf_counter()
        await request(i)
        timed.append((began, time.perf_counter() - start))
        i += 1
    report: dict[str, float] = json.loads(mallory.stdout.read().strip().splitlines()[-1])
    # During the flood: from mallory's first request to her last reply.
    end = report["began"] + report["answered"]
    flooded = [rtt for began, rtt in timed if report["began"] <= began <= end]
    return summary(calm), summary(flooded or [float("nan")]), report


async def library_round(
    pg: Plantangenet, lock: LockedDownNats, flood: int, quiet: int, nice: int
) -> dict[str, Any]:
    before = pg.sessions().get(SESSION, 0)
    alice = await BotClient.connect(lock.bot_url("alice"), agent_id="alice", retries=0)
    subject = command_subject(SESSION, "move_cursor")
    mallory = spawn(MALLORY, lock.bot_url("mallory"), str(flood), subject, nice=nice)
    try:

        async def move(i: int) -> Any:
            return await alice.move_cursor(SESSION, "c", ["x"], i, i + 1)

        calm, flooded, report = await measure(move, quiet, mallory)
    finally:
        mallory.kill()
        await alice.close()
    time.sleep(pg.refusal_limit.interval + 0.5)  # the last summary is written an interval on
    history = pg.history(SESSION)
    recent = [e for e in history if (e.sequence or 0) > before]
    denied = sum(e.type_name == "AccessDenied" for e in recent)
    summaries = [e.event for e in recent if e.type_name == "RefusalsSuppressed"]
    counted = sum(getattr(s, "count", 0) for s in summaries)
    return {
        "quiet": calm,
        "flood": flooded,
        "mallory": report,
        "recorded": denied,
        "summaries": len(summaries),
        "counted": counted,
        "alice_moves": sum(e.type_name == "CursorMoved" for e in recent),
    }


async def raw_round(lock: LockedDownNats, flood: int, quiet: int, nice: int) -> dict[str, Any]:
    subject = command_subject(SESSION, "move_cursor")
    payload = encode_request(
        {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": 0, "end": 1},
        command_id="raw",
        issued_by="alice",
    )
    alice = await nats.connect(lock.bot_url("alice"))
    mallory = spawn(MALLORY, lock.bot_url("mallory"), str(flood), subject, nice=nice)
    try:

        async def echo(i: int) -> Any:
            return await alice.request(subject, payload, timeout=60)

        calm, flooded, report = await measure(echo, quiet, mallory)
    finally:
        mallory.kill()
        await alice.close()
    return {"quiet": calm, "flood": flooded, "mallory": report}


def prepare(lock: LockedDownNats) -> None:
    async def setup() -> None:
        async with await BotClient.connect(lock.bot_url("alice"), agent_id="alice") as alice:
            await alice.open(SESSION)
            await alice.change_policy(
                SESSION,
                replace=[
                    {
                        "id": "join",
                        "effect": "allow",
                        "actions": ["session.attach"],
                        "resources": ["agent.*"],
                    },
                    {
                        "id": "writers",
                        "effect": "allow",
                        "roles": ["writer"],
                        "actions": ["cursor.*"],
                        "resources": ["*"],
                    },
                ],
            )
            await alice.attach(SESSION)
            await alice.request(SESSION, "grant_role", {"agent_id": "alice", "role": "writer"})
            await alice.add_cursor(SESSION, "c", ["x"], 0, 1)
        async with await BotClient.connect(lock.bot_url("mallory"), agent_id="mallory") as m:
            await m.attach(SESSION, issued_by="mallory")

    asyncio.run(setup())


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flood", type=int, default=10_000)
    parser.add_argument("--quiet", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--mallory-nice",
        type=int,
        default=0,
        help="run mallory's process at this niceness: a flood sent from another machine, "
        "whose sending costs this one's cores nothing, is nearer 19 than 0",
    )
    args = parser.parse_args()
    print(h.environment_line())
    rows = []
    with tempfile.TemporaryDirectory() as root:
        bots = [
            BotAccess("alice", "alice-pw", (SESSION,)),
            BotAccess("mallory", "mal-pw", (SESSION,)),
        ]
        with LockedDownNats(Path(root) / "lib", SERVICE_PASSWORD, bots) as lock:
            serve = subprocess.Popen(
                [sys.executable, "-m", "plantangenet", "serve", "--nats-url", lock.service_url],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            try:
                assert serve.stdout is not None
                serve.stdout.readline()  # "listening on ..."
                prepare(lock)
                with Plantangenet.open(nats_url=lock.service_url) as pg:
                    for _ in range(args.repeats):
                        result = asyncio.run(
                            library_round(pg, lock, args.flood, args.quiet, args.mallory_nice)
                        )
                        rows.append(("library", result))
                        print(json.dumps(["library", result]), flush=True)
            finally:
                serve.terminate()
                serve.wait(30)
        with LockedDownNats(Path(root) / "raw", SERVICE_PASSWORD, bots) as lock:
            echo = spawn(ECHO, lock.service_url, "plantangenet.cmd.0.*.*.*")
            echo_m = spawn(ECHO, lock.service_url, "plantangenet.cmd.1.*.*.*")
            try:
                for _ in range(args.repeats):
                    result = asyncio.run(raw_round(lock, args.flood, args.quiet, args.mallory_nice))
                    rows.append(("raw echo", result))
                    print(json.dumps(["raw", result]), flush=True)
            finally:
                echo.kill()
                echo_m.kill()
    table = []
    for name, result in rows:
        quiet, flood = result["quiet"], result["flood"]
        table.append(
            (
                name,
                f"{quiet['p50_ms']:.2f} / {quiet['p99_ms']:.2f}",
                f"{flood['p50_ms']:.2f} / {flood['p99_ms']:.2f} / {flood['max_ms']:.0f}"
                f" (n={flood['n']})",
                f"{flood['p99_ms'] / quiet['p99_ms']:.2f}",
                f"{result['mallory']['sent']:.2f} / {result['mallory']['answered']:.2f}"
                f" ({result['mallory']['replies']})",
                (
                    f"{result['recorded']} + {result['summaries']} summaries ({result['counted']})"
                    if "recorded" in result
                    else "-"
                ),
            )
        )
    print(
        h.table(
            [
                "alice vs",
                "quiet p50/p99 ms",
                "flood p50/p99/max ms",
                "p99 ratio",
                "mallory sent/answered s (replies)",
                "refusals recorded",
            ],
            table,
        )
    )
    return 0


if __name__ == "__main__":
    h.main(run)

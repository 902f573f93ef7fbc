"""Three ``plantangenet serve`` processes on a three-node cluster, one SIGKILLed mid-load.

Real processes on a real ``EmbeddedCluster`` (R3 stream): each ``serve`` owns a share of
the session partitions (leases in NATS KV), bots send ``move_cursor`` commands one after
another (0.5 s timeout, retried under the same command id). Mid-load one process is
SIGKILLed, then started again. Checked: every bot's acknowledged commands are in the log
exactly once, in order, at the sequences their replies gave; each session's replay is
what its bot was told; ownership spreads over the processes again after the restart.
Measured and printed (not asserted: a figure of a shared 2-core machine): each bot's
longest stall, when the partitions of the killed process had a new owner, and the
concurrency guard's conflicts counted by the surviving processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TypeVar

import pytest

from plantangenet import Envelope, JournalConfig, JournalError, Plantangenet
from plantangenet.nats.cluster import EmbeddedCluster
from plantangenet.wire.client import BotClient
from tests.conftest import eventually

T = TypeVar("T")
STREAM = "OWN"
CONFIG = JournalConfig(
    stream=STREAM, subject_prefix="own.events", live_prefix="own.live", replicas=3
)
PARTITIONS = 12
LEASE = 2.0
BOTS = 6
BEFORE_KILL = 2.0
DOWN = 2.0
AFTER_RESTART = 4.0
ROOT = Path(__file__).resolve().parent.parent


class Serve:
    """One ``plantangenet serve`` process on one node of the cluster."""

    def __init__(self, url: str) -> None:
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        cmd = [
            sys.executable,
            "-m",
            "plantangenet",
            "serve",
            "--nats-url",
            url,
            "--stream",
            STREAM,
            "--subject-prefix",
            CONFIG.subject_prefix,
            "--live-prefix",
            CONFIG.live_prefix,
            "--replicas",
            "3",
            "--partitions",
            str(PARTITIONS),
            "--lease-ttl",
            str(LEASE),
            "--metrics-port",
            "0",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._err, cwd=ROOT, start_new_session=True
        )
        self.metrics_url = ""
        deadline = time.monotonic() + 60
        while not self.metrics_url:
            line = self._readline(deadline - time.monotonic())
            found = re.search(r"metrics on (http://\S+/metrics)", line)
            if found:
                self.metrics_url = found.group(1)

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if timeout <= 0 or not sel.select(timeout):
                raise AssertionError(f"serve did not start: {self.stderr()}")
        line = self.proc.stdout.readline().decode(errors="replace")
        if not line:
            raise AssertionError(f"serve exited: {self.stderr()}")
        return line

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-3000:]

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        self._err.close()


@dataclasses.dataclass
class Bot:
    """Sends ``move_cursor`` commands one after another; a command without an answer is
    sent again under the same command id until it is acknowledged."""

    session_id: str
    acked: dict[str, int] = dataclasses.field(default_factory=dict)
    ack_times: list[float] = dataclasses.field(default_factory=list)
    sent: list[str] = dataclasses.field(default_factory=list)
    failures: int = 0

    async def run(self, url: str, stop: threading.Event) -> None:
        client = await BotClient.connect(
            url, agent_id="bot", journal=CONFIG, timeout=0.5, retries=2
        )
        try:
            k = 0
            while not stop.is_set():
                command_id = f"{self.session_id}-{k}"
                self.sent.append(command_id)
                while True:
                    try:
                        reply = await client.move_cursor(
                            self.session_id, "c", ["x"], float(k), k + 1.0, command_id=command_id
                        )
                        break
                    except JournalError:
                        self.failures += 1
                        await asyncio.sleep(0.05)
                assert reply["id"] == command_id
                self.acked[command_id] = reply["seq"]
                self.ack_times.append(time.monotonic())
                k += 1
        finally:
            await client.close()


def caught_up(pg: Plantangenet, bot: Bot) -> list[Envelope] | None:
    """The session's history once it holds the bot's last acknowledged command."""
    history = pg.history(bot.session_id)
    last = history[-1].sequence if history else 0
    return history if (last or 0) >= max(bot.acked.values()) else None


def partition_owners(pg: Plantangenet) -> dict[str, str]:
    """The partitions table as stored: key -> owner (empty: free)."""

    async def read() -> dict[str, str]:
        kv = await pg.journal.js.key_value(f"{STREAM}-partitions")
        table = {}
        for key in await kv.keys():
            table[key] = ((await kv.get(key)).value or b"").decode()
        return table

    result: dict[str, str] = pg.run(read())
    return result


def spread(pg: Plantangenet, members: int) -> dict[str, str] | None:
    table = partition_owners(pg)
    owners = [v for v in table.values() if v]
    if len(owners) != PARTITIONS or len(set(owners)) != members:
        return None
    counts = [owners.count(o) for o in set(owners)]
    return table if max(counts) - min(counts) <= 1 else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    cluster = EmbeddedCluster(tmp_path_factory.mktemp("ownership-cluster")).start()
    yield cluster
    cluster.stop()


def test_three_serve_processes_one_killed_and_restarted_lose_nothing(
    cluster: EmbeddedCluster,
) -> None:
    pg = Plantangenet.open(nats_url=cluster.url, journal=CONFIG)
    eventually(lambda: cluster.stream_leader(STREAM), "a leader for the stream", 30.0)
    bots = [Bot(f"sess-{i}") for i in range(BOTS)]
    for bot in bots:
        handle = pg.session(bot.session_id)
        handle.start({"purpose": "ownership"})
        handle.attach("bot", kind="bot", name="Bot")
        handle.add_cursor("bot", "c", ["x"], 0.0, 1.0)
        handle.change_policy(
            replace=[{"id": "all", "effect": "allow", "actions": ["*"], "resources": ["*"]}]
        )
        pg.passivate_session(bot.session_id)  # the services own them from here on
    serves: list[Serve] = []
    stop = threading.Event()
    worker: threading.Thread | None = None
    try:
        serves = [Serve(cluster.urls[i]) for i in range(3)]
        before = eventually(lambda: spread(pg, 3), "partitions spread over three processes", 30.0)
        print(f"\n[ownership] partitions before the kill: {sorted(before.items())}")

        async def all_bots() -> None:
            await asyncio.gather(*(bot.run(cluster.url, stop) for bot in bots))

        worker = threading.Thread(target=asyncio.run, args=(all_bots(),), daemon=True)
        worker.start()
        time.sleep(BEFORE_KILL)
        victim = serves[0]
        conflicts_before = sum(s.metric("plantangenet_conflicts_total") for s in serves)
        killed = time.monotonic()
        victim.kill()
        taken_over = eventually(lambda: spread(pg, 2), "the survivors own every partition", 30.0)
        taken_at = time.monotonic() - killed
        time.sleep(max(DOWN - taken_at, 0))
        serves[0] = Serve(cluster.urls[0])  # restarted
        eventually(lambda: spread(pg, 3), "partitions spread over three processes again", 30.0)
        restarted = time.monotonic()
        time.sleep(AFTER_RESTART)
        stop.set()
        worker.join(timeout=60)
        assert not worker.is_alive(), "the bots did not finish"
        conflicts = sum(s.metric("plantangenet_conflicts_total") for s in serves[1:])
        forwarded = sum(s.metric("plantangenet_forwarded_total") for s in serves)
        unowned = sum(s.metric("plantangenet_unowned_total") for s in serves[1:])

        stalls = []
        for bot in bots:
            assert bot.acked, f"{bot.session_id}: nothing acknowledged"
            gaps = [b - a for a, b in zip(bot.ack_times, bot.ack_times[1:], strict=False)]
            stalls.append(max(gaps, default=0.0))
            assert any(t > restarted for t in bot.ack_times), bot.session_id
            # Every acknowledged command is in the log exactly once, where its reply said.
            assert set(bot.acked) == set(bot.sent)
            history = eventually(
                functools.partial(caught_up, pg, bot), f"a read of {bot.session_id}", 30.0
            )
            moves = [e for e in history if e.causation_id in bot.acked]
            assert [e.causation_id for e in moves] == bot.sent  # once each, in order
            assert all(e.sequence == bot.acked[e.causation_id] for e in moves)
            # The replay is what the bot was told last.
            last = len(bot.sent) - 1
            cursor = pg.replay(bot.session_id).cursors["c"]
            assert (cursor.start, cursor.end) == (float(last), last + 1.0)
        print(
            f"[ownership] 3 serve processes, {BOTS} bots (0.5 s timeout, 2 retries), "
            f"{PARTITIONS} partitions, lease {LEASE}s: SIGKILLed one; survivors owned its "
            f"partitions {taken_at:.2f}s later ({sorted(taken_over.items())}); longest stall "
            f"per bot {[round(s, 2) for s in stalls]} s; "
            f"{sum(len(b.acked) for b in bots)} commands acknowledged, "
            f"{sum(b.failures for b in bots)} bot-side timeouts; conflicts before the kill "
            f"{conflicts_before:g}, by the survivors in all {conflicts:g}; passed on "
            f"{forwarded:g}; served while unowned {unowned:g}"
        )
    finally:
        stop.set()
        if worker is not None:
            worker.join(timeout=60)
        for serve in serves:
            serve.stop()
        pg.close()

"""Bots query through their cursors and pay with dust over NATS (issue 4 on the wire)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plantangenet import (
    DisclosureMade,
    EmbeddedNats,
    InsufficientDust,
    JournalConfig,
    LimitExceeded,
    Plantangenet,
    SyntheticCompositor,
)
from plantangenet.domain.disclosure import Disclosure, Region, shape
from plantangenet.wire.client import BotClient
from plantangenet.wire.service import SessionService

ROOT = Path(__file__).resolve().parent.parent
DEGRADED = {
    "id": "bots",
    "effect": "allow",
    "roles": ["bot"],
    "actions": ["cursor.add", "cursor.move", "cursor.query", "dust.grant"],
    "resources": ["axis.ocean.*", "dust.agent.bot"],
    "disclosure": {"level": "degraded", "resolution": 2, "decimals": 1},
}


@pytest.fixture
def service(runtime: Plantangenet) -> Iterator[SessionService]:
    runtime.add_compositor(SyntheticCompositor())
    svc = SessionService(runtime, idle_timeout=300)
    runtime.run(svc.start())
    yield svc
    runtime.run(svc.stop())


async def prepare(owner: BotClient, session_id: str) -> None:
    await owner.open(session_id)
    await owner.change_policy(session_id, replace=[DEGRADED])
    await owner.request(session_id, "register_compositor", {"name": "synthetic"})
    await owner.request(session_id, "set_prices", {"prices": {"cursor.query": 3}})
    await owner.attach(session_id, "bot")
    await owner.request(session_id, "grant_role", {"agent_id": "bot", "role": "bot"})
    await owner.request(session_id, "deposit", {"account": "bot", "amount": 7})


def test_a_bot_queries_its_cursor_and_pays_over_nats(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
    service: SessionService,
) -> None:
    async def scenario() -> dict[str, Any]:
        owner = await BotClient.connect(nats_server.url, journal=journal_config)
        bot = await BotClient.connect(nats_server.url, journal=journal_config, agent_id="bot")
        async with owner, bot:
            await prepare(owner, "wire")
            await bot.add_cursor("wire", "c1", ["ocean.temperature"], 0, 11, resolution=1)
            first = await bot.query_cursor("wire", "c1", "synthetic")
            second = await bot.query_cursor("wire", "c1", "synthetic")
            with pytest.raises(InsufficientDust):  # 7 - 3 - 3 = 1 left
                await bot.query_cursor("wire", "c1", "synthetic")
            await bot.grant("wire", "@session", 1, memo="tip")
            return {"first": first, "second": second, "state": await owner.state("wire")}

    out = asyncio.run(asyncio.wait_for(scenario(), 60))
    raw = SyntheticCompositor().query(Region(("ocean.temperature",), 0.0, 11.0, 1.0))
    expected = shape(raw, Disclosure("degraded", resolution=2.0, decimals=1))
    assert out["first"] == expected == out["second"]
    assert len(expected) == 6
    assert out["state"]["balances"] == {"bot": 0, "@session": 7}
    made = [e.event for e in runtime.history("wire") if isinstance(e.event, DisclosureMade)]
    assert [(m.agent_id, m.level, m.amount, m.price) for m in made] == [
        ("bot", "degraded", 6, 3),
        ("bot", "degraded", 6, 3),
    ]


def test_an_answer_too_large_for_a_reply_is_refused_before_it_is_recorded(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
    service: SessionService,
) -> None:
    async def scenario() -> None:
        owner = await BotClient.connect(nats_server.url, journal=journal_config)
        bot = await BotClient.connect(nats_server.url, journal=journal_config, agent_id="bot")
        async with owner, bot:
            await prepare(owner, "big")
            # 40,000 samples of the full series: far more than one 1 MiB reply.
            await owner.change_policy("big", add=[{**DEGRADED, "id": "full", "disclosure": None}])
            await bot.add_cursor("big", "c1", ["ocean.temperature"], 0, 39_999)
            with pytest.raises(LimitExceeded, match="coarsen"):
                await bot.query_cursor("big", "c1", "synthetic")
            # Coarser, it fits.
            await bot.move_cursor("big", "c1", ["ocean.temperature"], 0, 39_999, resolution=50)
            assert len(await bot.query_cursor("big", "c1", "synthetic")) == 800

    asyncio.run(asyncio.wait_for(scenario(), 60))
    history = runtime.history("big")
    made = [e.event for e in history if isinstance(e.event, DisclosureMade)]
    assert [m.amount for m in made] == [800]  # the refused query left nothing
    assert runtime.session("big").state.balance("bot") == 4  # and was not charged


def test_serve_provides_compositors_from_the_command_line(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    base = [sys.executable, "-m", "plantangenet", "serve", "--nats-url", nats_server.url]
    base += ["--stream", journal_config.stream, "--subject-prefix", journal_config.subject_prefix]
    bad = subprocess.run(
        [*base, "--compositor", "no.such.module:thing"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "--compositor no.such.module:thing" in bad.stderr
    process = subprocess.Popen(
        [*base, "--compositor", "synthetic", "--compositor", "plantangenet:RecordedCompositor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        assert "listening" in process.stdout.readline()

        async def scenario() -> int:
            owner = await BotClient.connect(nats_server.url, journal=journal_config)
            bot = await BotClient.connect(nats_server.url, journal=journal_config, agent_id="bot")
            async with owner, bot:
                await prepare(owner, "served")
                await owner.request("served", "register_compositor", {"name": "recorded"})
                await bot.add_cursor("served", "c1", ["ocean.salinity"], 0, 3)
                assert await bot.query_cursor("served", "c1", "recorded") == []  # empty buffer
                return len(await bot.query_cursor("served", "c1", "synthetic"))

        assert asyncio.run(asyncio.wait_for(scenario(), 60)) == 2
    finally:
        process.terminate()
        process.wait(timeout=30)

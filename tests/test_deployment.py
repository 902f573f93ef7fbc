"""A locked-down deployment end to end: `nats-config`, the service, and a restricted bot."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from plantangenet import EmbeddedNats, JournalError, Plantangenet
from plantangenet.cli import main
from plantangenet.wire.client import BotClient
from plantangenet.wire.service import SessionService

POLICY = [{"id": "all", "effect": "allow", "actions": ["*"], "resources": ["*"]}]


def test_restricted_bot_works_its_session_and_nothing_else(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    out = io.StringIO()
    status = main(
        [
            "nats-config",
            "--service-password",
            "svc-pw",
            "--bot",
            "alice:alice-pw:A",
            "--out",
            str(conf),
        ],
        out=out,
    )
    assert status == 0 and conf.stat().st_mode & 0o777 == 0o600
    with EmbeddedNats(tmp_path / "store", extra_args=["-c", str(conf)]) as server:
        pg = Plantangenet.open(
            nats_url=server.url,
            nats_options={"user": "plantangenet", "password": "svc-pw"},
        )
        service = SessionService(pg)
        pg.run(service.start())
        try:
            pg.session("B").start({"secret": True})

            async def alice() -> list[str]:
                async with await BotClient.connect(
                    server.url,
                    agent_id="alice",
                    user="alice",
                    password="alice-pw",
                    timeout=2,
                    retries=0,
                ) as bot:
                    await bot.open("A")
                    await bot.change_policy("A", replace=POLICY)
                    await bot.attach("A", kind="bot")
                    await bot.add_cursor("A", "c", ["ocean.temp"], 0, 1)
                    seen = []
                    async for envelope in bot.events("A", from_sequence=1):
                        seen.append(envelope.type_name)
                        if len(seen) == 4:
                            break
                    with pytest.raises(JournalError):  # no permission: the request goes nowhere
                        await bot.state("B")
                    with pytest.raises(JournalError):
                        await bot.history("B")
                    return seen

            seen = asyncio.run(alice())
            assert seen == ["SessionStarted", "PolicyChanged", "AgentAttached", "CursorAdded"]
            assert pg.sessions() == {"A": 4, "B": 1}
        finally:
            pg.run(service.stop())
            pg.close()


def test_wrong_password_is_a_clear_error(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    main(["nats-config", "--service-password", "svc-pw", "--out", str(conf)], out=io.StringIO())
    with EmbeddedNats(tmp_path / "store", extra_args=["-c", str(conf)]) as server:
        url = server.url.replace("nats://", "nats://plantangenet:wrong@")
        with pytest.raises(JournalError) as error:
            Plantangenet.open(nats_url=url, nats_options={"max_reconnect_attempts": 0})
        assert "wrong" not in str(error.value) and "***" in str(error.value)

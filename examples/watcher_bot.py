"""A watcher bot: follows the tide bot's cursor through the session's events.

Needs a running session service and the tide bot (it waits for the tide bot to attach)::

    NATS_URL=nats://127.0.0.1:4222 .venv/bin/python examples/watcher_bot.py harbour

Each time the tide bot moves its cursor, the watcher moves its own to look
just ahead of it; when the tide bot leaves, so does the watcher.
"""

from __future__ import annotations

import asyncio
import os
import sys

from plantangenet.errors import SessionNotStarted
from plantangenet.wire.client import BotClient


async def run(url: str, session_id: str, *, wait: float = 10.0, ahead: float = 10.0) -> None:
    async with await BotClient.connect(url, agent_id="watcher-bot") as bot:
        deadline = asyncio.get_running_loop().time() + wait
        while True:  # the tide bot opens the session, sets its policy and attaches
            try:
                state = await bot.state(session_id)
                if state["status"] == "active" and "tide-bot" in state["agents"]:
                    break
            except SessionNotStarted:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"session {session_id} did not start")
            await asyncio.sleep(0.05)
        # The tide bot owns the session: the watcher attaches itself, as its own agent
        # (the session's policy lets bots join), bound to the watcher's principal.
        await bot.attach(session_id, kind="bot", name="Watcher", issued_by=bot.agent_id)
        added = await bot.add_cursor(session_id, "ahead", ["ocean.tide"], 0, 10)
        # The tide bot sweeps once it sees this cursor: follow what comes after it (what
        # came before is the past, maybe an earlier run's tide bot leaving).
        async for envelope in bot.events(session_id, from_sequence=added["seq"] + 1):
            event = envelope.event
            about_tide_bot = getattr(event, "agent_id", "") == "tide-bot"
            if envelope.type_name == "CursorMoved" and about_tide_bot:
                start, end = event.end, event.end + ahead  # type: ignore[attr-defined]
                reply = await bot.move_cursor(session_id, "ahead", ["ocean.tide"], start, end)
                print(f"watcher-bot: looking ahead at [{start:g}, {end:g}] (seq {reply['seq']})")
            elif (
                envelope.type_name == "AgentDetached"
                and getattr(event, "agent_id", "") == "tide-bot"
            ):
                break
        await bot.detach(session_id, reason="nothing left to watch")
        print("watcher-bot: done")


if __name__ == "__main__":
    asyncio.run(run(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"), sys.argv[1]))

"""A tide-gauge bot: opens a session over NATS and sweeps its cursor along the tide axis.

Needs a running session service (``plantangenet serve``)::

    NATS_URL=nats://127.0.0.1:4222 .venv/bin/python examples/tide_bot.py harbour

It talks to the session only through NATS: commands are requests, events are
read from the log. See ``watcher_bot.py`` for the bot that follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

from plantangenet.wire.client import BotClient

#: Every attached agent may work cursors over ocean and air axes.
POLICY = [
    {
        "id": "agents-work-cursors",
        "effect": "allow",
        "actions": ["cursor.*"],
        "resources": ["axis.ocean.*", "axis.air.*", "cursor.*"],
    },
    {  # other bots (the watcher) attach themselves
        "id": "bots-join",
        "effect": "allow",
        "actions": ["session.attach"],
        "resources": ["agent.*"],
        "conditions": [{"key": "agent.kind", "op": "eq", "value": "bot"}],
    },
]


async def run(url: str, session_id: str, *, steps: int = 5, pause: float = 0.05) -> None:
    async with await BotClient.connect(url, agent_id="tide-bot") as bot:
        state = await bot.open(session_id, {"purpose": "tides"})
        if state["policy"]["version"] == 0:
            await bot.change_policy(session_id, replace=POLICY)
        attached = await bot.attach(session_id, kind="bot", name="Tide gauge bot")
        await bot.add_cursor(session_id, "tide", ["ocean.tide"], 0, 60)
        # Wait for the watcher to join, so it sees every sweep live. Only events after
        # this run's attach count: on a second run the log also holds the last run's watcher.
        async for envelope in bot.events(session_id, from_sequence=attached["seq"] + 1):
            if envelope.type_name == "CursorAdded" and envelope.agent_id == "watcher-bot":
                break
        for step in range(1, steps + 1):
            await asyncio.sleep(pause)
            reply = await bot.move_cursor(
                session_id, "tide", ["ocean.tide"], step * 10, step * 10 + 60
            )
            print(f"tide-bot: cursor at [{step * 10}, {step * 10 + 60}] (seq {reply['seq']})")
        # Leave once the watcher answered the last sweep (or after a while: it may be gone),
        # so that its answer is in the log before this bot's leaving, on a busy machine too.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(pause * 10, 1.0)):
                async for envelope in bot.events(session_id, from_sequence=reply["seq"] + 1):
                    if envelope.type_name == "CursorMoved" and envelope.agent_id == "watcher-bot":
                        break
        await bot.detach(session_id, reason="sweep done")
        print("tide-bot: done")


if __name__ == "__main__":
    asyncio.run(run(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"), sys.argv[1]))

"""``demo``: a short scripted session on the embedded server."""

from __future__ import annotations

import argparse
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from plantangenet.actors.agent import Agent, AgentContext
from plantangenet.cli.common import (
    open_runtime,
    state_summary,
)
from plantangenet.errors import (
    AccessRefused,
)
from plantangenet.events.envelope import Envelope
from plantangenet.log.verify import verify
from plantangenet.projections.audit import Audit
from plantangenet.projections.views import envelope_record


class _DemoAgent(Agent):
    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def setup(self, context: AgentContext) -> None:
        self.say(f"    [{context.agent_id}] setup ({context.origin})")

    def teardown(self, context: AgentContext, reason: str) -> None:
        self.say(f"    [{context.agent_id}] teardown ({reason})")


DEMO_POLICY = [
    {
        "id": "bots-watch-the-sea",
        "effect": "allow",
        "roles": ["bot"],
        "actions": ["cursor.*"],
        "resources": ["axis.ocean.*", "axis.air.*", "cursor.*"],
    },
    {
        "id": "viewers-look",
        "effect": "allow",
        "roles": ["viewer"],
        "actions": ["cursor.add", "cursor.move"],
        "resources": ["axis.*"],
    },
    {
        "id": "operators-annotate",
        "effect": "allow",
        "roles": ["operator"],
        "actions": ["metadata.change"],
        "resources": ["metadata.*"],
    },
    {
        "id": "status-is-for-owners",
        "effect": "deny",
        "actions": ["metadata.change"],
        "resources": ["metadata.owner"],
    },
]


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    def say(text: str) -> None:
        if not args.json:
            out.write(text + "\n")
            out.flush()

    # The time, and a random suffix: two demos started in the same second on one store
    # once picked one id, and the second failed with "session ... already exists".
    session_id = args.session_id or (
        datetime.now(UTC).strftime("demo-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    )
    with open_runtime(args) as pg:
        store = pg.store
        where = (
            f"embedded nats-server at {pg.url} (store {store.store_dir}, "
            f"{'started here' if store.owner else 'joined'})"
            if store is not None
            else pg.url
        )
        say(f"plantangenet demo: session {session_id} on {where}")
        session = pg.session(session_id)
        live_audit = Audit()
        events: list[Envelope] = []
        session.on_change(events.append)
        session.on_change(live_audit)

        def step(title: str, result: Any) -> None:
            say(f"  {title:<56} -> sequence {result.sequence}")

        step("start the session", session.start({"purpose": "demo", "owner": "harbour"}))
        step(
            "bind identity harbour-ops",
            session.bind_identity("harbour-ops", "Harbour operations", {"tier": "gold"}),
        )
        step(
            f"set a policy of {len(DEMO_POLICY)} statements",
            session.change_policy(replace=DEMO_POLICY),
        )
        for agent_id, kind, name, role in (
            ("tide-bot", "bot", "Tide gauge bot", "bot"),
            ("weather-bot", "bot", "Weather bot", "bot"),
            ("viewer", "client", "Harbour viewer", "viewer"),
        ):
            step(
                f"attach {agent_id} ({kind})",
                session.attach(agent_id, kind, name, behaviour=_DemoAgent(say)),
            )
            time.sleep(0.05)  # let the agent's setup line print in order
            step(f"grant {agent_id} the role {role!r}", session.grant_role(agent_id, role))
        for agent_id, cursor, axes, end in (
            ("tide-bot", "tide", ["ocean.tide"], 60),
            ("weather-bot", "wx", ["air.wind", "air.pressure"], 30),
            ("viewer", "view", ["ocean.tide", "air.wind"], 120),
        ):
            result = session.add_cursor(agent_id, cursor, axes, 0, end, issued_by=agent_id)
            step(f"{agent_id} watches {','.join(axes)} over [0, {end}]", result)
        for t in (10, 20, 30):
            result = session.move_cursor(
                "tide-bot", "tide", ["ocean.tide"], t, t + 60, issued_by="tide-bot"
            )
            step(f"tide-bot moves its cursor to [{t}, {t + 60}]", result)
        try:
            session.change_metadata({"status": "observing"}, issued_by="viewer")
        except AccessRefused as refused:
            say(
                "  viewer tries to change metadata: REFUSED "
                f"(recorded at sequence {refused.sequence})"
            )
            say(f"      {refused}")
        step("grant viewer the role 'operator'", session.grant_role("viewer", "operator"))
        step(
            "viewer changes metadata: status=observing",
            session.change_metadata({"status": "observing"}, issued_by="viewer"),
        )
        step(
            "weather-bot leaves (its cursor goes with it)",
            session.detach("weather-bot", "storm over"),
        )
        time.sleep(0.05)
        live = session.state
        say(
            f"  live state: agents {sorted(live.agents)}, cursors {sorted(live.cursors)}, "
            f"roles {dict(live.roles)}, policy v{live.policy.version}, "
            f"{live.event_count} events, last sequence {live.sequence}"
        )

        pg.stop_session(session_id)
        time.sleep(0.05)
        say("  actor stopped; rehydrating the session from the log…")
        rehydrated = pg.session(session_id).state
        time.sleep(0.05)
        replayed = pg.replay(session_id)
        same = rehydrated == live == replayed
        say(f"  rehydrated state {'EQUALS' if same else 'DIFFERS FROM'} the live state")
        middle = pg.state_at(session_id, live.revision - 5)
        tide = middle.cursors["tide"]
        say(
            f"  state at revision {middle.revision}: agents {sorted(middle.agents)}, "
            f"tide cursor at [{tide.start:g}, {tide.end:g}]"
        )
        replayed_audit = Audit.of(pg.history(session_id))
        audit_same = replayed_audit.entries == live_audit.entries
        denied = replayed_audit.query(outcome="denied")
        say(
            f"  audit: {len(replayed_audit.entries)} decisions, {len(denied)} denied; "
            f"replayed audit {'EQUALS' if audit_same else 'DIFFERS FROM'} the live one"
        )
        checked = pg.run(verify(pg.journal, session_id))
        say(f"  verify: {checked.describe()}")
        say(f"  see it all: plantangenet history {session_id}; plantangenet audit {session_id}")
        ok = same and audit_same and checked.intact
        if args.json:
            json.dump(
                {
                    "session_id": session_id,
                    "equal": same,
                    "audit_equal": audit_same,
                    "intact": checked.intact,
                    "state": state_summary(live),
                    "events": [envelope_record(e) for e in events],
                },
                out,
            )
            out.write("\n")
    return 0 if ok else 1

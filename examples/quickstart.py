"""Quickstart: a session with two agents, then the same session rehydrated from the log.

Run it with ``.venv/bin/python examples/quickstart.py`` (embedded nats-server unless
``NATS_URL`` is set).
"""

from __future__ import annotations

import uuid

from plantangenet import Agent, AgentContext, Plantangenet


class Greeter(Agent):
    def setup(self, context: AgentContext) -> None:
        print(f"  {context.agent_id}: hello ({context.origin})")

    def teardown(self, context: AgentContext, reason: str) -> None:
        print(f"  {context.agent_id}: goodbye ({reason})")


def main() -> None:
    session_id = f"quickstart-{uuid.uuid4().hex[:8]}"
    with Plantangenet.open() as pg:
        session = pg.session(session_id)
        session.start({"example": "quickstart"})
        session.attach("alice", "client", "Alice", behaviour=Greeter())
        session.attach("bob", "bot", "Bob", behaviour=Greeter())
        session.add_cursor("bob", "watch", ["sea.level"], 0, 100)
        session.move_cursor("bob", "watch", ["sea.level"], 50, 150)
        session.detach("alice", "done for today")
        live = session.state
        pg.stop_session(session_id)
        again = pg.session(session_id).state
        print(f"{session_id}: {live.event_count} events; rehydrated == live: {again == live}")
        for envelope in pg.history(session_id):
            print(f"  {envelope.sequence:>3} {envelope.type_name}")


if __name__ == "__main__":
    main()

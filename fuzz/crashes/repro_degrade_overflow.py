"""Reproducer: OverflowError escapes ``disclose`` when degrading samples (found by fuzzing).

``plantangenet.domain.disclosure._degrade`` raises ``OverflowError`` (not caught by the session
actor, which maps only TypeError/ValueError/AttributeError to ``CompositorFailed``), so a
``QueryCursor`` is answered "internal error" (code ``error``):

1. a policy disclosure ``{"level": "degraded", "resolution": 5e-324}`` (accepted: it is
   positive and finite) and any sample at a time != 0 (the synthetic compositor's):
   ``math.floor(time / resolution)`` is ``floor(inf)``;
2. a compositor answering two large finite values in one bucket (``1e308``):
   ``math.fsum`` overflows.

Usage: ``.venv/bin/python fuzz/crashes/repro_degrade_overflow.py`` (pure; no NATS)
"""

from __future__ import annotations

import sys
import traceback
from datetime import UTC, datetime

from plantangenet.data.disclose import disclose
from plantangenet.domain import commands as c
from plantangenet.domain.decide import decide, plan_query
from plantangenet.domain.disclosure import Disclosure, Sample, shape
from plantangenet.errors import InvalidPolicy
from plantangenet.events import Envelope
from plantangenet.projections.session import SessionState, evolve

AT = datetime(2024, 1, 1, 12, tzinfo=UTC)


def session(resolution: float) -> SessionState:
    state = SessionState("s1")
    statement = {
        "id": "degraded",
        "effect": "allow",
        "actions": ["cursor.*"],
        "resources": ["*"],
        "disclosure": {"level": "degraded", "resolution": resolution},
    }
    for command in (
        c.StartSession(),
        c.AttachAgent(agent_id="a1"),
        c.RegisterCompositor(name="synthetic"),
        c.AddCursor(agent_id="a1", cursor_id="c1", axes=("x",), start=0, end=1),
        c.ChangePolicy(replace=[statement]),
    ):
        for event in decide(state, command, now=AT):
            n = state.sequence + 1
            state = evolve(state, Envelope(event, "s1", f"e{n}", "c", "c", AT, sequence=n))
    return state


def main() -> None:
    try:
        session(5e-324)
    except InvalidPolicy as refused:  # fixed: the policy is refused when it is set
        print(f"tiny resolution: refused ({refused})")
    # A stored policy from before that check still degrades without an error.
    old = Disclosure("degraded", resolution=5e-324)
    print("tiny resolution, stored before the check:", shape([Sample("x", 1.0, 2.0)], old))
    query = c.QueryCursor(issued_by="a1", agent_id="a1", cursor_id="c1", compositor="synthetic")
    state = session(2.0)
    _, plan = plan_query(state, query, now=AT)
    try:
        disclosed = disclose(state, plan, [Sample("x", 0.5, 1e308)] * 2, max_samples=100_000)
        print(f"huge values in one bucket: no error (fixed): {disclosed.samples}")
    except Exception:
        print("huge values in one bucket:")
        traceback.print_exc(file=sys.stdout)


if __name__ == "__main__":
    main()

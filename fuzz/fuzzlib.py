"""Shared by the fuzz harnesses: fixed session states, event envelopes, fuzzed values.

Imported by the harnesses inside ``atheris.instrument_imports()`` (so plantangenet is
instrumented), and by ``make_corpus.py`` without atheris. Nothing here is random: the
states and seeds are the same on every run, and every fuzzed value comes from the
fuzzer's :class:`atheris.FuzzedDataProvider`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from plantangenet.domain import commands as c
from plantangenet.domain.decide import decide_authorized
from plantangenet.errors import RecordedRefusal
from plantangenet.events import Envelope
from plantangenet.events.base import Event
from plantangenet.projections.session import SessionState, evolve

SID = "s1"
PEER = "s2"
AT = datetime(2024, 1, 1, 12, tzinfo=UTC)  # a Monday, at noon


def fields(cls: Any) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


# -- fixed states ----------------------------------------------------------------------

WATCHERS = {
    "id": "watchers",
    "effect": "allow",
    "roles": ["watcher"],
    "actions": ["cursor.*"],
    "resources": ["axis.*", "cursor.*", "agent.*"],
}
VIEWERS = {
    "id": "viewers",
    "effect": "allow",
    "roles": ["viewer"],
    "actions": ["cursor.query", "chem.*"],
    "resources": ["*"],
    "disclosure": {"level": "degraded", "decimals": 1, "resolution": 2.0},
}
DAYTIME_ADMINS = {
    "id": "admins",
    "effect": "allow",
    "roles": ["admin"],
    "actions": ["*"],
    "resources": ["*"],
    "conditions": [
        {"key": "hour", "op": "lt", "value": 20},
        {"key": "identity.tier", "op": "in", "value": ["gold", "silver"]},
    ],
}
NO_C0 = {
    "id": "keep-c0",
    "effect": "deny",
    "actions": ["cursor.remove"],
    "resources": ["cursor.c0"],
}


def apply(
    state: SessionState, *commands: c.Command, envelopes: list[Envelope] | None = None
) -> SessionState:
    """``state`` after deciding and evolving each command (refusals record their event)."""
    for command in commands:
        authorization = None
        try:
            authorization, events = decide_authorized(state, command, now=AT)
        except RecordedRefusal as refused:
            events = [refused.event]
        for event in events:
            envelope = envelope_of(state, command, event, authorization)
            authorization = None
            state = evolve(state, envelope)
            if envelopes is not None:
                envelopes.append(envelope)
    return state


def envelope_of(
    state: SessionState, command: c.Command, event: Event, authorization: Any = None
) -> Envelope:
    """The envelope the session actor would write for ``event`` next (fixed id and time)."""
    return Envelope(
        event=event,
        session_id=state.session_id,
        event_id=f"e{state.sequence + 1}",
        causation_id=command.command_id,
        correlation_id=command.correlation_id or command.command_id,
        occurred_at=AT,
        agent_id=command.issued_by,
        sequence=state.sequence + 1,
        previous_hash=b"\x01" * 32 if state.sequence else b"",
        authorization=authorization,
    )


def _setup() -> list[c.Command]:
    clauses: list[dict[str, Any]] = [
        {"discloser": PEER, "axes": ["wind.*"], "price": 3},
        {"discloser": SID, "axes": ["x"], "disclosure": {"level": "degraded", "decimals": 0}},
    ]
    return [
        c.StartSession(command_id="c-start", metadata={"k": "v", "n": 1, "f": 0.5, "b": True}),
        c.BindIdentity(command_id="c-id", identity_id="ops", attributes={"tier": "gold"}),
        c.AttachAgent(command_id="c-a1", agent_id="a1", kind="bot", name="Bot one"),
        c.AttachAgent(command_id="c-a2", agent_id="a2", kind="client"),
        c.AttachAgent(command_id="c-a3", agent_id="a3"),
        c.AddCursor(command_id="c-c1", agent_id="a1", cursor_id="c1", axes=("x",), start=0, end=1),
        c.AddCursor(command_id="c-c2", agent_id="a2", cursor_id="c2", axes=("y",), start=0, end=1),
        c.AddCursor(
            command_id="c-c0",
            agent_id="a1",
            cursor_id="c0",
            axes=("x", "wind.speed"),
            start=-1.0,
            end=1.0,
            resolution=0.5,
        ),
        c.ChangePolicy(command_id="c-pol", replace=[WATCHERS, VIEWERS, DAYTIME_ADMINS, NO_C0]),
        c.GrantRole(command_id="c-r1", agent_id="a1", role="watcher"),
        c.GrantRole(command_id="c-r2", agent_id="a2", role="viewer"),
        c.GrantRole(command_id="c-r3", agent_id="a3", role="admin"),
        c.RegisterCompositor(command_id="c-comp", name="synthetic", description="test data"),
        c.DepositDust(command_id="c-d1", account="a1", amount=100, memo="start"),
        c.DepositDust(command_id="c-d2", account="a2", amount=2),
        c.ProposeChem(command_id="c-k1", chem_id="k1", peer=PEER, proposed_by=SID, terms=clauses),
        c.AcceptChem(command_id="c-k1a", chem_id="k1", accepted_by=PEER),
        c.ProposeChem(
            command_id="c-k2",
            chem_id="k2",
            peer=PEER,
            proposed_by=PEER,
            terms=[{"discloser": PEER, "axes": ["y"]}],
        ),
    ]


def _priced() -> list[c.Command]:
    prices = {"cursor.move": 1, "cursor.query": 2, "cursor.query.full": 5, "chem.query": 1}
    return [c.SetPrices(command_id="c-prices", prices=prices)]


NEW = SessionState(SID)
ACTIVE = apply(NEW, *_setup())
#: ACTIVE with a price table: agents' commands are charged dust (a2 holds only 2).
PRICED = apply(ACTIVE, *_priced())
ENDED = apply(ACTIVE, c.EndSession(command_id="c-end", reason="done"))
STATES = (NEW, ACTIVE, PRICED, ENDED)
assert ACTIVE.status == "active" and set(ACTIVE.agents) == {"a1", "a2", "a3"}
assert len(ACTIVE.cursors) == 3 and PRICED.prices and ENDED.status == "ended"


def seed_envelopes() -> list[Envelope]:
    """Valid envelopes of every event type the fixed states contain, and a few more."""
    envelopes: list[Envelope] = []
    state = apply(NEW, *_setup(), *_priced(), envelopes=envelopes)
    state = apply(
        state,
        c.ChangeMetadata(command_id="c-m", changed={"k": "w", "z": None}, removed=("n",)),
        c.MoveCursor(
            command_id="c-mv",
            issued_by="a1",
            agent_id="a1",
            cursor_id="c1",
            axes=("x",),
            start=2,
            end=3,
        ),
        c.RemoveCursor(command_id="c-rm", issued_by="a1", agent_id="a1", cursor_id="c0"),
        c.RevokeRole(command_id="c-rr", agent_id="a2", role="viewer"),
        c.GrantDust(command_id="c-g", source="a1", target="a2", amount=10, memo="gift"),
        c.QueryChem(
            command_id="c-q",
            chem_id="k1",
            agent_id="a1",
            axes=("wind.speed",),
            start=0,
            end=1,
        ),
        c.RefuseChem(command_id="c-k2r", chem_id="k2", refused_by=SID, reason="no"),
        c.RevokeChem(command_id="c-k1r", chem_id="k1", revoked_by=SID, reason="over"),
        c.DetachAgent(command_id="c-det", agent_id="a2", reason="bye"),
        c.EndSession(command_id="c-end", reason="done"),
        envelopes=envelopes,
    )
    from plantangenet.events.disclosure import DisclosureMade
    from plantangenet.events.dust import ChargeRefused

    cmd = c.QueryCursor(command_id="c-qc", agent_id="a1", cursor_id="c1", compositor="synthetic")
    extra: list[Event] = [
        DisclosureMade("a1", "c1", "synthetic", "degraded", {"x": "degraded"}, 12, price=2),
        ChargeRefused("a2", 5, 2, "cursor.query.full", "QueryCursor"),
    ]
    envelopes += [envelope_of(state, cmd, event) for event in extra]
    return envelopes


#: Valid fields (and issuer) of a command of every class, in the state named: the protocol
#: harness fuzzes some of them, and make_corpus.py writes them as seeds.
TEMPLATES: dict[str, tuple[SessionState, dict[str, Any]]] = {
    "StartSession": (NEW, {"metadata": {"a": 1}}),
    "ChangeMetadata": (ACTIVE, {"changed": {"k": "w"}, "removed": ["n"]}),
    "AttachAgent": (ACTIVE, {"agent_id": "a9", "kind": "bridge", "name": "Nine"}),
    "DetachAgent": (ACTIVE, {"agent_id": "a2", "reason": "bye"}),
    "AddCursor": (
        ACTIVE,
        {"agent_id": "a3", "cursor_id": "c9", "axes": ["z"], "start": 1, "end": 2},
    ),
    "MoveCursor": (
        PRICED,
        {
            "issued_by": "a1",
            "agent_id": "a1",
            "cursor_id": "c1",
            "axes": ["x"],
            "start": 2,
            "end": 3,
        },
    ),
    "RemoveCursor": (ACTIVE, {"agent_id": "a2", "cursor_id": "c2"}),
    "ChangePolicy": (ACTIVE, {"remove": ["keep-c0"]}),
    "BindIdentity": (ACTIVE, {"identity_id": "ops", "attributes": {"tier": "silver"}}),
    "GrantRole": (ACTIVE, {"agent_id": "a3", "role": "watcher"}),
    "RevokeRole": (ACTIVE, {"agent_id": "a2", "role": "viewer"}),
    "EndSession": (ACTIVE, {"reason": "over"}),
    "RegisterCompositor": (ACTIVE, {"name": "recorded", "description": "buoys"}),
    "SetPrices": (ACTIVE, {"prices": {"cursor.query": 2, "cursor.query.full": 5}}),
    "DepositDust": (ACTIVE, {"account": "a3", "amount": 5, "memo": "top-up"}),
    "GrantDust": (ACTIVE, {"source": "a1", "target": "a2", "amount": 10}),
    "ProposeChem": (
        ACTIVE,
        {
            "chem_id": "k2",
            "peer": "s2",
            "proposed_by": "s1",
            "terms": [{"discloser": "s1", "axes": ["x"]}],
        },
    ),
    "AcceptChem": (ACTIVE, {"chem_id": "k2", "accepted_by": "s1"}),
    "RefuseChem": (ACTIVE, {"chem_id": "k2", "refused_by": "s1", "reason": "no"}),
    "RevokeChem": (ACTIVE, {"chem_id": "k1", "revoked_by": "s1"}),
    "QueryChem": (
        PRICED,
        {"chem_id": "k1", "agent_id": "a1", "axes": ["wind.speed"], "start": 0, "end": 1},
    ),
    "QueryCursor": (
        PRICED,
        {"issued_by": "a2", "agent_id": "a2", "cursor_id": "c2", "compositor": "synthetic"},
    ),
    "DiscloseChem": (
        ACTIVE,
        {
            "chem_id": "k1",
            "peer": "s2",
            "agent_id": "b1",
            "axes": ["x"],
            "start": 0,
            "end": 1,
            "compositor": "synthetic",
        },
    ),
}

# -- fuzzed values --------------------------------------------------------------------

IDS = ["a1", "a2", "a3", "a9", "c0", "c1", "c2", "c9", "k1", "k2", "k9", SID, PEER]
IDS += ["synthetic", "recorded", "ops", "watchers", "viewers", "admins", "keep-c0", "treasury"]
ROLES = ["watcher", "viewer", "admin", "mover"]
AXES = ["x", "y", "z", "t", "wind.speed", "wind.dir", "ocean.temp", "wind.*", "*"]
PATTERNS = ["*", "cursor.*", "axis.*", "agent.*", "session.*", "dust.*", "chem.*", "policy"]
PATTERNS += ["cursor.query", "cursor.move", "cursor.add", "cursor.c0", "cursor.query.full"]
PATTERNS += ["chem.query", "role.grant", "metadata.*", "identity", "*.*", "a.*.b"]
WORDS = ["full", "degraded", "masked", "denied", "allow", "deny", "bot", "client", "bridge"]
WORDS += ["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "hour", "weekday"]
WORDS += ["identity.tier", "resolution", "agent.kind", "gold", "silver", "done", "bye"]
EDGES = ["", " ", ".", "a.b", "a..b", "*", ">", "\x00", "é", "😀", "\u202e", "x" * 64]
EDGES += ["x" * 129, "-", "_", "a b", "ACTIVE", "__class__", "agent.", ".x"]
TOKENS = IDS + ROLES + AXES + PATTERNS + WORDS + EDGES
#: Map keys: fields of commands and of the value objects they carry, and tokens.
KEYS = sorted(
    {f.name for cls in vars(c).values() if dataclasses.is_dataclass(cls) for f in fields(cls)}
    | {"id", "effect", "actions", "resources", "roles", "conditions", "disclosure"}
    | {"key", "op", "value", "discloser", "axes", "price", "level", "decimals", "mask"}
    | {"v", "by", "corr", "ctx", "args"}
)
KEYS += ["tier", "hour", "identity.tier", "x", "", "é"]


class Values:
    """Values drawn from a ``FuzzedDataProvider``: msgpack-shaped, biased toward meaning."""

    def __init__(self, fdp: Any) -> None:
        self.fdp = fdp

    def pick(self, options: list[Any]) -> Any:
        return options[self.fdp.ConsumeIntInRange(0, len(options) - 1)]

    def token(self) -> str:
        return str(self.pick(TOKENS))

    def text(self) -> str:
        if self.fdp.ConsumeBool():
            return self.token()
        return str(self.fdp.ConsumeUnicodeNoSurrogates(self.fdp.ConsumeIntInRange(0, 40)))

    def number(self) -> int | float:
        fdp = self.fdp
        match fdp.ConsumeIntInRange(0, 5):
            case 0:
                return int(fdp.ConsumeIntInRange(-3, 12))
            case 1:
                return float(fdp.ConsumeRegularFloat())
            case 2:
                return float(fdp.ConsumeFloat())  # NaN and infinities too
            case 3:
                return int(fdp.ConsumeIntInRange(-(2**63), 2**64 - 1))
            case 4:
                return float(fdp.ConsumeIntInRange(-3, 12)) / 2
            case _:
                edges: list[int | float] = [0, 1, -1, 2**53, 2**53 + 1, 2**63 - 1, -(2**63), 1e308]
                index: int = fdp.ConsumeIntInRange(0, len(edges) - 1)
                return edges[index]

    def scalar(self) -> Any:
        match self.fdp.ConsumeIntInRange(0, 5):
            case 0:
                return None
            case 1:
                return self.fdp.ConsumeBool()
            case 2 | 3:
                return self.number()
            case 4:
                return self.text()
            case _:
                return bytes(self.fdp.ConsumeBytes(self.fdp.ConsumeIntInRange(0, 8)))

    def any(self, depth: int = 0) -> Any:
        """Any msgpack-shaped value (nested up to a few levels)."""
        kind = self.fdp.ConsumeIntInRange(0, 9 if depth < 4 else 3)
        match kind:
            case 0 | 1 | 2:
                return self.scalar()
            case 3:
                return self.token()
            case 4 | 5:
                return [self.any(depth + 1) for _ in range(self.fdp.ConsumeIntInRange(0, 4))]
            case 6 | 7:
                return self.mapping(depth)
            case 8:
                return self.statement(depth)
            case _:
                return self.clause(depth)

    def mapping(self, depth: int = 0, scalars: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _ in range(self.fdp.ConsumeIntInRange(0, 4)):
            key = self.pick(KEYS) if self.fdp.ConsumeBool() else self.text()
            out[key] = self.scalar() if scalars else self.any(depth + 1)
        return out

    def maybe(self, make: Callable[[], Any], depth: int) -> Any:
        """``make()`` mostly, sometimes anything at all."""
        return make() if self.fdp.ConsumeIntInRange(0, 7) else self.any(depth + 1)

    def strings(self, pool: list[str], depth: int = 0) -> list[Any]:
        n = self.fdp.ConsumeIntInRange(0, 3)
        return [self.maybe(lambda: self.pick(pool), depth) for _ in range(n)]

    def statement(self, depth: int = 0) -> dict[str, Any]:
        """A policy statement, each part possibly broken."""
        d = depth + 1
        out: dict[str, Any] = {
            "id": self.maybe(lambda: self.pick(IDS + ROLES), d),
            "effect": self.maybe(lambda: self.pick(["allow", "deny"]), d),
            "actions": self.maybe(lambda: self.strings(PATTERNS, d), d),
            "resources": self.maybe(lambda: self.strings(PATTERNS + AXES, d), d),
        }
        for key in ("roles", "conditions", "disclosure", "extra"):
            if self.fdp.ConsumeIntInRange(0, 3) == 0:
                out[key] = self.part(key, d)
        if self.fdp.ConsumeIntInRange(0, 7) == 0:
            del out[self.pick(sorted(out))]
        return out

    def part(self, key: str, depth: int) -> Any:
        match key:
            case "roles":
                return self.maybe(lambda: self.strings(ROLES, depth), depth)
            case "conditions":
                return [self.condition(depth) for _ in range(self.fdp.ConsumeIntInRange(0, 2))]
            case "disclosure":
                return self.disclosure(depth)
        return self.any(depth)

    def condition(self, depth: int) -> Any:
        return {
            "key": self.maybe(lambda: self.pick(["hour", "weekday", "identity.tier"]), depth),
            "op": self.maybe(lambda: self.pick(["eq", "ne", "lt", "le", "gt", "ge", "in"]), depth),
            "value": self.maybe(self.scalar, depth),
        }

    def disclosure(self, depth: int) -> Any:
        if self.fdp.ConsumeBool():
            return self.maybe(lambda: self.pick(["full", "degraded", "masked", "denied"]), depth)
        out: dict[str, Any] = {"level": self.pick(["full", "degraded", "masked", "denied"])}
        for key in ("resolution", "decimals", "mask"):
            if self.fdp.ConsumeBool():
                out[key] = self.maybe(self.number, depth) if key != "mask" else self.strings(AXES)
        return out

    def clause(self, depth: int = 0) -> dict[str, Any]:
        """A chem clause, each part possibly broken."""
        d = depth + 1
        out: dict[str, Any] = {
            "discloser": self.maybe(lambda: self.pick([SID, PEER]), d),
            "axes": self.maybe(lambda: self.strings(AXES, d), d),
        }
        if self.fdp.ConsumeBool():
            out["disclosure"] = self.disclosure(d)
        if self.fdp.ConsumeBool():
            out["price"] = self.maybe(self.number, d)
        return out

    # -- command fields, by name --------------------------------------------------------

    def field(self, name: str, hint: Any) -> Any:
        """A value for the command field ``name`` (typed ``hint``): usually a plausible one."""
        if self.fdp.ConsumeIntInRange(0, 5) == 0:
            return self.any(1)
        match name:
            case "axes":
                return self.strings(AXES) if self.fdp.ConsumeIntInRange(0, 5) else []
            case "start" | "end" | "resolution":
                return self.number()
            case "amount":
                return self.maybe(lambda: self.fdp.ConsumeIntInRange(0, 200), 0)
            case "metadata" | "changed" | "attributes" | "context":
                return self.mapping(scalars=True)
            case "prices":
                price = lambda: self.fdp.ConsumeIntInRange(0, 9)  # noqa: E731
                n = self.fdp.ConsumeIntInRange(0, 3)
                return {self.pick(PATTERNS): self.maybe(price, 0) for _ in range(n)}
            case "removed" | "remove":
                return self.strings(KEYS[:8] + IDS + ["k", "n", "watchers"])
            case "replace" | "add":
                return [self.statement() for _ in range(self.fdp.ConsumeIntInRange(0, 2))]
            case "terms":
                return [self.clause() for _ in range(self.fdp.ConsumeIntInRange(0, 2))]
            case "role":
                return self.pick(ROLES) if self.fdp.ConsumeBool() else self.token()
            case "reason" | "memo" | "description" | "display_name" | "name" | "kind":
                return self.text() if self.fdp.ConsumeIntInRange(0, 3) else self.token()
        if str(hint).startswith(("str", "<class 'str'>")) or "str" in str(hint):
            return self.pick(IDS) if self.fdp.ConsumeIntInRange(0, 3) else self.token()
        return self.any(1)


#: Every command class, with its fields (base fields excluded) and resolved type hints.
BASE_FIELDS = frozenset(f.name for f in fields(c.Command))
COMMAND_CLASSES: list[type[c.Command]] = sorted(
    (
        cls
        for cls in vars(c).values()
        if isinstance(cls, type)
        and issubclass(cls, c.Command)
        and dataclasses.is_dataclass(cls)
        and cls not in (c.Command, c.DataQuery)
    ),
    key=lambda cls: cls.__name__,
)
HINTS: dict[type[c.Command], dict[str, Any]] = {
    cls: typing.get_type_hints(cls) for cls in COMMAND_CLASSES
}


def own_fields(cls: type[c.Command]) -> Iterable[dataclasses.Field[Any]]:
    return (f for f in fields(cls) if f.name not in BASE_FIELDS)


def required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def now_of(hours: int) -> datetime:
    """A decision time: ``AT`` moved by ``hours`` (time conditions look at hour and weekday)."""
    return AT + timedelta(hours=hours)

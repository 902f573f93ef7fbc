"""Hostile input over the wire against a running session service.

Hypothesis builds request payloads for every command of the protocol (and for the
``state`` query and unknown names) from a valid request by breaking it: random bytes,
truncated msgpack, structures nested deeper than anything sane, structures close to the
1 MiB NATS payload limit, wrong types everywhere, strings a subject or a terminal would
choke on (zero-width and direction marks, emoji, NUL, CR/LF, ``.``, ``*``, ``>``, spaces,
and invalid UTF-8 such as an encoded lone surrogate ``\\xed\\xa0\\x80``), in the payload
and as the session id token of the subject wherever NATS lets a client publish it.

Every request must be answered: ``ok: true`` for what is genuinely valid, otherwise
``ok: false`` with a known error code (never the internal ``error``); nothing invalid may
write an event (the stream is counted around every request); and a well-behaved bot
working on its own session at the same time must keep getting answers. At the end every
session written to must still replay, verify, and match its live actor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import nats
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from plantangenet import EmbeddedNats, JournalConfig, Plantangenet
from plantangenet.errors import InvalidCommand
from plantangenet.events.base import EVENTS
from plantangenet.log.verify import verify
from plantangenet.projections.views import plain
from plantangenet.wire.client import BotClient
from plantangenet.wire.protocol import (
    COMMANDS,
    ERROR_CLASSES,
    QUERIES,
    SIDE_FIELDS,
    command_subject,
    decode_request,
    encode_request,
)
from plantangenet.wire.service import SessionService
from tests.conftest import with_client

#: Error codes a reply may carry; ``error`` (an unexpected exception) is a bug.
CODES = set(ERROR_CLASSES) - {"error"}
EVENT_TYPES = set(EVENTS.types())
NATS_MAX_PAYLOAD = 1024 * 1024
GOOD = "good-bot-session"
LIVE = "live"  # started, agent "bot" holding role "mover", cursor "c1"
SESSIONS = (LIVE, "fresh-1", "fresh-2", "ended")


# -- raw msgpack, so payloads can hold what msgpack-python would refuse to write -------------


@dataclasses.dataclass(frozen=True)
class Raw:
    """Bytes spliced into a payload as they are (a value msgpack-python cannot produce)."""

    data: bytes


def pack(value: Any) -> bytes:
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, dict):
        return _header(len(value), 0x80, 0xDE) + b"".join(
            pack(k) + pack(v) for k, v in value.items()
        )
    if isinstance(value, list):
        return _header(len(value), 0x90, 0xDC) + b"".join(pack(v) for v in value)
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _header(n: int, fix: int, sixteen: int) -> bytes:
    if n < 16:
        return bytes([fix | n])
    if n < 1 << 16:
        return bytes([sixteen]) + n.to_bytes(2, "big")
    return bytes([sixteen + 1]) + n.to_bytes(4, "big")


def raw_str(data: bytes) -> Raw:
    """A msgpack *str* whose bytes are not valid UTF-8."""
    assert len(data) < 32
    return Raw(bytes([0xA0 | len(data)]) + data)


LONE_SURROGATES = [raw_str(b"\xed\xa0\x80"), raw_str(b"a\xed\xb0\x80b"), raw_str(b"\xff\xfe")]
EDGE_STRINGS = [
    "", " ", "a b", ".", "a.b", "*", ">", "a*", "a>", "a.*.>", "\t", "\r\n", "a\rb", "a\nb",
    "\x00", "a\x00b", "\x7f", "\x1b[31mred", "\u200b", "a\u200db", "\ufeff", "\u202e", "\u200f",
    "\u2066x\u2069", "😀", "👩‍👩‍👧", "e\u0301", "é", "\uff21", "İ", "ß", "\U0010ffff", "\ufffd",
    "$JS.API", "_INBOX.x", "x" * 128, "x" * 129, "%2E", "..", "a:b", "🏳️‍🌈" * 40,
]  # fmt: skip
#: Ids the service accepts: so that some hostile requests are, in fact, valid.
IDS = ["bot", "b2", "c1", "c2", "mover", "id-1"]


# -- hypothesis strategies -----------------------------------------------------------------

edge_strings = st.sampled_from(EDGE_STRINGS) | st.text(max_size=12)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | edge_strings
    | st.binary(max_size=16)
    | st.sampled_from([*LONE_SURROGATES, Raw(b"\xd4\x01\x00"), Raw(b"\xd6\xff\x00\x00\x00\x01")])
)
small_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(edge_strings, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def deep_values(draw: st.DrawFn) -> Raw:
    # Up to 20,000 levels (msgpack refuses more than 1,024), often near that limit, where
    # repr() of the value once hit the recursion limit.
    depth = draw(st.integers(1, 20_000) | st.integers(900, 1100))
    wrapper = draw(st.sampled_from([b"\x91", b"\x81\xa1k"]))
    return Raw(wrapper * depth + draw(st.sampled_from([b"\x01", b"\xc0", b"\x90", b"\xa1x"])))


@st.composite
def huge_values(draw: st.DrawFn) -> Raw:
    # Up to just under the NATS payload limit, including values whose repr() is 4-7 times
    # their msgpack size (nil, booleans, empty lists, NUL): error messages must stay small.
    size = draw(st.integers(1_000, 1_000_000))
    kind = draw(
        st.sampled_from(["ascii", "ints", "map", "strings", "unicode", "nils", "falses", "nul"])
        | st.just("empty lists")
    )
    if kind == "ascii":
        return Raw(pack("x" * size))
    if kind == "unicode":
        return Raw(pack("é😀" * (size // 6)))
    if kind == "nul":
        return Raw(pack("\x00" * size))
    if kind == "ints":
        return Raw(pack([100_000 + i for i in range(size // 5)]))
    if kind == "strings":
        return Raw(pack([f"axis{i}" for i in range(size // 9)]))
    if kind in ("nils", "falses", "empty lists"):
        return Raw(
            _header(size, 0x90, 0xDC)
            + {"nils": b"\xc0", "falses": b"\xc2"}.get(kind, b"\x90") * size
        )
    return Raw(pack({f"k{i}": "v" for i in range(size // 9)}))


hostile_values = (
    small_values
    | st.sampled_from(LONE_SURROGATES)
    | deep_values()
    | huge_values()
    | st.sampled_from(EDGE_STRINGS)
)


def metadata(min_size: int = 0, max_size: int = 3) -> st.SearchStrategy[dict[str, Any]]:
    """Metadata as stored: odd keys and scalar values included (NUL, emoji, NaN...)."""
    keys = st.sampled_from(IDS) | edge_strings
    scalars = st.integers(-(2**63), 2**63 - 1) | st.floats() | st.booleans() | st.none()
    return st.dictionaries(keys, scalars | edge_strings, min_size=min_size, max_size=max_size)


def valid_args(name: str) -> st.SearchStrategy[dict[str, Any]]:
    ident = st.sampled_from(IDS)
    region = {
        "agent_id": ident,
        "cursor_id": ident,
        "axes": st.sampled_from([["x"], ["ocean.temp", "x"]]),
        "start": st.integers(0, 5),
        "end": st.integers(5, 9),
    }
    statement = st.fixed_dictionaries(
        {
            "id": ident,
            "effect": st.sampled_from(["allow", "deny"]),
            "actions": st.just(["cursor.*"]),
            "resources": st.just(["*"]),
        }
    )
    shapes: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "start": {"metadata": metadata(max_size=2)},
        "change_metadata": {"changed": metadata(min_size=1)},
        "attach": {"agent_id": ident, "kind": st.just("bot"), "name": edge_strings},
        "detach": {"agent_id": ident},
        "add_cursor": region,
        "move_cursor": region,
        "remove_cursor": {"agent_id": ident, "cursor_id": ident},
        "change_policy": {"add": st.lists(statement, max_size=2)},
        "bind_identity": {"identity_id": ident, "display_name": edge_strings},
        "grant_role": {"agent_id": ident, "role": ident},
        "revoke_role": {"agent_id": ident, "role": ident},
        "end": {"reason": edge_strings},
    }
    return st.fixed_dictionaries(shapes.get(name, {}))


@dataclasses.dataclass(frozen=True)
class Case:
    session: str
    name: str
    payload: bytes
    command_id: object
    how: str


@st.composite
def cases(draw: st.DrawFn) -> Case:
    session = draw(
        st.sampled_from(SESSIONS)
        | st.sampled_from(["*", ">", "a*b", "é", "\u200b", "\u202e", "😀", "a\x00b", "x" * 129])
        | st.sampled_from(["\x7f", "$", "%", "a:b", "a/b", "\uff21\uff22", "\ufeff"])
    )
    name = draw(
        st.sampled_from(sorted(COMMANDS))
        | st.sampled_from(sorted(QUERIES))
        | st.sampled_from(["nope", "ATTACH", "__class__", "start\u200b", "*", ">", "é"])
    )
    args: dict[str, Any] = draw(valid_args(name))
    command_id: object = uuid.uuid4().hex
    if draw(st.integers(0, 3)) == 0:
        command_id = draw(hostile_values)
    request: dict[Any, Any] = {"v": 1, "id": command_id, "args": args}
    if draw(st.booleans()):
        request["by"] = draw(st.sampled_from([None, "bot", "stranger"]) | hostile_values)
    if draw(st.integers(0, 3)) == 0:
        request["corr"] = draw(st.none() | hostile_values)
    if draw(st.integers(0, 3)) == 0:
        request["ctx"] = draw(st.dictionaries(edge_strings, hostile_values, max_size=2))
    how = draw(
        st.sampled_from(
            [
                *("valid", "wrong arg", "extra arg", "missing arg", "bad envelope"),
                *("extra field", "random bytes", "truncated", "not a map"),
            ]
        )
    )
    if how == "wrong arg" and args:
        args[draw(st.sampled_from(sorted(args)))] = draw(hostile_values)
    elif how == "extra arg":
        args[draw(edge_strings)] = draw(hostile_values)
    elif how == "missing arg" and args:
        del args[draw(st.sampled_from(sorted(args)))]
    elif how == "bad envelope":
        request[draw(st.sampled_from(["v", "id", "args", "ctx", "by"]))] = draw(hostile_values)
    elif how == "extra field":
        request[draw(edge_strings | st.sampled_from(LONE_SURROGATES))] = draw(hostile_values)
    payload = pack(request)
    if how == "random bytes":
        payload = draw(st.binary(max_size=300))
    elif how == "truncated":
        payload = payload[: draw(st.integers(0, max(len(payload) - 1, 0)))]
    elif how == "not a map":
        payload = pack(draw(st.lists(hostile_values, max_size=3) | leaves))
    if len(payload) > NATS_MAX_PAYLOAD - 4096:  # the client would refuse to send it
        payload = payload[: NATS_MAX_PAYLOAD - 4096]
    return Case(session, name, payload, command_id, how)


# -- the wire --------------------------------------------------------------------------------


class Wire:
    """A plain NATS connection on a private event loop (a hostile client)."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(nats.connect(url))

    def request(self, subject: str, payload: bytes, timeout: float = 15.0) -> dict[str, Any]:
        msg = self.loop.run_until_complete(self.nc.request(subject, payload, timeout=timeout))
        reply = msgpack.unpackb(msg.data, raw=False)
        assert type(reply) is dict, reply
        return reply

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


class GoodBot(threading.Thread):
    """A well-behaved bot moving its cursor on its own session for as long as the fuzz runs."""

    def __init__(self, url: str, config: JournalConfig) -> None:
        super().__init__(daemon=True)
        self.url, self.config = url, config
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            asyncio.run(self.work())
        except BaseException as exc:
            self.failures.append(repr(exc))

    async def work(self) -> None:
        async with await BotClient.connect(
            self.url, journal=self.config, retries=0, timeout=20
        ) as bot:
            await bot.open(GOOD)
            await bot.request(GOOD, "attach", {"agent_id": "g"})
            region = {"agent_id": "g", "cursor_id": "gc", "axes": ["x"], "start": 0, "end": 1}
            await bot.request(GOOD, "add_cursor", region)
            step = 0
            while not self.stop.is_set():
                step += 1
                began = time.monotonic()
                try:
                    await bot.request(GOOD, "move_cursor", {**region, "start": step, "end": step})
                except Exception as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.monotonic() - began)
                await asyncio.sleep(0.01)


@pytest.fixture
def wire(nats_server: EmbeddedNats) -> Iterator[Wire]:
    client = Wire(nats_server.url)
    yield client
    client.close()


def prepare(runtime: Plantangenet) -> None:
    live = runtime.session(LIVE)
    live.start({"purpose": "fuzz"})
    live.attach("bot")
    live.change_policy(
        replace=[
            {
                "id": "movers",
                "effect": "allow",
                "roles": ["mover"],
                "actions": ["cursor.*"],
                "resources": ["*"],
            }
        ]
    )
    live.grant_role("bot", "mover")
    live.add_cursor("bot", "c1", ["x"], 0, 1)
    ended = runtime.session("ended")
    ended.start()
    ended.end()


def events_outside(runtime: Plantangenet, session: str) -> Callable[[], int]:
    def count() -> int:
        return sum(n for sid, n in runtime.sessions().items() if sid != session)

    return count


def check_reply(case: Case, reply: dict[str, Any], written: int) -> None:
    assert reply.get("v") == 1 and type(reply.get("ok")) is bool, reply
    if reply["ok"]:
        if case.name == "history":
            event("ok: history page")
            assert type(reply["events"]) is list and type(reply["more"]) is bool
            assert all(type(seq) is int and type(data) is bytes for seq, data in reply["events"])
            assert written == 0
            return
        if case.name in QUERIES:
            event("ok: state query")
            assert type(reply["state"]) is dict and written == 0
            return
        event(f"ok: {case.name} ({case.how})" + (" duplicate" if reply["duplicate"] else ""))
        assert case.name in COMMANDS and reply["id"] == case.command_id
        assert set(reply["events"]) <= EVENT_TYPES and reply["events"]
        assert 1 <= reply["first"] <= reply["seq"]
        stored = 0 if reply["duplicate"] else reply["seq"] - reply["first"] + 1
        assert written == stored, (case, reply, written)
        return
    error = reply["error"]
    assert type(error) is dict and error.get("code") in CODES, (case, reply)
    assert type(error.get("message")) is str and error["message"], reply
    event(f"refused: {error['code']}")
    if error["code"] == "access_refused":
        # The refusal is recorded (once: a retry of the same id writes nothing new).
        assert written in (0, 1) and error["seq"] >= 1, (case, reply, written)
    else:
        assert written == 0, (case, reply, written)


def test_hostile_requests_are_answered_and_write_nothing_invalid(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
    service: SessionService,
    wire: Wire,
) -> None:
    prepare(runtime)
    count = events_outside(runtime, GOOD)
    setup_events = count()
    written_by_fuzz: list[int] = []
    bot = GoodBot(nats_server.url, journal_config)
    bot.start()

    @settings(
        max_examples=1500,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=cases())
    def fuzz(case: Case) -> None:
        before = count()
        subject = f"plantangenet.cmd.{case.session}.{case.name}"
        reply = wire.request(subject, case.payload)
        written = count() - before
        check_reply(case, reply, written)
        written_by_fuzz.append(written)

    try:
        fuzz()
    finally:
        bot.stop.set()
        bot.join(30)
    # The good bot was answered throughout, promptly.
    assert not bot.failures, bot.failures[:3]
    assert len(bot.latencies) >= 20 and max(bot.latencies) < 5.0, max(bot.latencies)
    # Only what was acknowledged (and recorded refusals) is in the log, and it all holds up.
    assert count() == setup_events + sum(written_by_fuzz)
    for session_id in runtime.sessions():
        replayed = runtime.replay(session_id)
        intact = runtime.run(verify(runtime.journal, session_id), 30)
        assert intact.intact, intact.describe()
        assert runtime.session(session_id).state == replayed
    assert service.failed > 0 and service.handled >= len(written_by_fuzz)


def test_subjects_nats_lets_through_reach_the_service_and_get_an_answer(
    runtime: Plantangenet, service: SessionService, wire: Wire
) -> None:
    payload = encode_request({}, command_id="x")
    for token in ["*", ">", "a*", "a>", "\x00", "\u200b", "\u202e", "😀", "é", "x" * 129, "$"]:
        reply = wire.request(command_subject(token, "start"), payload)
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_command", token
    for token in ["a b", "a\tb", "a\r\nb"]:  # the NATS client refuses to publish these
        with pytest.raises(nats.errors.BadSubjectError):
            wire.request(command_subject(token, "start"), payload)
    with pytest.raises(nats.errors.NoRespondersError):  # an empty token matches no `*`
        wire.request(command_subject("", "start"), payload)
    assert runtime.sessions() == {}


def test_a_bot_client_refuses_a_session_id_no_subject_carries_before_sending(
    nats_server: EmbeddedNats, journal_config: JournalConfig, service: SessionService
) -> None:
    """A space or CR/LF is no subject (a CR/LF could inject protocol), a dot or a
    wildcard another session's (or every one's): the client raises the refusal the
    service would give, sends nothing and subscribes to nothing, and goes on working."""
    bad = ["a b", "a\r\nPUB x 1\r\nz", "a\tb", "", "ok.dot", "*", ">", "x" * 129]

    async def body(bot: BotClient) -> tuple[list[str], dict[str, Any]]:
        refused = []
        for session_id in bad:
            with pytest.raises(InvalidCommand, match="session_id must be") as request:
                await bot.request(session_id, "start", {"metadata": {}})
            with pytest.raises(InvalidCommand, match="session_id must be"):
                await anext(aiter(bot.events(session_id)))
            refused.append(str(request.value))
        return refused, await bot.open("fine")

    handled = service.handled
    refused, state = with_client(nats_server.url, journal_config, body)
    assert len(refused) == len(bad)
    assert service.handled == handled + 2  # only open's start and state came
    assert state["session_id"] == "fine" and state["sequence"] >= 1


# -- hostile values in ids and errors (once bugs, now answered) ----------------------------


def deep_attach(command_id: str, depth: int = 1000) -> bytes:
    """``{"v": 1, "id": ..., "args": {"agent_id": [[[...1]]]}}``: about 1 KB."""
    return pack({"v": 1, "id": command_id, "args": {"agent_id": Raw(b"\x91" * depth + b"\x01")}})


def test_a_deeply_nested_id_gets_an_answer(runtime: Plantangenet, wire: Wire) -> None:
    svc = SessionService(runtime)
    runtime.run(svc.start())
    try:
        runtime.session("s1").start()
        reply = wire.request(command_subject("s1", "attach"), deep_attach("deep"), timeout=5)
        assert reply["error"]["code"] == "invalid_command"
    finally:
        runtime.run(svc.stop(timeout=1))  # (the unanswered request's task never ends)


def test_deeply_nested_ids_cannot_stall_the_service(runtime: Plantangenet, wire: Wire) -> None:
    svc = SessionService(runtime, max_in_flight=3)
    runtime.run(svc.start())
    try:
        runtime.session("s1").start()
        for i in range(3):
            deep = wire.request(command_subject("s1", "attach"), deep_attach(f"d{i}"), timeout=5)
            assert deep["error"]["code"] == "invalid_command"
        reply = wire.request(command_subject("other", "start"), encode_request({}, command_id="k"))
        assert reply["ok"] is True
    finally:
        runtime.run(svc.stop(timeout=1))


def test_an_error_about_a_huge_value_gets_an_answer(
    runtime: Plantangenet, service: SessionService, wire: Wire
) -> None:
    runtime.session("s1").start()
    payload = pack({"v": 1, "id": "huge", "args": {"agent_id": [None] * 200_000}})
    assert len(payload) < 256 * 1024  # within the protocol's request limit
    reply = wire.request(command_subject("s1", "attach"), payload, timeout=5)
    assert reply["error"]["code"] == "invalid_command"


def test_command_ids_with_line_breaks_or_spaces_are_refused(
    runtime: Plantangenet, service: SessionService, wire: Wire
) -> None:
    # Command ids travel in a NATS header (Nats-Msg-Id), where nats-py turns CR/LF into
    # spaces: "k\r\nx" and "k  x" would collide. Ids are visible ASCII only.
    runtime.session("s1").start()
    subject = command_subject("s1", "attach")
    for command_id in ("k\r\nx", "k  x", "tab\tid", "\u00e9t\u00e9"):
        reply = wire.request(subject, encode_request({"agent_id": "a1"}, command_id=command_id))
        assert reply["error"]["code"] == "invalid_command", command_id
    assert runtime.sessions()["s1"] == 1
    ok = wire.request(subject, encode_request({"agent_id": "a1"}, command_id="k-x"))
    assert ok["ok"] is True


def test_the_state_of_a_session_larger_than_a_reply_gets_an_answer(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
    service: SessionService,
    wire: Wire,
) -> None:
    # A session's state can outgrow the 1 MiB NATS payload limit (256 metadata keys of up
    # to ~256 KiB each, 1,000 agents...): its `state` reply cannot be published. The caller
    # gets a typed error naming the sequence the state was at, never silence.
    session = runtime.session("big")
    session.start()
    for i in range(6):  # six events of 180 KB each: every one within the 256 KiB event limit
        session.change_metadata({f"k{i}-{j}": "x" * 60_000 for j in range(3)})
    reply = wire.request(command_subject("big", "state"), b"", timeout=5)
    assert reply["ok"] is False and reply["error"]["code"] == "reply_too_large", reply
    assert reply["error"]["seq"] == 7 and "sequence 7" in reply["error"]["message"]
    assert service.handled == service.failed == 1

    # The bot client then folds the state from the log itself: the same state.
    async def state() -> dict[str, Any]:
        async with await BotClient.connect(nats_server.url, journal=journal_config) as bot:
            return await bot.state("big")

    folded = asyncio.run(state())
    assert folded == plain(session.state)
    assert sorted(folded["metadata"]) == [f"k{i}-{j}" for i in range(6) for j in range(3)]
    # A state that fits is answered as before.
    session.change_metadata(removed=[f"k{i}-{j}" for i in range(5) for j in range(3)])
    small = wire.request(command_subject("big", "state"), b"", timeout=5)
    assert small["ok"] is True
    assert small["state"]["metadata"] == {f"k5-{j}": "x" * 60_000 for j in range(3)}


def test_a_request_missing_required_fields_names_the_first_one() -> None:
    """Each command decoded from a request with no args: refused naming the first field
    (in the command's own order) a request must give, or decoded if it needs none."""
    payload = encode_request({}, command_id="c-1")
    checked = 0
    for name, cls in COMMANDS.items():
        given_by_service = {"command_id", "issued_by", "correlation_id", "context", "principal"}
        side = SIDE_FIELDS.get(cls)
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in given_by_service
            and f.name != side
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if required:
            with pytest.raises(InvalidCommand, match=rf"^args\.{required[0]}: missing"):
                decode_request(name, payload, session_id="s-1")
            checked += 1
        else:
            assert type(decode_request(name, payload, session_id="s-1")) is cls
    assert checked > 10

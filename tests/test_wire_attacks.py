"""A hostile bot with valid credentials, against a deployment locked down as README says.

One real nats-server for the module, configured by ``plantangenet nats-config``
(bots alice and mallory, each in an account of its own), and a session service
as the service user. Alice started the ``shared`` session over the wire (she
owns it), attached her agent and holds role ``writer``; mallory attached
herself and holds role ``reader`` (she may query, and write one metadata key).
Alice also has a private session, mallory one of her own.

Every attack is its own test: it asserts the refusal *and* that the log holds
nothing it should not (message counts, the hash chain, the other bot's state
and outcomes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig

from plantangenet import (
    AccessRefused,
    EmbeddedNats,
    IdempotencyConflict,
    InvalidCommand,
    Plantangenet,
    PlantangenetError,
)
from plantangenet.actors.refusals import RefusalLimit
from plantangenet.actors.session import SessionActor
from plantangenet.cli import main
from plantangenet.domain.commands import ProposeChem
from plantangenet.events import OPERATOR, AccessDenied, Envelope
from plantangenet.log.ack_inbox import AckInbox
from plantangenet.log.verify import VerifyResult, verify
from plantangenet.wire.client import BotClient, new_command_id
from plantangenet.wire.protocol import command_subject, encode_request
from plantangenet.wire.relayed import RELAYED, encode_relayed
from plantangenet.wire.service import SessionService

T = TypeVar("T")
SERVICE_PASSWORD = "svc-pw-attacks"
ALICE, MALLORY = "alice@bot-alice", "mallory@bot-mallory"
STREAM = "PLANTANGENET"
#: A quick refusal rate, so the flood test passes it fast.
REFUSALS = RefusalLimit(rate=20.0, burst=30, interval=0.3)

POLICY = [
    {"id": "join", "effect": "allow", "actions": ["session.attach"], "resources": ["agent.*"]},
    {
        "id": "writers",
        "effect": "allow",
        "roles": ["writer"],
        "actions": ["cursor.*", "metadata.change"],
        "resources": ["*"],
    },
    {
        "id": "readers",
        "effect": "allow",
        "roles": ["reader"],
        "actions": ["cursor.query", "metadata.change"],
        "resources": ["axis.*", "metadata.note", "metadata.note2"],
    },
]


@dataclasses.dataclass
class Deployment:
    server: EmbeddedNats
    runtime: Plantangenet
    service: SessionService
    root: Path

    def url(self, user: str, password: str) -> str:
        return f"nats://{user}:{password}@{self.server.host}:{self.server.port}"

    @property
    def service_url(self) -> str:
        return self.url("plantangenet", SERVICE_PASSWORD)

    def count(self, session_id: str) -> int:
        return self.runtime.sessions().get(session_id, 0)

    def counts(self) -> dict[str, int]:
        return self.runtime.sessions()

    def intact(self, session_id: str) -> bool:
        result: VerifyResult = self.runtime.run(verify(self.runtime.journal, session_id))
        return result.intact

    def history(self, session_id: str) -> list[Envelope]:
        return self.runtime.history(session_id)

    def consumers(self) -> int:
        info = self.runtime.run(self.runtime.journal.js.stream_info(STREAM))
        return int(info.state.consumer_count)


def run(scenario: Awaitable[T]) -> T:
    return asyncio.run(scenario)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def bot(deployment: Deployment, who: str, **kw: Any) -> AsyncIterator[BotClient]:
    password = {"alice": "alice-pw", "mallory": "mallory-pw"}[who]
    client = await BotClient.connect(
        deployment.url(who, password), agent_id=who, timeout=5, retries=0, **kw
    )
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def raw(deployment: Deployment, who: str) -> AsyncIterator[Any]:
    password = {"alice": "alice-pw", "mallory": "mallory-pw"}[who]
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(deployment.url(who, password), error_cb=on_error, allow_reconnect=False)
    nc.violations = errors  # type: ignore[attr-defined]
    try:
        yield nc
    finally:
        await nc.close()


async def forged_moves(nc: Any, count: int, args: dict[str, Any]) -> dict[str, int]:
    """``count`` moves of ``args`` as alice's agent, sent at once on ``nc`` (mallory's raw
    connection) before any answer comes: the codes of their answers."""
    inbox = nc.new_inbox()
    codes: dict[str, int] = {}
    done = asyncio.Event()

    async def replied(msg: Any) -> None:
        code = msgpack.unpackb(msg.data)["error"]["code"]
        codes[code] = codes.get(code, 0) + 1
        if sum(codes.values()) == count:
            done.set()

    sub = await nc.subscribe(inbox + ".*", cb=replied, pending_msgs_limit=10 * count + 1000)
    payloads = [
        encode_request(args, command_id=new_command_id(), issued_by="alice") for _ in range(count)
    ]
    for i, payload in enumerate(payloads):
        await nc.publish(command_subject("shared", "move_cursor"), payload, f"{inbox}.{i}")
    await nc.flush()
    await asyncio.wait_for(done.wait(), 60)
    await sub.unsubscribe()
    return codes


def refused(call: Callable[[BotClient], Awaitable[Any]], who: str = "mallory") -> Any:
    """The error ``call(bot)`` raises (it must raise a PlantangenetError)."""

    async def scenario() -> Any:
        async with bot(DEPLOYMENT[0], who) as client:
            try:
                await call(client)
            except PlantangenetError as exc:
                return exc
        raise AssertionError("the call was not refused")

    return run(scenario())


DEPLOYMENT: list[Deployment] = []


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("wire-attacks")
    conf = root / "nats.conf"
    out = io.StringIO()
    status = main(
        [
            "nats-config",
            "--service-password",
            SERVICE_PASSWORD,
            "--bot",
            "alice:alice-pw:shared,alice-private,strict,poisoned,fresh",
            "--bot",
            "mallory:mallory-pw:shared,mallory-own,strict",
            "--bot-max-consumers",
            "3",
            "--out",
            str(conf),
        ],
        out,
    )
    assert status == 0, out.getvalue()
    server = EmbeddedNats(root / "store", extra_args=["-c", str(conf)]).start()
    try:
        url = f"nats://plantangenet:{SERVICE_PASSWORD}@{server.host}:{server.port}"
        runtime = Plantangenet.open(nats_url=url, refusal_limit=REFUSALS)
        service = SessionService(runtime)
        runtime.run(service.start())
        deployment = Deployment(server, runtime, service, root)
        DEPLOYMENT[:] = [deployment]
        try:
            run(_set_up(deployment))
            yield deployment
        finally:
            runtime.run(service.stop())
            runtime.close()
    finally:
        server.stop()


async def _set_up(deployment: Deployment) -> None:
    async with bot(deployment, "alice") as alice, bot(deployment, "mallory") as mallory:
        await alice.open("shared")
        await alice.change_policy("shared", replace=POLICY)
        await alice.attach("shared")
        await alice.request("shared", "grant_role", {"agent_id": "alice", "role": "writer"})
        await alice.add_cursor("shared", "c", ["x"], 0, 1)
        await mallory.attach("shared", issued_by="mallory")  # she joins as herself
        await alice.request("shared", "grant_role", {"agent_id": "mallory", "role": "reader"})
        await alice.open("alice-private")
        await alice.attach("alice-private")
        await mallory.open("mallory-own")


@pytest.fixture
def shared(deployment: Deployment) -> Iterator[Deployment]:
    """The shared session, with a check afterwards that its log is still whole."""
    yield deployment
    assert deployment.intact("shared")


def refusals_by(deployment: Deployment, session_id: str, principal: str) -> list[Envelope]:
    return [
        e
        for e in deployment.history(session_id)
        if e.type_name == "AccessDenied" and e.principal == principal
    ]


# -- identity: a bot speaks only for itself ----------------------------------------------


def test_a_bot_cannot_speak_as_another_bots_agent(shared: Deployment) -> None:
    before = shared.runtime.replay("shared")
    denied = len(refusals_by(shared, "shared", MALLORY))
    error = refused(
        lambda m: m.request(
            "shared",
            "move_cursor",
            {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": 40, "end": 41},
            issued_by="alice",
        )
    )
    assert isinstance(error, AccessRefused) and "another principal" in str(error)
    after = shared.runtime.replay("shared")
    assert after.cursors == before.cursors
    # The refusal is recorded, with the principal the server vouched for.
    (event,) = refusals_by(shared, "shared", MALLORY)[denied:]
    assert isinstance(event.event, AccessDenied)
    assert event.agent_id == "alice" and event.event.agent_id == "alice"


def test_a_forged_by_answered_without_a_task_is_refused_the_same(shared: Deployment) -> None:
    """The shared session's actor runs in the service, so a single command to it is
    answered from the actor's callback, with no task (``service_direct``): mallory's
    commands as alice's agent, sent that way, are refused and recorded with her
    principal exactly as on the task's way, and change nothing of alice's."""
    service = shared.service
    assert service.runtime.running_session("shared") is not None
    tasks: list[str] = []
    handle = service._handle

    async def counted(msg: Any, *args: Any, **kw: Any) -> None:
        tasks.append(msg.subject)
        await handle(msg, *args, **kw)

    before = shared.runtime.replay("shared")
    denied = len(refusals_by(shared, "shared", MALLORY))

    def forged(start: int) -> Any:
        # Each as from a principal refused no more than once (a second refusal in a row
        # narrows her window: then a task answers; see the test after this one).
        service._window_of.pop(MALLORY, None)
        return refused(
            lambda m: m.request(
                "shared",
                "move_cursor",
                {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": start, "end": 9},
                issued_by="alice",
            )
        )

    service._handle = counted  # type: ignore[method-assign]
    try:
        errors = [forged(i) for i in range(3)]
    finally:
        del service._handle
        service._window_of.pop(MALLORY, None)
    assert tasks == []  # none took the task's way
    assert all(isinstance(e, AccessRefused) and "another principal" in str(e) for e in errors)
    assert shared.runtime.replay("shared").cursors == before.cursors
    recorded = refusals_by(shared, "shared", MALLORY)[denied:]
    assert [(type(e.event).__name__, e.agent_id) for e in recorded] == [
        ("AccessDenied", "alice")
    ] * 3


def test_a_principal_refused_lately_is_answered_by_tasks_not_at_once(
    shared: Deployment,
) -> None:
    """A refusal decided without a task is answered at once, and the next refusal after
    it: a flood answered that way would be decided request by request in one turn of the
    loop, never queueing behind the one in hand nor overflowing. So once refusals narrow
    a principal's window below ``first_window``, its commands take the task's way."""
    service = shared.service
    tasks: list[str] = []
    handle = service._handle

    async def counted(msg: Any, *args: Any, **kw: Any) -> None:
        tasks.append(msg.subject)
        await handle(msg, *args, **kw)

    args = {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": 0, "end": 1}

    def forged() -> Any:
        return refused(lambda m: m.request("shared", "move_cursor", args, issued_by="alice"))

    service._handle = counted  # type: ignore[method-assign]
    try:
        service._window_of[MALLORY] = service.first_window  # as if never refused
        assert isinstance(forged(), AccessRefused)
        at_once = len(tasks)
        narrowed = service.window(MALLORY)
        assert isinstance(forged(), AccessRefused)
    finally:
        del service._handle
        service._window_of.pop(MALLORY, None)
    assert at_once == 0 and narrowed == service.first_window // 2
    assert len(tasks) == 1  # narrowed: the task's way


OWNER_FORM = [
    ("grant_role", {"agent_id": "mallory", "role": "writer"}),
    (
        "change_policy",
        {"add": [{"id": "all", "effect": "allow", "actions": ["*"], "resources": ["*"]}]},
    ),
    ("revoke_role", {"agent_id": "alice", "role": "writer"}),
    ("bind_identity", {"identity_id": "mallory-corp"}),
    ("deposit", {"account": "mallory", "amount": 1_000_000}),
    ("end", {"reason": "mine now"}),
    ("add_owner", {"owner": MALLORY}),
    ("remove_owner", {"owner": ALICE}),
    ("bind_agent", {"agent_id": "alice", "bound_to": MALLORY}),
    ("attach", {"agent_id": "alices-twin", "bound_to": ALICE}),
    ("set_prices", {"prices": {"cursor.query": 1000}}),
    ("detach", {"agent_id": "alice"}),
]


@pytest.mark.parametrize(("name", "args"), OWNER_FORM, ids=[n for n, _ in OWNER_FORM])
def test_the_owner_form_is_refused_to_a_bot_that_owns_nothing(
    shared: Deployment, name: str, args: dict[str, Any]
) -> None:
    before = shared.runtime.replay("shared")
    denied = len(refusals_by(shared, "shared", MALLORY))
    error = refused(lambda m: m.request("shared", name, args))  # "by": nil, the owner form
    assert isinstance(error, AccessRefused) and "not an owner" in str(error), error
    after = shared.runtime.replay("shared")
    for kept in ("status", "owners", "roles", "policy", "identity", "balances", "prices"):
        assert getattr(after, kept) == getattr(before, kept), kept
    assert after.agents == before.agents
    (event,) = refusals_by(shared, "shared", MALLORY)[denied:]
    assert event.agent_id is None  # the owner form, tried by mallory


def test_a_bot_joins_only_as_itself_and_only_for_itself(shared: Deployment) -> None:
    error = refused(
        lambda m: m.request(
            "shared", "attach", {"agent_id": "m2", "bound_to": ALICE}, issued_by="m2"
        )
    )
    assert isinstance(error, AccessRefused) and "only owners name" in str(error)
    assert "m2" not in shared.runtime.replay("shared").agents

    async def join_as_herself() -> None:
        async with bot(shared, "mallory") as mallory:
            await mallory.request("shared", "attach", {"agent_id": "m3"}, issued_by="m3")

    run(join_as_herself())
    assert shared.runtime.replay("shared").agents["m3"].principal == MALLORY


def test_a_bots_large_batch_is_decided_off_the_event_loop(shared: Deployment) -> None:
    # The service's event loop decides a small request of an idle session itself (see
    # plantangenet.actors.turns). A hostile bot's largest batch must not hold the loop
    # (and every other bot's requests) for its whole length: the session's own thread
    # decides it, and the loop takes turns again afterwards.
    def taken() -> int:
        actor: SessionActor = shared.runtime.session("shared").query(lambda a: a).result(10)
        return actor.actor_inbox.taken_on_loop

    async def mallory_batch() -> list[Any]:
        async with bot(shared, "mallory") as mallory:
            items = [("change_metadata", {"changed": {"note": i}}) for i in range(200)]
            return await mallory.request_many("shared", items, issued_by="mallory")

    async def alice_moves() -> None:
        async with bot(shared, "alice") as alice:
            for i in range(3):
                await alice.move_cursor("shared", "c", ["x"], i, i + 1, issued_by="alice")

    run(alice_moves())
    before = taken()
    outcomes = run(mallory_batch())
    assert [o for o in outcomes if not (isinstance(o, dict) and o["ok"])] == []
    assert taken() == before  # neither the batch nor its acknowledgements on the loop
    assert shared.runtime.replay("shared").metadata["note"] == 199
    run(alice_moves())
    assert taken() > before
    assert shared.intact("shared")


def test_a_bots_large_policy_is_decided_off_the_event_loop(shared: Deployment) -> None:
    # A bot owns the sessions it starts and may give them any policy: thousands of
    # statements take tens of milliseconds to parse. The service's event loop must not
    # hold every other bot's requests for that long: the session's thread decides it.
    def taken(session_id: str) -> int:
        actor: SessionActor = shared.runtime.session(session_id).query(lambda a: a).result(10)
        return actor.actor_inbox.taken_on_loop

    statements = [
        {"id": f"s{i}", "effect": "allow", "actions": ["cursor.move"], "resources": [f"axis.a{i}"]}
        for i in range(1500)
    ]

    async def mallory_policy() -> None:
        async with bot(shared, "mallory") as mallory:
            await mallory.open("mallory-own")
            await mallory.change_metadata("mallory-own", {"k": 1}, issued_by=None)  # on the loop
            before.append(taken("mallory-own"))
            await mallory.change_policy("mallory-own", replace=statements)

    before: list[int] = []
    run(mallory_policy())
    assert before[0] > 0  # the loop does take this session's turns...
    assert taken("mallory-own") == before[0]  # ...but not the policy, nor its storing
    assert len(shared.runtime.replay("mallory-own").policy.statements) == 1500
    assert shared.intact("mallory-own")


def test_batch_items_carrying_another_agent_are_refused_one_by_one(shared: Deployment) -> None:
    async def scenario() -> list[Any]:
        async with bot(shared, "mallory") as mallory:
            return await mallory.request_many(
                "shared",
                [
                    ("change_metadata", {"changed": {"note": "hi"}}),
                    (
                        "move_cursor",
                        {
                            "agent_id": "alice",
                            "cursor_id": "c",
                            "axes": ["x"],
                            "start": 7,
                            "end": 8,
                        },
                    ),
                    ("change_metadata", {"changed": {"note2": "there"}}),
                ],
                issued_by="mallory",
            )

    before = shared.runtime.replay("shared")
    first, second, third = run(scenario())
    assert isinstance(first, dict) and first["ok"] and isinstance(third, dict) and third["ok"]
    assert isinstance(
        second, AccessRefused
    )  # the item as another agent (by: mallory, cursor: alice's)
    after = shared.runtime.replay("shared")
    assert after.cursors == before.cursors
    assert after.metadata["note"] == "hi" and after.metadata["note2"] == "there"

    async def owner_form_batch() -> list[Any]:
        async with bot(shared, "mallory") as mallory:
            return await mallory.request_many(
                "shared", [("grant_role", {"agent_id": "mallory", "role": "writer"})]
            )

    (outcome,) = run(owner_form_batch())
    assert isinstance(outcome, AccessRefused) and "not an owner" in str(outcome)
    assert shared.runtime.replay("shared").roles == after.roles


def test_a_forged_request_info_header_is_replaced_by_the_servers(shared: Deployment) -> None:
    async def scenario() -> dict[str, Any]:
        async with raw(shared, "mallory") as nc:
            forged = json.dumps({"acc": "bot-alice", "user": "alice"})
            args = {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": 9, "end": 9}
            payload = encode_request(args, command_id=new_command_id(), issued_by="alice")
            reply = await nc.request(
                command_subject("shared", "move_cursor"),
                payload,
                timeout=5,
                headers={"Nats-Request-Info": forged},
            )
            return dict(msgpack.unpackb(reply.data))

    denied = len(refusals_by(shared, "shared", MALLORY))
    reply = run(scenario())
    assert reply["ok"] is False and reply["error"]["code"] == "access_refused"
    assert len(refusals_by(shared, "shared", MALLORY)) == denied + 1  # mallory's, not alice's
    assert shared.runtime.replay("shared").cursors["c"].start != 9


def test_a_bot_cannot_send_a_chem_step_in_the_form_only_the_service_relays(
    shared: Deployment,
) -> None:
    """``relayed_step`` records a chem step as the operator's, every field as sent (the
    acting side too): the form one ``serve`` process passes to the peer session's owner.
    Mallory sends it on the shared session's subject, which her account reaches."""
    step = ProposeChem(
        command_id=new_command_id(),
        chem_id="mallory-chem",
        peer="mallory-own",
        proposed_by="mallory-own",
        terms=({"discloser": "shared", "axes": ["*"], "disclosure": "full"},),
    )

    async def scenario() -> dict[str, Any]:
        async with raw(shared, "mallory") as nc:
            subject = command_subject("shared", RELAYED)
            reply = await nc.request(subject, encode_relayed(step), timeout=5)
            return dict(msgpack.unpackb(reply.data))

    before = shared.count("shared")
    reply = run(scenario())
    assert reply["ok"] is False and reply["error"]["code"] == "access_refused"
    assert shared.count("shared") == before  # nothing recorded, not even a refusal
    assert "mallory-chem" not in shared.runtime.replay("shared").chems


def test_a_second_request_info_header_in_another_case_is_refused(shared: Deployment) -> None:
    async def scenario() -> dict[str, Any]:
        async with raw(shared, "mallory") as nc:
            payload = encode_request({"changed": {"note": "x"}}, command_id=new_command_id())
            reply = await nc.request(
                command_subject("shared", "change_metadata"),
                payload,
                timeout=5,
                headers={"nats-request-info": json.dumps({"acc": "bot-alice", "user": "alice"})},
            )
            return dict(msgpack.unpackb(reply.data))

    before, unidentified = shared.count("shared"), shared.service.unidentified
    reply = run(scenario())
    assert reply["ok"] is False and reply["error"]["code"] == "access_refused"
    assert "cannot tell who sent" in reply["error"]["message"]
    assert shared.service.unidentified == unidentified + 1
    assert shared.count("shared") == before


def test_every_envelope_records_its_principal(shared: Deployment) -> None:
    history = shared.history("shared")
    by_type = {(e.type_name, e.principal) for e in history}
    assert ("SessionStarted", ALICE) in by_type and ("AgentAttached", MALLORY) in by_type
    assert shared.runtime.replay("shared").owners == (ALICE,)
    assert all(e.principal in (ALICE, MALLORY, OPERATOR) for e in history)


# -- where replies go ---------------------------------------------------------------------


def test_a_reply_subject_aimed_at_another_sessions_log_writes_nothing_there(
    shared: Deployment,
) -> None:
    async def scenario() -> None:
        async with raw(shared, "mallory") as nc:
            for name in ("state", "history", "change_metadata"):
                await nc.publish(
                    command_subject("mallory-own", name),
                    encode_request({"changed": {"k": 1}}, command_id=new_command_id()),
                    reply="plantangenet.events.alice-private",
                )
            await nc.flush()
            await asyncio.sleep(0.5)

    before = shared.counts()
    run(scenario())
    after = shared.counts()
    assert after["alice-private"] == before["alice-private"]
    assert shared.intact("alice-private")

    async def alice_works() -> dict[str, Any]:
        async with bot(shared, "alice") as alice:
            return await alice.state("alice-private")

    assert run(alice_works())["status"] == "active"


@pytest.mark.parametrize(
    "reply",
    [
        "plantangenet.events.shared",
        "plantangenet.live.shared",
        "plantangenet.cmd.shared.end",
        f"$JS.API.STREAM.DELETE.{STREAM}",
        f"$JS.API.STREAM.PURGE.{STREAM}",
        "$KV.anything.x",
    ],
)
def test_the_service_never_publishes_on_its_own_subjects_or_under_dollar(
    shared: Deployment, reply: str
) -> None:
    # A connection in the service's own account (a tool with the service's rights gone
    # wrong): its reply subjects are not rewritten by the server, so the service checks.
    async def scenario() -> None:
        nc = await nats.connect(shared.service_url)
        try:
            await nc.publish(command_subject("shared", "state"), b"", reply=reply)
            await nc.flush()
            await asyncio.sleep(0.3)
        finally:
            await nc.close()

    before, dropped = shared.counts(), shared.service.refused_replies
    run(scenario())
    assert shared.service.refused_replies == dropped + 1
    assert shared.counts() == before  # the stream exists, nothing was written or purged


def test_a_bots_reply_subject_under_dollar_reaches_only_its_own_account(shared: Deployment) -> None:
    async def scenario() -> None:
        async with raw(shared, "mallory") as nc:
            await nc.publish(
                command_subject("shared", "state"), b"", reply=f"$JS.API.STREAM.PURGE.{STREAM}"
            )
            await nc.flush()
            await asyncio.sleep(0.3)

    before = shared.counts()
    run(scenario())
    assert shared.counts() == before and shared.intact("shared")


# -- the service's JetStream is out of reach --------------------------------------------


def _consumer_create(name: str, **config: Any) -> bytes:
    body = {"stream_name": STREAM, "config": {"name": name, **config}, "action": "update"}
    return json.dumps(body).encode()


def test_a_bot_cannot_update_the_services_consumers(shared: Deployment) -> None:
    js = shared.runtime.journal.js
    config = ConsumerConfig(
        durable_name="auditor", filter_subject="plantangenet.events.alice-private"
    )
    shared.runtime.run(js.add_consumer(STREAM, config))
    try:

        async def scenario() -> dict[str, Any]:
            async with raw(shared, "mallory") as nc:
                reply = await nc.request(
                    f"$JS.API.CONSUMER.CREATE.{STREAM}.auditor.plantangenet.events.mallory-own",
                    _consumer_create(
                        "auditor",
                        durable_name="auditor",
                        filter_subject="plantangenet.events.mallory-own",
                    ),
                    timeout=5,
                )
                return dict(json.loads(reply.data))

        answer = run(scenario())
        assert answer["error"]["err_code"] == 10059  # her own account has no such stream
        info = shared.runtime.run(js.consumer_info(STREAM, "auditor"))
        assert info.config.filter_subject == "plantangenet.events.alice-private"
    finally:
        shared.runtime.run(js.delete_consumer(STREAM, "auditor"))


def test_a_bot_cannot_fill_the_streams_consumer_limit(shared: Deployment) -> None:
    async def scenario() -> tuple[list[int], int | None]:
        async with raw(shared, "mallory") as nc:
            codes = []
            for i in range(20):  # on the service's stream: not there for her
                reply = await nc.request(
                    f"$JS.API.CONSUMER.CREATE.{STREAM}.m{i}", _consumer_create(f"m{i}"), timeout=5
                )
                codes.append(json.loads(reply.data)["error"]["err_code"])
            # In her own account she has a stream and at most three consumers on it.
            js = nc.jetstream(timeout=5)
            await js.add_stream(name="MINE", subjects=["mine.>"])
            limit = None
            try:
                for i in range(10):
                    await js.add_consumer("MINE", durable_name=f"d{i}")
            except nats.js.errors.BadRequestError as exc:
                limit = exc.err_code
            finally:
                await js.delete_stream("MINE")
            return codes, limit

    consumers = shared.consumers()
    codes, limit = run(scenario())
    assert set(codes) == {10059} and limit == 10026  # not found; her own limit reached
    assert shared.consumers() <= consumers  # (earlier readers may still be letting go)

    async def everyone_reads() -> tuple[int, int]:
        async with bot(shared, "alice") as alice:
            state = await alice.state("shared")
            history = await alice.history("shared")
            return state["sequence"], len(history)

    sequence, events = run(everyone_reads())
    assert sequence == max(e.sequence or 0 for e in shared.history("shared"))
    assert events == shared.count("shared")
    with Plantangenet.open(nats_url=shared.service_url) as fresh:  # a reader after a restart
        assert fresh.replay("shared").sequence == sequence


def test_a_bot_cannot_aim_push_deliveries_at_another_bots_inbox(shared: Deployment) -> None:
    async def scenario() -> tuple[int, list[Any]]:
        async with raw(shared, "alice") as alice_nc, raw(shared, "mallory") as nc:
            seen: list[Any] = []

            async def stolen(msg: Any) -> None:
                seen.append(msg)

            await alice_nc.subscribe("_INBOX.>", cb=stolen)
            await alice_nc.flush()
            reply = await nc.request(
                f"$JS.API.CONSUMER.CREATE.{STREAM}.push",
                _consumer_create(
                    "push",
                    deliver_subject="_INBOX.alice-target",
                    filter_subject="plantangenet.events.shared",
                ),
                timeout=5,
            )
            await asyncio.sleep(0.3)
            return json.loads(reply.data)["error"]["err_code"], seen

    code, seen = run(scenario())
    assert code == 10059 and seen == []


def test_a_bot_cannot_publish_into_the_event_stream(shared: Deployment) -> None:
    async def scenario() -> None:
        async with raw(shared, "mallory") as nc:
            for subject in ("plantangenet.events.shared", "plantangenet.events.alice-private"):
                await nc.publish(subject, b"\xc1 forged")
            await nc.flush()
            await asyncio.sleep(0.3)

    before = shared.counts()
    run(scenario())
    assert shared.counts() == before


@contextlib.asynccontextmanager
async def forging(nc: Any, inbox: AckInbox, forged: bytes) -> AsyncIterator[None]:
    """While the block runs, ``nc`` floods the next 40 tokens of ``inbox`` (whose prefix
    and counter a worst-case attacker knows) with ``forged`` answers."""
    prefix = inbox.prefix
    assert prefix is not None  # opened before
    stop = asyncio.Event()

    async def forge() -> None:
        while not stop.is_set():
            with contextlib.suppress(nats.errors.Error):
                first = inbox.sent + 1
                for token in range(first, first + 40):
                    await nc.publish(f"{prefix}{token}", forged)
                await nc.flush()
            await asyncio.sleep(0.005)

    forger = asyncio.ensure_future(forge())
    try:
        await asyncio.sleep(0.05)
        yield
    finally:
        stop.set()
        await forger


def test_a_forged_acknowledgement_never_reaches_the_services_appends(shared: Deployment) -> None:
    """Mallory knows (worst case) the inbox the service's appends are acknowledged on and
    the tokens it uses next, and floods them with acknowledgements of a made-up sequence
    while alice works: what she publishes stays in her own account."""
    acks = shared.runtime.journal._acks  # opened by the set-up's appends
    forged = json.dumps({"stream": STREAM, "seq": 999_999_999}).encode()

    async def scenario() -> list[dict[str, Any]]:
        async with (
            raw(shared, "mallory") as nc,
            bot(shared, "alice") as alice,
            forging(nc, acks, forged),
        ):
            return [
                await alice.change_metadata("alice-private", {"k": i}, issued_by=None)
                for i in range(8)
            ]

    replies = run(scenario())
    stored = {e.causation_id: e.sequence for e in shared.history("alice-private")}
    assert [r["seq"] for r in replies] == [stored[r["id"]] for r in replies]
    assert all(r["seq"] < 999_999_999 for r in replies)
    assert shared.intact("alice-private")


def test_a_forged_reply_never_reaches_another_bots_client(shared: Deployment) -> None:
    """The bot client's replies come back on one inbox with counted tokens (an
    ``AckInbox``). Mallory knows (worst case) alice's inbox and the tokens she uses next,
    and floods them with replies saying every command succeeded, while alice's commands
    are refused: the server refuses every one of mallory's publishes, and alice hears the
    service."""
    forged = msgpack.packb({"ok": True, "seq": 999_999_999, "id": "x"}, use_bin_type=True)

    async def scenario() -> tuple[list[str], list[str], int]:
        async with raw(shared, "mallory") as nc, bot(shared, "alice") as alice:
            await alice.state("shared")  # opens alice's reply inbox
            codes: list[str] = []
            async with forging(nc, alice._replies, forged):
                for i in range(8):  # refused: her agent may not move mallory's cursor
                    try:
                        await alice.request(
                            "shared",
                            "move_cursor",
                            {
                                "agent_id": "mallory",
                                "cursor_id": "m",
                                "axes": ["x"],
                                "start": i,
                                "end": i + 1,
                            },
                        )
                        codes.append("ok")
                    except PlantangenetError as exc:
                        codes.append(exc.code)
            return codes, list(nc.violations), alice._replies.sent

    codes, violations, sent = run(scenario())
    assert len(codes) == 8 and "ok" not in codes  # the service's refusals, not her forgeries
    assert sent >= 9
    # The server refused her every forgery (a bot publishes only its own requests), and
    # nothing she sent could stand in for the service's answers.
    assert violations and all("permissions violation for publish" in v for v in violations)


def test_a_bot_cannot_reach_or_follow_sessions_it_was_not_given(shared: Deployment) -> None:
    async def scenario() -> tuple[str, list[Any]]:
        async with raw(shared, "mallory") as nc:
            seen: list[Any] = []

            async def spy(msg: Any) -> None:
                seen.append(msg)

            await nc.subscribe("plantangenet.live.alice-private", cb=spy)
            try:
                await nc.request(command_subject("alice-private", "state"), b"", timeout=2)
                outcome = "answered"
            except nats.errors.NoRespondersError:
                outcome = "no responders"
            except nats.errors.TimeoutError:
                outcome = "timeout"
            async with bot(shared, "alice") as alice:  # alice works there meanwhile
                await alice.change_metadata("alice-private", {"k": time.time()}, issued_by=None)
            await asyncio.sleep(0.3)
            return outcome, seen

    outcome, seen = run(scenario())
    assert outcome in ("no responders", "timeout") and seen == []


def test_bots_read_history_and_follow_live_without_the_jetstream_api(shared: Deployment) -> None:
    async def scenario() -> list[Envelope]:
        async with bot(shared, "alice") as alice:
            seen: list[Envelope] = []
            last = shared.count("shared")

            async def follow() -> None:
                async for envelope in alice.events("shared", from_sequence=1):
                    seen.append(envelope)
                    if envelope.type_name == "SessionMetadataChanged" and len(seen) > last:
                        return

            task = asyncio.create_task(follow())
            await asyncio.sleep(0.3)
            await alice.change_metadata("shared", {"live": 1})
            await asyncio.wait_for(task, 10)
            return seen

    consumers = shared.consumers()
    seen = run(scenario())
    sequences = [e.sequence or 0 for e in seen]
    assert sequences == sorted(set(sequences))  # each once, in order
    assert seen[0].type_name == "SessionStarted" and seen[-1].event.changed == {"live": 1}  # type: ignore[attr-defined]
    assert shared.consumers() <= consumers  # (earlier readers may still be letting go)


# -- command ids ---------------------------------------------------------------------------


def test_command_ids_are_128_random_bits() -> None:
    ids = [new_command_id() for _ in range(2000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and len(set(ids)) == 2000
    assert len({i[:8] for i in ids}) > 1990  # no shared prefix, no counter to guess from


def test_an_id_another_principal_used_first_neither_shows_nor_spoils_the_outcome(
    shared: Deployment,
) -> None:
    # Mallory reads alice's last event and "guesses" her next command id; she is even
    # given the exact id alice will use, and sends it first with a refused command.
    taken = new_command_id()
    args = {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": 21, "end": 22}
    early = refused(
        lambda m: m.request("shared", "move_cursor", args, command_id=taken, issued_by="alice")
    )
    assert isinstance(early, AccessRefused)

    async def alice_moves() -> dict[str, Any]:
        async with bot(shared, "alice") as alice:
            return await alice.request(
                "shared", "move_cursor", args, command_id=taken, issued_by="alice"
            )

    reply = run(alice_moves())
    assert reply["ok"] and reply["duplicate"] is False
    assert shared.runtime.replay("shared").cursors["c"].start == 21
    stored = [e for e in shared.history("shared") if e.causation_id == taken]
    assert [(e.type_name, e.principal) for e in stored] == [
        ("AccessDenied", MALLORY),
        ("CursorMoved", ALICE),
    ]


def test_the_same_principal_reusing_an_id_with_other_content_is_refused(
    shared: Deployment,
) -> None:
    taken = new_command_id()

    async def scenario() -> tuple[Any, Any, Any]:
        async with bot(shared, "alice") as alice:
            move = {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": 30, "end": 31}
            first = await alice.request(
                "shared", "move_cursor", move, command_id=taken, issued_by="alice"
            )
            other = {**move, "start": 0}
            try:
                await alice.request(
                    "shared", "move_cursor", other, command_id=taken, issued_by="alice"
                )
                conflict: Any = None
            except PlantangenetError as exc:
                conflict = exc
            again = await alice.request(
                "shared", "move_cursor", move, command_id=taken, issued_by="alice"
            )
            return first, conflict, again

    first, conflict, again = run(scenario())
    assert isinstance(conflict, IdempotencyConflict)
    assert again["duplicate"] is True and again["seq"] == first["seq"]
    assert shared.runtime.replay("shared").cursors["c"].start == 30
    assert sum(e.causation_id == taken for e in shared.history("shared")) == 1


# -- what may be stored ---------------------------------------------------------------------


def test_an_oversized_correlation_id_is_refused_before_anything_is_stored(
    shared: Deployment,
) -> None:
    before = shared.count("shared")
    error = refused(
        lambda m: m.request(
            "shared",
            "grant_role",
            {"agent_id": "mallory", "role": "writer"},
            correlation_id="c" * 120 * 1024,
        )
    )
    assert isinstance(error, InvalidCommand) and "corr" in str(error)
    assert shared.count("shared") == before


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("attach", {"agent_id": "long-name", "name": "n" * 2000}),
        ("change_metadata", {"changed": {"k" * 300: 1}}),
        ("change_metadata", {"changed": {"note": "v" * 70_000}}),
        ("detach", {"agent_id": "mallory", "reason": "r" * 2000}),
    ],
    ids=["agent name", "metadata key", "metadata value", "detach reason"],
)
def test_stored_strings_have_limits_checked_before_anything_is_stored(
    shared: Deployment, name: str, args: dict[str, Any]
) -> None:
    before = shared.count("shared")
    error = refused(lambda m: m.request("shared", name, args, issued_by="mallory"))
    assert isinstance(error, InvalidCommand), error
    assert shared.count("shared") == before


# -- the policy fails closed -----------------------------------------------------------------


def test_a_deny_that_cannot_be_evaluated_denies(deployment: Deployment) -> None:
    fine = {
        "id": "fine",
        "effect": "deny",
        "actions": ["cursor.move"],
        "resources": ["*"],
        "conditions": [{"key": "resolution", "op": "lt", "value": 5}],
    }

    async def scenario() -> list[str]:
        outcomes = []
        async with bot(deployment, "alice") as alice:
            await alice.open("strict")
            await alice.change_policy("strict", replace=[*POLICY, fine])
            await alice.attach("strict")
            await alice.request("strict", "grant_role", {"agent_id": "alice", "role": "writer"})
            await alice.add_cursor("strict", "c", ["x"], 0, 1, 10)
            for resolution, context in ((None, {}), (None, {"resolution": 10}), (2, {}), (10, {})):
                try:
                    await alice.move_cursor("strict", "c", ["x"], 1, 2, resolution, context=context)
                    outcomes.append("moved")
                except AccessRefused as exc:
                    outcomes.append("denied: " + str(exc.code))
        return outcomes

    outcomes = run(scenario())
    assert outcomes == ["denied: access_refused"] * 3 + ["moved"]


def test_a_statement_for_every_role_covers_an_agent_without_one(deployment: Deployment) -> None:
    star = {
        "id": "star",
        "effect": "allow",
        "roles": ["*"],
        "actions": ["metadata.change"],
        "resources": ["metadata.star"],
    }

    async def scenario() -> tuple[Any, Any]:
        async with bot(deployment, "alice") as alice:
            await alice.open("fresh")
            await alice.change_policy("fresh", replace=[*POLICY, star])
            await alice.attach("fresh")  # alice holds no role here
            mine = await alice.change_metadata("fresh", {"star": 1})
            other = await alice.change_metadata("fresh", {"other": 1})
            return mine, other

    with pytest.raises(AccessRefused):
        run(scenario())
    assert deployment.runtime.replay("fresh").metadata == {"star": 1}


# -- refusals cost the refused ------------------------------------------------------------------


def test_a_burst_of_requests_answered_at_once_still_queues_behind_the_one_in_hand(
    shared: Deployment,
) -> None:
    """A refusal past the recorded rate is answered at once. Mallory, her rate spent,
    bursts forged commands at the shared session: the rest of the burst must queue behind
    the one in hand and overflow (``too_many_requests``), not be decided one by one by
    the session's actor in a single turn of the loop (1,438-1,479 of 1,500 were, before
    answers at once held the turn and a narrowed window meant a task)."""
    burst = 1500
    handle = shared.runtime.session("shared")
    submit_many = handle.submit_many
    reached = [0]

    def counted(commands: Any) -> Any:
        batch = tuple(commands)
        reached[0] += sum(1 for c in batch if c.principal == MALLORY)
        return submit_many(batch)

    args = {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": 0, "end": 1}

    async def scenario() -> dict[str, int]:
        async with raw(shared, "mallory") as nc:
            # Her refusals past the recorded rate are answered at once, not stored: spend
            # the rate first (sent one by one, so none overflows), then burst.
            for _ in range(REFUSALS.burst + 10):
                await forged_moves(nc, 1, args)
            reached[0] = 0
            codes = await forged_moves(nc, burst, args)
            await asyncio.sleep(REFUSALS.interval * 3)  # its summary is stored an interval on
            return codes

    handle.submit_many = counted  # type: ignore[method-assign]
    try:
        codes = run(scenario())
    finally:
        del handle.submit_many
        shared.service._window_of.pop(MALLORY, None)
    assert set(codes) == {"access_refused", "too_many_requests"}, codes
    assert reached[0] == codes["access_refused"] < burst // 2, (reached, codes)


def test_a_flood_of_refusals_is_recorded_at_a_bounded_rate_and_does_not_starve_others(
    shared: Deployment,
) -> None:
    flood = 3000
    args = {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": 0, "end": 1}

    async def scenario() -> tuple[dict[str, int], int, int, float]:
        async with raw(shared, "mallory") as nc, bot(shared, "alice") as alice:
            inbox = nc.new_inbox()
            codes: dict[str, int] = {}
            answered = asyncio.Event()
            order: list[str] = []

            async def replied(msg: Any) -> None:
                code = msgpack.unpackb(msg.data)["error"]["code"]
                codes[code] = codes.get(code, 0) + 1
                if sum(codes.values()) == flood:
                    order.append("mallory's last")
                    answered.set()

            await nc.subscribe(inbox + ".*", cb=replied, pending_msgs_limit=10 * flood)
            payloads = [
                encode_request(args, command_id=new_command_id(), issued_by="alice")
                for _ in range(flood)
            ]
            start = time.monotonic()
            for i, payload in enumerate(payloads):
                await nc.publish(
                    command_subject("shared", "move_cursor"), payload, reply=f"{inbox}.{i}"
                )
            await nc.flush()
            # Alice, sent after the whole flood, is answered before mallory's flood is.
            moved = 0
            for i in range(5):
                await alice.move_cursor("shared", "c", ["x"], 100 + i, 101 + i)
                moved += 1
            order.append("alice's five")
            await asyncio.wait_for(answered.wait(), 120)
            elapsed = time.monotonic() - start
            await asyncio.sleep(REFUSALS.interval * 3)  # the last summary comes an interval on
            return codes, moved, order.index("alice's five"), elapsed

    # The session's last stream sequence (not its count of events: other sessions share
    # the stream, so its sequences run ahead of its count).
    before = max((e.sequence or 0) for e in shared.history("shared"))
    denied_before = len(refusals_by(shared, "shared", MALLORY))
    codes, moved, alice_place, elapsed = run(scenario())
    assert moved == 5 and alice_place == 0
    assert set(codes) <= {"access_refused", "too_many_requests"} and sum(codes.values()) == flood
    recorded = len(refusals_by(shared, "shared", MALLORY)) - denied_before
    assert recorded <= REFUSALS.burst + REFUSALS.rate * (elapsed + 1)
    new = [e for e in shared.history("shared") if (e.sequence or 0) > before]
    summaries = [e.event for e in new if e.type_name == "RefusalsSuppressed"]
    assert summaries and all(s.principal == MALLORY for s in summaries)  # type: ignore[attr-defined]
    counted = sum(s.count for s in summaries)  # type: ignore[attr-defined]
    assert recorded + counted == codes.get("access_refused", 0)  # every refusal accounted for
    assert len(new) < 3 * (REFUSALS.burst + REFUSALS.rate * (elapsed + 1))  # not one per request


def test_a_flooded_lanes_reader_gives_the_loop_back_every_16_messages(
    shared: Deployment,
) -> None:
    """Mallory bursts 2,000 refused requests onto her lane at once. Watched from the
    service's own loop once per turn, no lane connection's reader handles more than 16
    messages in one turn (``yield_between_messages``): without it, a reader parses
    whole 32 KiB reads, one after another, in a single turn that every other bot's
    request, acknowledgement and reply waits behind."""
    flood = 2000
    args = {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": 0, "end": 1}
    lanes = shared.service._lane_connections
    loop = shared.runtime.loop
    turns: list[tuple[int, ...]] = []
    watching = [True]

    def watch() -> None:  # once per turn of the service's loop
        turns.append(tuple(nc.stats["in_msgs"] for nc in lanes))
        if watching[0]:
            loop.loop.call_soon(watch)

    async def scenario() -> int:
        async with raw(shared, "mallory") as nc:
            inbox = nc.new_inbox()
            answered = asyncio.Event()
            count = [0]

            async def replied(_msg: Any) -> None:
                count[0] += 1
                if count[0] == flood:
                    answered.set()

            await nc.subscribe(inbox + ".*", cb=replied, pending_msgs_limit=10 * flood)
            payloads = [
                encode_request(args, command_id=new_command_id(), issued_by="alice")
                for _ in range(flood)
            ]
            for i, payload in enumerate(payloads):
                await nc.publish(
                    command_subject("shared", "move_cursor"), payload, reply=f"{inbox}.{i}"
                )
            await nc.flush()
            await asyncio.wait_for(answered.wait(), 120)
            return count[0]

    loop.call_soon(watch)
    try:
        assert run(scenario()) == flood
    finally:
        watching[0] = False
    taken = [
        after[i] - before[i]
        for before, after in itertools.pairwise(turns)
        for i in range(len(lanes))
    ]
    assert sum(taken) >= flood  # the burst went through the watched lanes
    assert max(taken) <= 16


def test_a_principal_whose_requests_are_refused_has_one_handled_at_a_time(
    shared: Deployment,
) -> None:
    """A principal's window starts at ``first_window``; each refusal halves it, each
    request served widens it by one: a flood of refused commands has one or two at a time
    in the shared session's actor, even in its first moment, ahead of the other bots'
    commands, not ``per_principal``."""
    service = shared.service
    args = {"agent_id": "alice", "cursor_id": "c", "axes": ["x"], "start": 0, "end": 1}
    running = {ALICE: 0, MALLORY: 0}
    peak = {ALICE: 0, MALLORY: 0}
    first = [0]
    handle = shared.runtime.session("shared")
    submit_many = handle.submit_many

    def counted(commands: Any) -> Any:
        """The commands in the shared session's actor at once, by principal (a request's
        command reaches it here, whether a task or the actor's callback answers it)."""
        batch = tuple(commands)
        principals = [c.principal for c in batch if c.principal in running]
        for principal in principals:
            running[principal] += 1
            peak[principal] = max(peak[principal], running[principal])

        def ended(_: Any) -> None:
            for principal in principals:
                running[principal] -= 1

        outcome = submit_many(batch)
        outcome.add_done_callback(ended)
        return outcome

    async def scenario() -> tuple[dict[str, int], int, int]:
        async with raw(shared, "mallory") as nc, bot(shared, "mallory") as mallory:
            service._window_of.pop(MALLORY, None)  # as if never seen: her first window
            await forged_moves(nc, 40, args)  # all sent before the first answer; narrows her window
            first[0] = peak[MALLORY]
            narrowed = service.window(MALLORY)
            peak[MALLORY] = 0
            codes = await forged_moves(nc, 30, args)
            for _ in range(service.per_principal):  # requests served widen it again
                await mallory.state("mallory-own")
            await asyncio.sleep(REFUSALS.interval * 3)  # the last summary comes an interval on
            return codes, narrowed, service.window(MALLORY)

    alices = service.window(ALICE)
    handle.submit_many = counted  # type: ignore[method-assign]
    try:
        codes, narrowed, widened = run(scenario())
    finally:
        del handle.submit_many
    assert codes == {"access_refused": 30}
    assert 1 <= first[0] <= service.first_window < service.per_principal  # from the start
    assert narrowed == 1 and peak[MALLORY] == 1
    assert widened == service.per_principal
    assert service.window(ALICE) == alices  # another's refusals narrow nobody else's


# -- a poisoned log ------------------------------------------------------------------------


def test_a_poisoned_session_is_recoverable_by_quarantine(
    deployment: Deployment, tmp_path: Path
) -> None:
    async def open_it() -> None:
        async with bot(deployment, "alice") as alice:
            await alice.open("poisoned")
            await alice.attach("poisoned")

    run(open_it())
    # Bytes that are no event of the session reach its log behind the service's back.
    subject = deployment.runtime.journal.subject("poisoned")
    deployment.runtime.run(deployment.runtime.journal.js.publish(subject, b"\xc1 not an event"))
    bad = deployment.count("poisoned")  # its stream sequence is the session's last

    def cli(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        status = main([*argv, "--nats-url", deployment.service_url], out)
        return status, out.getvalue()

    async def alice_changes() -> Any:
        async with bot(deployment, "alice") as alice:
            try:
                return await alice.change_metadata("poisoned", {"k": 1}, issued_by=None)
            except PlantangenetError as exc:
                return exc

    error = run(alice_changes())
    assert error.code == "log_damaged" and "quarantine poisoned" in str(error)
    status, text = cli("verify", "poisoned")
    assert status == 1 and "BROKEN" in text and "plantangenet quarantine poisoned" in text
    sequence = deployment.runtime.run(verify(deployment.runtime.journal, "poisoned")).broken_at
    assert sequence > 0 and f"BROKEN at sequence {sequence}" in text
    status, text = cli("quarantine", "poisoned", str(sequence + 1))
    assert status != 0  # only an unreadable message is quarantined
    status, text = cli(
        "quarantine", "poisoned", str(sequence), "--reason", "written behind the service"
    )
    assert status == 0, text
    status, text = cli("verify", "poisoned")
    assert status == 0 and "quarantined" in text
    reply = run(alice_changes())
    assert isinstance(reply, dict) and reply["ok"], reply
    # The bad message is still in the log, for forensics, and every fold skips it.
    assert deployment.count("poisoned") == bad + 2
    state = deployment.runtime.replay("poisoned")
    assert state.quarantined == (sequence,) and state.metadata == {"k": 1}


@pytest.mark.parametrize(
    "payload",
    [
        {"v": 1, "from": -1},
        {"v": 1, "max": 10**9},
        {"v": 1, "from": "1"},
        {"v": 1, "sneaky": True},
        {"v": 2},
    ],
    ids=["negative start", "huge page", "string start", "unknown field", "other version"],
)
def test_history_requests_are_bounded_and_reach_only_the_bots_sessions(
    shared: Deployment, payload: dict[str, Any]
) -> None:
    async def scenario() -> tuple[dict[str, Any], str, dict[str, Any]]:
        async with raw(shared, "mallory") as nc:
            subject = command_subject("shared", "history")
            bad = dict(msgpack.unpackb((await nc.request(subject, msgpack.packb(payload))).data))
            try:
                await nc.request(command_subject("alice-private", "history"), b"", timeout=2)
                other = "answered"
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                other = "unreachable"
            page = dict(msgpack.unpackb((await nc.request(subject, b"", timeout=5)).data))
            return bad, other, page

    consumers, before = shared.consumers(), shared.counts()
    bad, other, page = run(scenario())
    assert bad["ok"] is False and bad["error"]["code"] == "invalid_command"
    assert other == "unreachable"
    assert page["ok"] and len(page["events"]) <= 1000 and page["events"][0][0] >= 1
    # Read, nothing made (other tests' readers may still be letting their consumers go).
    assert shared.consumers() <= consumers and shared.counts() == before


def test_a_lane_subject_without_the_servers_word_is_refused(shared: Deployment) -> None:
    # Only a request that crossed a bot's import arrives on a lane subject with the server's
    # Nats-Request-Info; the same subject published in the service's own account (a tool
    # posing as alice's account) is refused, nothing done.
    async def scenario() -> dict[str, Any]:
        nc = await nats.connect(shared.service_url)
        try:
            payload = encode_request({"reason": "posing"}, command_id=new_command_id())
            reply = await nc.request("plantangenet.cmd.0.bot-alice.shared.end", payload, timeout=5)
            return dict(msgpack.unpackb(reply.data))
        finally:
            await nc.close()

    before, unidentified = shared.count("shared"), shared.service.unidentified
    reply = run(scenario())
    assert reply["ok"] is False and "cannot tell who sent" in reply["error"]["message"]
    assert shared.service.unidentified == unidentified + 1
    assert shared.count("shared") == before
    assert shared.runtime.replay("shared").status == "active"

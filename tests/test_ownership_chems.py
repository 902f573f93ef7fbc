"""Chems across ``serve`` processes: each session written only by the process that owns it.

A chem step touches two sessions: the acting one (where the bot sent it) and the chem's
peer. With two ``serve`` processes owning sessions by partition (a locked-down server,
``plantangenet nats-config``), the step's second half is passed on to the process that
owns the peer, never written by the process that owns the acting session. Mallory (a
bot with valid credentials reaching both sessions' subjects) tries to send the
passed-on form herself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import nats.errors
import pytest

from plantangenet import (
    AccessRefused,
    ChemAccepted,
    ChemProposed,
    DisclosureMade,
    EmbeddedNats,
    InvalidCommand,
    SyntheticCompositor,
)
from plantangenet.cli import main
from plantangenet.domain.commands import (
    AcceptChem,
    AttachAgent,
    Command,
    DiscloseChem,
    ProposeChem,
    RefuseChem,
    RevokeChem,
    fingerprint,
)
from plantangenet.events import OPERATOR
from plantangenet.wire.client import BotClient
from plantangenet.wire.protocol import (
    command_subject,
    decode_reply,
    forward_subject,
)
from plantangenet.wire.relayed import RELAYED, decode_relayed, encode_relayed
from plantangenet.wire.service import SessionService
from tests.conftest import owning_services

PASSWORD = "svc-pw-ownership-chems"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "mallory": "mallory-pw"}
HARBOURS = [f"harbour-{i}" for i in range(8)]
FLEETS = [f"fleet-{i}" for i in range(8)]
POLICY = [{"id": "chems", "effect": "allow", "actions": ["chem.query"], "resources": ["chem.*"]}]


class Deployment:
    def __init__(self, server: EmbeddedNats, services: list[SessionService]) -> None:
        self.server = server
        self.services = services

    def url(self, who: str) -> str:
        return f"nats://{who}:{PASSWORDS[who]}@{self.server.host}:{self.server.port}"

    def owner(self, session_id: str) -> SessionService:
        (owner,) = [
            s
            for s in self.services
            if s.ownership is not None and s.ownership.owner_of(session_id) == s.ownership.member_id
        ]
        return owner


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Two ``serve`` processes."""
    with deployed(tmp_path_factory, 2) as two:
        yield two


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Three ``serve`` processes."""
    with deployed(tmp_path_factory, 3) as processes:
        yield processes


@contextlib.contextmanager
def deployed(tmp_path_factory: pytest.TempPathFactory, count: int) -> Iterator[Deployment]:
    root: Path = tmp_path_factory.mktemp("ownership-chems")
    conf = root / "nats.conf"
    out = io.StringIO()
    everything = ",".join([*HARBOURS, *FLEETS])
    status = main(
        [
            "nats-config",
            "--service-password",
            PASSWORD,
            *("--bot", f"alice:alice-pw:{','.join(HARBOURS)}"),
            *("--bot", f"bob:bob-pw:{','.join(FLEETS)}"),
            *("--bot", f"mallory:mallory-pw:{everything}"),
            *("--out", str(conf)),
        ],
        out,
    )
    assert status == 0, out.getvalue()
    server = EmbeddedNats(root / "store", extra_args=["-c", str(conf)]).start()
    try:
        url = f"nats://plantangenet:{PASSWORD}@{server.host}:{server.port}"
        compositors = {"compositors": [SyntheticCompositor()]}
        partitions = 2 * count  # each process its two
        with owning_services(
            url, count=count, partitions=partitions, runtime_options=compositors
        ) as services:
            yield Deployment(server, services)
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def bot(deployment: Deployment, who: str) -> AsyncIterator[BotClient]:
    client = await BotClient.connect(deployment.url(who), agent_id=who, timeout=10, retries=0)
    try:
        yield client
    finally:
        await client.close()


def test_a_chem_step_is_written_in_each_session_by_the_process_that_owns_it(
    deployment: Deployment,
) -> None:
    harbour, fleet = next(
        (h, f) for h in HARBOURS for f in FLEETS if deployment.owner(h) is not deployment.owner(f)
    )
    terms: list[dict[str, Any]] = [
        {
            "discloser": harbour,
            "axes": ["ocean.*"],
            "disclosure": {"level": "degraded", "decimals": 0},
            "price": 2,
        },
        {"discloser": fleet, "axes": ["wind.*"], "disclosure": "full"},
    ]
    forwarded = sum(s.forwarded for s in deployment.services)

    async def scenario() -> Any:
        async with bot(deployment, "alice") as alice, bot(deployment, "bob") as bob:
            for client, session_id in ((alice, harbour), (bob, fleet)):
                await client.open(session_id)
                await client.request(session_id, "register_compositor", {"name": "synthetic"})
                await client.attach(session_id)
                await client.request(
                    session_id, "deposit", {"account": client.agent_id, "amount": 10}
                )
            await bob.change_policy(fleet, replace=POLICY)
            await alice.propose_chem(harbour, fleet, "k1", terms)
            await bob.accept_chem(fleet, "k1")
            return await bob.query_chem(fleet, "k1", ["ocean.temperature"], 0, 3, "synthetic")

    samples = asyncio.run(asyncio.wait_for(scenario(), 60))
    # The samples came back through the process that owns the harbour.
    assert len(samples) == 4
    assert all(s.value == round(s.value) for s in samples)  # degraded to no decimals
    assert sum(s.forwarded for s in deployment.services) > forwarded
    # Each session's actor ran only in the process that owns it: no other process wrote it.
    for session_id in (harbour, fleet):
        for service in deployment.services:
            running = service.runtime.running_session(session_id) is not None
            assert running == (service is deployment.owner(session_id)), (session_id, service)
        assert all(s.metrics.conflicts._value.get() == 0 for s in deployment.services)
    runtime = deployment.owner(fleet).runtime
    fleet_log, harbour_log = runtime.history(fleet), runtime.history(harbour)
    proposed = [(e, ev) for e in fleet_log if isinstance(ev := e.event, ChemProposed)]
    assert [(e.principal, ev.proposed_by) for e, ev in proposed] == [(OPERATOR, harbour)]
    accepted = [(e, ev) for e in harbour_log if isinstance(ev := e.event, ChemAccepted)]
    assert [(e.principal, ev.accepted_by) for e, ev in accepted] == [(OPERATOR, fleet)]
    made = [e.event for e in harbour_log if isinstance(e.event, DisclosureMade)]
    assert [(m.chem_id, m.peer, m.agent_id) for m in made] == [("k1", fleet, "bob")]
    assert runtime.replay(fleet).balance("bob") == 8  # paid once for the one query


def test_a_bot_cannot_send_the_passed_on_form_of_a_chem_step(deployment: Deployment) -> None:
    """Mallory sends a relayed step (recorded as the operator's, were it taken) on a
    session subject she may reach: it arrives as hers, and only the service itself may
    send that form: refused, nothing recorded."""
    target = FLEETS[-1]
    step = AcceptChem(command_id="mallory-1", chem_id="k9", accepted_by=HARBOURS[-1])
    payload = encode_relayed(step)
    assert decode_relayed(payload).principal == OPERATOR  # what she hopes for

    async def scenario() -> bytes:
        nc = await nats.connect(deployment.url("mallory"), allow_reconnect=False)
        try:
            return (await nc.request(command_subject(target, RELAYED), payload, timeout=5)).data
        finally:
            await nc.close()

    with pytest.raises(AccessRefused, match="only the session service"):
        decode_reply(asyncio.run(scenario()))
    assert deployment.services[0].runtime.sessions().get(target, 0) == 0


@pytest.mark.parametrize(
    "step",
    [
        ProposeChem(
            command_id="r-1",
            correlation_id="c-1",
            chem_id="k1",
            peer="harbour-0",
            proposed_by="fleet-0",
            terms=({"discloser": "fleet-0", "axes": ["wind.*"], "disclosure": "full"},),
        ),
        AcceptChem(command_id="r-2", chem_id="k1", accepted_by="fleet-0"),
        RefuseChem(command_id="r-3", chem_id="k1", refused_by="fleet-0", reason="no"),
        RevokeChem(command_id="r-4", chem_id="k1", revoked_by="fleet-0"),
        DiscloseChem(
            command_id="r-5",
            chem_id="k1",
            peer="fleet-0",
            agent_id="bob",
            axes=("ocean.temperature",),
            start=0.0,
            end=3.0,
            compositor="synthetic",
            resolution=None,
            max_bytes=1000,
        ),
    ],
)
def test_a_relayed_step_decodes_to_the_operators_step_it_encodes(step: Command) -> None:
    decoded = decode_relayed(encode_relayed(step))
    assert fingerprint(decoded) == fingerprint(step)
    assert (decoded.command_id, decoded.correlation_id) == (step.command_id, step.correlation_id)
    assert (decoded.principal, decoded.issued_by, dict(decoded.context)) == (OPERATOR, None, {})


def test_only_chem_steps_are_relayed() -> None:
    with pytest.raises(InvalidCommand, match="not a chem step"):
        encode_relayed(AttachAgent(command_id="x", agent_id="a", kind="bot"))
    attach = {"v": 1, "cmd": "attach", "id": "x", "args": {"agent_id": "a", "kind": "bot"}}
    with pytest.raises(InvalidCommand, match="not a chem step"):
        decode_relayed(msgpack.packb(attach))


@contextlib.contextmanager
def proposed_while_gone(
    deployment: Deployment, harbour: str, fleet: str, chem_id: str
) -> Iterator[None]:
    """Alice (harbour) proposes ``chem_id`` to bob's fleet while the fleet's owner does not
    answer passed-on requests (as after a SIGKILL, before its lease runs out; it holds no
    state of the fleet). Inside the block the owner is still quiet; after it, it answers
    again and the fleet's actor runs nowhere else."""
    gone = deployment.owner(fleet)
    terms: list[dict[str, Any]] = [{"discloser": fleet, "axes": ["wind.*"], "disclosure": "full"}]

    async def set_up() -> None:
        async with bot(deployment, "alice") as alice, bot(deployment, "bob") as bob:
            await alice.open(harbour)
            await alice.attach(harbour)
            await bob.open(fleet)
            await bob.attach(fleet)

    async def propose() -> None:
        async with bot(deployment, "alice") as alice:
            await alice.propose_chem(harbour, fleet, chem_id, terms)

    asyncio.run(set_up())
    gone.runtime.passivate_session(fleet)
    gone.runtime.run(gone._forward_sub.unsubscribe())
    try:
        asyncio.run(asyncio.wait_for(propose(), 60))
        yield
    finally:
        assert gone.ownership is not None
        gone._forward_sub = gone.runtime.run(
            gone._nc.subscribe(
                forward_subject(gone.ownership.member_id, "*", "*", gone.command_prefix),
                cb=gone._on_forwarded,
            )
        )
        for service in deployment.services:  # back to one writer: the owner
            if service is not gone:
                service.runtime.passivate_session(fleet)


def proposals(deployment: Deployment, fleet: str) -> list[tuple[str | None, str, str]]:
    """(principal, chem id, proposer) of every ChemProposed in the fleet's log."""
    log = deployment.services[0].runtime.history(fleet)
    return [
        (e.principal, ev.chem_id, ev.proposed_by)
        for e in log
        if isinstance(ev := e.event, ChemProposed)
    ]


def test_a_chem_step_whose_peer_owner_is_gone_is_written_by_its_successor(
    deployment: Deployment,
) -> None:
    """The step's second half is written where the peer's partition goes next -- here the
    only other process, the acting one -- and recorded once."""
    pairs = [
        (h, f) for h in HARBOURS for f in FLEETS if deployment.owner(h) is not deployment.owner(f)
    ]
    harbour, fleet = next(p for p in pairs if p[0] != pairs[0][0] and p[1] != pairs[0][1])
    acting = deployment.owner(harbour)
    unowned = acting.unowned
    with proposed_while_gone(deployment, harbour, fleet, "k2"):
        assert acting.runtime.running_session(fleet) is not None
    assert acting.unowned > unowned
    assert proposals(deployment, fleet) == [(OPERATOR, "k2", harbour)]


def test_with_three_processes_a_gone_owners_step_is_written_by_the_successor_alone(
    three: Deployment,
) -> None:
    """Three processes: the acting session's owner A, the peer's owner B (gone), and C,
    where the peer's partition goes next. The step's second half is written at C -- the
    one every live process names as B's successor -- and nowhere else, once."""
    by_id = {s.ownership.member_id: s for s in three.services if s.ownership is not None}

    def successor(of: str, gone: SessionService) -> SessionService:
        assert gone.ownership is not None
        named = {
            s.ownership.successor(of, gone=gone.ownership.member_id)
            for s in three.services
            if s is not gone and s.ownership is not None
        }
        assert len(named) == 1, named  # the live processes agree
        (member,) = named
        assert member is not None
        return by_id[member]

    harbour, fleet = next(
        (h, f)
        for h in HARBOURS
        for f in FLEETS
        if three.owner(h) is not three.owner(f)
        and successor(f, three.owner(f)) not in (three.owner(h), three.owner(f))
    )
    acting, gone = three.owner(harbour), three.owner(fleet)
    taker = successor(fleet, gone)
    unowned = taker.unowned
    with proposed_while_gone(three, harbour, fleet, "k3"):
        # It served the step: it did not ask the gone owner (whose lease it still sees) again.
        assert taker.unowned == unowned
        # Only the successor ran the peer's actor: neither the acting process nor the gone one.
        assert taker.runtime.running_session(fleet) is not None
        assert acting.runtime.running_session(fleet) is None
        assert gone.runtime.running_session(fleet) is None
    assert proposals(three, fleet) == [(OPERATOR, "k3", harbour)]
    assert all(s.metrics.conflicts._value.get() == 0 for s in three.services)

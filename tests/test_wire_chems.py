"""Chems over the wire: bots of two sessions negotiate and query through ``serve`` (issue 16).

One real nats-server for the module, configured by ``plantangenet nats-config``: bots
alice (owns ``harbour``), bob (owns ``fleet``) and mallory (owns ``mallory-own``; her
requests also reach ``harbour`` and ``fleet``), each in an account of its own, so the
service knows who sent what. Chem steps get the same trust rules as every command.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from plantangenet import (
    AccessRefused,
    ChemAccepted,
    ChemProposed,
    CommandRejected,
    DisclosureMade,
    EmbeddedNats,
    InvalidCommand,
    Plantangenet,
    SyntheticCompositor,
    UnknownChem,
    UnknownCompositor,
)
from plantangenet.cli import main
from plantangenet.domain.commands import ProposeChem
from plantangenet.events import OPERATOR
from plantangenet.wire.client import BotClient
from plantangenet.wire.protocol import relay_id
from plantangenet.wire.service import SessionService

PASSWORD = "svc-pw-chems"
ALICE, BOB, MALLORY = "alice@bot-alice", "bob@bot-bob", "mallory@bot-mallory"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "mallory": "mallory-pw"}
TERMS: list[dict[str, Any]] = [
    {
        "discloser": "harbour",
        "axes": ["ocean.*"],
        "disclosure": {"level": "degraded", "decimals": 0},
        "price": 2,
    },
    {"discloser": "fleet", "axes": ["wind.*"], "disclosure": "full"},
]
#: The fleet's bot may query across chems as its agent.
POLICY = [{"id": "chems", "effect": "allow", "actions": ["chem.query"], "resources": ["chem.*"]}]


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedNats, Plantangenet]]:
    root = tmp_path_factory.mktemp("wire-chems")
    conf = root / "nats.conf"
    out = io.StringIO()
    status = main(
        [
            "nats-config",
            "--service-password",
            PASSWORD,
            "--bot",
            "alice:alice-pw:harbour",
            "--bot",
            "bob:bob-pw:fleet",
            "--bot",
            "mallory:mallory-pw:harbour,fleet,mallory-own",
            "--out",
            str(conf),
        ],
        out,
    )
    assert status == 0, out.getvalue()
    server = EmbeddedNats(root / "store", extra_args=["-c", str(conf)]).start()
    try:
        url = f"nats://plantangenet:{PASSWORD}@{server.host}:{server.port}"
        runtime = Plantangenet.open(nats_url=url, compositors=[SyntheticCompositor()])
        service = SessionService(runtime)
        runtime.run(service.start())
        try:
            yield server, runtime
        finally:
            runtime.run(service.stop())
            runtime.close()
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def bot(server: EmbeddedNats, who: str) -> AsyncIterator[BotClient]:
    url = f"nats://{who}:{PASSWORDS[who]}@{server.host}:{server.port}"
    client = await BotClient.connect(url, agent_id=who, timeout=5, retries=0)
    try:
        yield client
    finally:
        await client.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


@pytest.fixture(scope="module")
def sides(deployment: tuple[EmbeddedNats, Plantangenet]) -> tuple[EmbeddedNats, Plantangenet]:
    """harbour (alice's) and fleet (bob's), with a chem k1 alice proposed and bob accepted."""
    server, _ = deployment

    async def set_up() -> None:
        async with bot(server, "alice") as alice, bot(server, "bob") as bob:
            for client, session_id in ((alice, "harbour"), (bob, "fleet")):
                await client.open(session_id)
                await client.request(session_id, "register_compositor", {"name": "synthetic"})
                await client.attach(session_id)
                await client.request(
                    session_id, "deposit", {"account": client.agent_id, "amount": 10}
                )
            await bob.change_policy("fleet", replace=POLICY)
            await alice.propose_chem("harbour", "fleet", "k1", TERMS)
            await bob.accept_chem("fleet", "k1")

    run(set_up())
    return deployment


def test_bots_negotiate_a_chem_and_query_across_it_through_serve(
    sides: tuple[EmbeddedNats, Plantangenet],
) -> None:
    server, runtime = sides
    harbour, fleet = runtime.session("harbour").state, runtime.session("fleet").state
    assert (harbour.chems["k1"].status, harbour.chems["k1"].peer) == ("active", "fleet")
    assert (fleet.chems["k1"].status, fleet.chems["k1"].peer) == ("active", "harbour")
    # Each side recorded each step: the acting side as its bot sent it, the peer as relayed.
    fleet_log, harbour_log = runtime.history("fleet"), runtime.history("harbour")
    proposed = [(e, ev) for e in fleet_log if isinstance(ev := e.event, ChemProposed)]
    assert [(e.principal, ev.proposed_by) for e, ev in proposed] == [(OPERATOR, "harbour")]
    relayed = proposed[0][0]
    assert relayed.causation_id == relay_id(ALICE, "harbour", relayed.correlation_id)
    accepted = [(e, ev) for e in harbour_log if isinstance(ev := e.event, ChemAccepted)]
    assert [(e.principal, ev.accepted_by) for e, ev in accepted] == [(OPERATOR, "fleet")]
    mine = [e for e in runtime.history("fleet") if isinstance(e.event, ChemAccepted)]
    assert [e.principal for e in mine] == [BOB]

    async def ask() -> Any:
        async with bot(server, "bob") as bob:
            return await bob.query_chem("fleet", "k1", ["ocean.temperature"], 0, 3, "synthetic")

    samples = run(ask())
    assert len(samples) == 4
    assert all(s.value == round(s.value) for s in samples)  # degraded to no decimals
    assert runtime.session("fleet").state.balance("bob") == 8  # 2 a axis, paid by the asker
    made = [e.event for e in runtime.history("harbour") if isinstance(e.event, DisclosureMade)]
    assert [(m.chem_id, m.peer, m.agent_id, m.level) for m in made] == [
        ("k1", "fleet", "bob", "degraded")
    ]


def test_a_bot_that_is_not_party_to_a_chem_cannot_step_it(
    sides: tuple[EmbeddedNats, Plantangenet],
) -> None:
    server, runtime = sides

    async def attacks() -> dict[str, BaseException]:
        errors: dict[str, BaseException] = {}
        async with (
            bot(server, "alice") as alice,
            bot(server, "mallory") as mallory,
        ):
            await alice.propose_chem("harbour", "fleet", "k2", TERMS)
            attempts = {
                # Not an owner of the side she speaks for.
                "accept in fleet": mallory.accept_chem("fleet", "k2"),
                "revoke in harbour": mallory.revoke_chem("harbour", "k1"),
                "refuse in fleet": mallory.refuse_chem("fleet", "k2"),
                # Nor bound to the agent she sends it as.
                "accept as bob": mallory.accept_chem("fleet", "k2", issued_by="bob"),
                # Her own session is no party to the chem.
                "accept in her own": mallory.accept_chem("mallory-own", "k2"),
                # The acting side is the session the request goes to, never an argument.
                "accept for fleet": mallory.request(
                    "harbour", "accept_chem", {"chem_id": "k2", "accepted_by": "fleet"}
                ),
                # The proposer cannot accept its own proposal.
                "alice accepts her own": alice.accept_chem("harbour", "k2"),
            }
            await mallory.open("mallory-own")
            for name, attempt in attempts.items():
                try:
                    await attempt
                except Exception as exc:
                    errors[name] = exc
        return errors

    errors = run(attacks())
    assert set(errors) == {
        "accept in fleet",
        "revoke in harbour",
        "refuse in fleet",
        "accept as bob",
        "accept in her own",
        "accept for fleet",
        "alice accepts her own",
    }
    for name in ("accept in fleet", "revoke in harbour", "refuse in fleet", "accept as bob"):
        assert isinstance(errors[name], AccessRefused), name
    assert "another principal" in str(errors["accept as bob"])
    assert isinstance(errors["accept in her own"], UnknownChem)
    assert isinstance(errors["accept for fleet"], InvalidCommand)
    assert isinstance(errors["alice accepts her own"], CommandRejected)
    for session_id in ("harbour", "fleet"):
        state = runtime.session(session_id).state
        assert state.chems["k1"].status == "active"
        assert state.chems["k2"].status == "proposed"
        assert runtime.replay(session_id) == state
    denied = [e for e in runtime.history("fleet") if e.type_name == "AccessDenied"]
    assert {e.principal for e in denied} == {MALLORY}


def test_a_chem_step_sent_again_is_stored_once_and_completes_a_half_done_one(
    sides: tuple[EmbeddedNats, Plantangenet],
) -> None:
    server, runtime = sides
    # A step that was stored by the acting side only (say the service died before the relay).
    half = ProposeChem(
        command_id="p4",
        principal=ALICE,
        chem_id="k4",
        peer="fleet",
        proposed_by="harbour",
        terms=TERMS,
    )
    runtime.session("harbour").execute(half)
    assert "k4" not in runtime.session("fleet").state.chems

    async def send_twice() -> list[dict[str, Any]]:
        async with bot(server, "alice") as alice:
            return [
                await alice.propose_chem("harbour", "fleet", "k4", TERMS, command_id="p4")
                for _ in range(2)
            ]

    first, again = run(send_twice())
    assert first["duplicate"] and again["duplicate"]  # the acting side had it already
    for session_id in ("harbour", "fleet"):
        proposals = [
            e.event
            for e in runtime.history(session_id)
            if isinstance(e.event, ChemProposed) and e.event.chem_id == "k4"
        ]
        assert [(p.proposed_by, p.round) for p in proposals] == [("harbour", 1)]


def test_a_query_the_peer_refuses_is_refunded(sides: tuple[EmbeddedNats, Plantangenet]) -> None:
    server, runtime = sides
    balance = runtime.session("fleet").state.balance("bob")

    async def ask() -> Any:
        async with bot(server, "bob") as bob:
            return await bob.query_chem("fleet", "k1", ["ocean.temperature"], 0, 3, "nowhere")

    with pytest.raises(UnknownCompositor):  # the harbour coordinates with no such compositor
        run(ask())
    fleet = runtime.session("fleet").state
    assert fleet.balance("bob") == balance  # charged, then refunded from the treasury
    refunds = [e for e in runtime.history("fleet") if e.type_name == "DustGranted"]
    assert refunds and "refund: k1 refused by harbour" in refunds[-1].event.memo  # type: ignore[attr-defined]
    assert runtime.replay("fleet") == fleet

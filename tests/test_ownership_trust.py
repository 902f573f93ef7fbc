"""Passing requests on between ``serve`` processes, tried by a hostile bot.

A deployment locked down as README says (``plantangenet nats-config``: bots alice and
mallory in accounts of their own), served by two session services that own the
sessions by partition. A request may reach either process; the one that does not
own the session passes it on with the principal the *server* vouched for. Mallory
tries to use that: publish straight onto the passing-on subject, and send requests
carrying the header that names a passed-on request's principal.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest

from plantangenet import (
    AccessRefused,
    EmbeddedNats,
    Plantangenet,
    PlantangenetError,
    TooManyRequests,
)
from plantangenet.cli import main
from plantangenet.events import AccessDenied
from plantangenet.wire.client import BotClient, new_command_id
from plantangenet.wire.protocol import (
    HOPS_HEADER,
    PRINCIPAL_HEADER,
    command_subject,
    decode_reply,
    encode_request,
    forward_subject,
)
from plantangenet.wire.service import SessionService
from tests.conftest import owning_services

PASSWORD = "svc-pw-ownership"
ALICE, MALLORY = "alice@bot-alice", "mallory@bot-mallory"
SESSIONS = [f"al{i}" for i in range(8)]
PARTITIONS = 4
#: Small queues, so that a flood overflows them quickly.
PER_PRINCIPAL, QUEUED_PER_PRINCIPAL = 2, 8


class Deployment:
    def __init__(self, server: EmbeddedNats, services: list[SessionService]) -> None:
        self.server = server
        self.services = services
        self.runtime: Plantangenet = services[0].runtime

    def url(self, user: str, password: str) -> str:
        return f"nats://{user}:{password}@{self.server.host}:{self.server.port}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root: Path = tmp_path_factory.mktemp("ownership-trust")
    conf = root / "nats.conf"
    out = io.StringIO()
    sessions = ",".join(SESSIONS)
    status = main(
        [
            "nats-config",
            "--service-password",
            PASSWORD,
            "--bot",
            f"alice:alice-pw:{sessions}",
            "--bot",
            f"mallory:mallory-pw:{sessions},mallory-own",
            "--out",
            str(conf),
        ],
        out,
    )
    assert status == 0, out.getvalue()
    server = EmbeddedNats(root / "store", extra_args=["-c", str(conf)]).start()
    try:
        url = f"nats://plantangenet:{PASSWORD}@{server.host}:{server.port}"
        with owning_services(
            url,
            partitions=PARTITIONS,
            per_principal=PER_PRINCIPAL,
            queued_per_principal=QUEUED_PER_PRINCIPAL,
        ) as services:
            deployment = Deployment(server, services)
            asyncio.run(_set_up(deployment))
            yield deployment
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def bot(deployment: Deployment, who: str) -> AsyncIterator[BotClient]:
    client = await BotClient.connect(
        deployment.url(who, f"{who}-pw"), agent_id=who, timeout=5, retries=0
    )
    try:
        yield client
    finally:
        await client.close()


async def _set_up(deployment: Deployment) -> None:
    async with bot(deployment, "alice") as alice:
        for sid in SESSIONS:
            await alice.open(sid)
            await alice.attach(sid)


def test_requests_reach_the_owner_from_either_process_and_bots_get_the_reply(
    deployment: Deployment,
) -> None:
    before = sum(s.forwarded for s in deployment.services)

    async def scenario() -> None:
        async with bot(deployment, "alice") as alice:
            for sid in SESSIONS:
                for i in range(3):
                    await alice.change_metadata(sid, {"note": f"n{i}"}, issued_by=None)

    asyncio.run(scenario())
    # Some of 24 requests landed on the process that does not own their session.
    assert sum(s.forwarded for s in deployment.services) > before
    for sid in SESSIONS:
        running = [s for s in deployment.services if s.runtime.running_session(sid)]
        assert len(running) == 1, sid
        assert deployment.runtime.replay(sid).metadata.get("note") == "n2"


def test_a_bot_cannot_publish_onto_the_passing_on_subject(deployment: Deployment) -> None:
    owner = deployment.services[0].ownership
    assert owner is not None
    target = next(s for s in SESSIONS if owner.owner_of(s) == owner.member_id)
    before = deployment.runtime.sessions().get(target, 0)
    payload = encode_request(
        {"changed": {"note": "mallory was here"}}, command_id=new_command_id(), issued_by=None
    )

    async def scenario() -> Exception:
        nc = await nats.connect(deployment.url("mallory", "mallory-pw"), allow_reconnect=False)
        try:
            # "2": what a chem step's second half sent to a gone owner's successor carries.
            for subject, hops in itertools.product(
                (
                    forward_subject(owner.member_id, target, "change_metadata"),
                    forward_subject("*", target, "change_metadata"),
                ),
                ("1", "2"),
            ):
                try:
                    await nc.request(
                        subject,
                        payload,
                        timeout=1,
                        headers={PRINCIPAL_HEADER: ALICE, HOPS_HEADER: hops},
                    )
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
                    error: Exception = exc
                else:
                    raise AssertionError("a bot's request on the passing-on subject was answered")
            return error
        finally:
            await nc.close()

    asyncio.run(scenario())
    assert deployment.runtime.sessions().get(target, 0) == before  # nothing stored


def test_a_bot_cannot_join_the_ownership_or_claim_a_partition(deployment: Deployment) -> None:
    """Mallory writes the lease buckets' keys as a KV put would: a member of her own (a
    live process holding nothing would make the others hand partitions back) and a claim
    on every partition. The buckets are the service account's: nothing changes."""
    ownership = deployment.services[0].ownership
    assert ownership is not None
    owned = [set(s.ownership.owned) for s in deployment.services if s.ownership]
    members = ownership.live_members()

    async def scenario() -> None:
        nc = await nats.connect(deployment.url("mallory", "mallory-pw"), allow_reconnect=False)
        try:
            for _ in range(3):
                await nc.publish(f"$KV.{ownership.members_bucket}.m.mallory-member", b"")
                for partition in range(PARTITIONS):
                    await nc.publish(
                        f"$KV.{ownership.partitions_bucket}.p.{partition}", b"mallory-member"
                    )
                await nc.flush()
                await asyncio.sleep(ownership.lease_ttl / 2)  # the services tick meanwhile
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    asyncio.run(scenario())
    assert ownership.live_members() == members
    assert [set(s.ownership.owned) for s in deployment.services if s.ownership] == owned


def test_a_forged_principal_header_is_ignored_wherever_the_request_lands(
    deployment: Deployment,
) -> None:
    """Mallory names alice in the passed-on request's header on ordinary requests; each
    is decided as hers (refused: she has no standing in alice's sessions), whichever
    process took it and whether or not it was passed on."""
    forwarded = sum(s.forwarded for s in deployment.services)

    async def scenario() -> list[PlantangenetError]:
        refusals: list[PlantangenetError] = []
        nc = await nats.connect(deployment.url("mallory", "mallory-pw"), allow_reconnect=False)
        try:
            for sid, hops in itertools.product(SESSIONS, ("0", "2")):
                payload = encode_request(
                    {"changed": {"note": "forged"}},
                    command_id=new_command_id(),
                    issued_by="alice",
                )
                reply = await nc.request(
                    command_subject(sid, "change_metadata"),
                    payload,
                    timeout=5,
                    headers={PRINCIPAL_HEADER: ALICE, HOPS_HEADER: hops},
                )
                try:
                    decode_reply(reply.data)
                except PlantangenetError as exc:
                    refusals.append(exc)
        finally:
            await nc.close()
        return refusals

    refusals = asyncio.run(scenario())
    assert len(refusals) == 2 * len(SESSIONS)
    assert all(isinstance(r, AccessRefused) for r in refusals), refusals
    assert sum(s.forwarded for s in deployment.services) > forwarded  # some were passed on
    for sid in SESSIONS:
        state = deployment.runtime.replay(sid)
        assert state.metadata.get("note") != "forged"
        denied = [e for e in deployment.runtime.history(sid) if isinstance(e.event, AccessDenied)]
        assert all(e.principal != ALICE for e in denied)
        assert any(e.principal == MALLORY for e in denied), sid


def test_a_flood_through_the_process_that_does_not_own_the_session_is_bounded_there(
    deployment: Deployment,
) -> None:
    """Mallory fires 2,000 ``state`` requests at once at a session the second process
    owns; about half land on the first, which passes them on. It passes on at most as
    many of hers as the owner would hold for her and answers the rest
    ``too_many_requests`` itself; every request is answered, and alice, sending
    commands meanwhile, is served."""
    owner = deployment.services[1]
    assert owner.ownership is not None
    owned = [s for s in SESSIONS if owner.ownership.owner_of(s) == owner.ownership.member_id]
    target, mine = owned[0], owned[1]  # both the second process's
    bound = PER_PRINCIPAL + QUEUED_PER_PRINCIPAL
    for service in deployment.services:
        service.relays_peak = 0
    overflowed = [s.overflowed for s in deployment.services]

    async def flood() -> list[object]:
        nc = await nats.connect(deployment.url("mallory", "mallory-pw"), allow_reconnect=False)
        try:
            payload = encode_request({}, command_id=new_command_id())
            replies = await asyncio.gather(
                *(
                    nc.request(command_subject(target, "state"), payload, timeout=30)
                    for _ in range(2000)
                ),
                return_exceptions=True,
            )
        finally:
            await nc.close()
        outcomes: list[object] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                outcomes.append(reply)
                continue
            try:
                outcomes.append(decode_reply(reply.data))
            except PlantangenetError as exc:
                outcomes.append(exc)
        return outcomes

    async def alice_meanwhile() -> int:
        async with bot(deployment, "alice") as alice:
            for i in range(10):
                await alice.change_metadata(mine, {"during": f"flood-{i}"}, issued_by=None)
        return 10

    async def scenario() -> tuple[list[object], int]:
        return await asyncio.gather(flood(), alice_meanwhile())

    outcomes, served = asyncio.run(scenario())
    assert served == 10
    assert deployment.runtime.replay(mine).metadata.get("during") == "flood-9"
    timeouts = [o for o in outcomes if isinstance(o, nats.errors.TimeoutError)]
    assert not timeouts, f"{len(timeouts)} of mallory's requests went unanswered"
    refused = [o for o in outcomes if isinstance(o, TooManyRequests)]
    assert refused, "a flood of 2,000 at once overflowed no queue"
    first, second = deployment.services
    # The first process passed some of hers on, never more than the bound at a time,
    # and answered the rest itself.
    assert 0 < first.relays_peak <= bound, first.relays_peak
    assert first.overflowed > overflowed[0]
    assert second.relays_peak == 0  # it owns both sessions: nothing to pass on

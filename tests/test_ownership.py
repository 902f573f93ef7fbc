"""One writer per session across ``serve`` processes: partitions owned under KV leases.

Real nats-server, several session services on one stream (each with a runtime of its
own, as separate processes would have): ownership spreads evenly, no partition has two
owners, each session's commands are decided by one process only (the others pass them
on), ownership moves when a service stops or stops renewing, and nothing a bot sends can
make a service trust a principal the server did not vouch for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

import nats
import nats.errors

from plantangenet import EmbeddedNats, JournalConfig, Plantangenet
from plantangenet.events import new_id
from plantangenet.wire.client import BotClient
from plantangenet.wire.ownership import Ownership, partition_of
from plantangenet.wire.service import SessionService
from tests.conftest import LateCreates, wait_until

PARTITIONS = 8
LEASE = 2.0


def owners(services: list[SessionService]) -> dict[int, list[int]]:
    """Per partition, the services (by index) that believe they own it."""
    table: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for i, service in enumerate(services):
        assert service.ownership is not None
        for p in service.ownership.owned:
            table[p].append(i)
    return table


def settled(services: list[SessionService]) -> bool:
    """Every partition owned by exactly one service, and shares even (within one)."""
    table = owners(services)
    if any(len(found) != 1 for found in table.values()):
        return False
    counts = [sum(1 for found in table.values() if found == [i]) for i in range(len(services))]
    return max(counts) - min(counts) <= 1


@contextlib.contextmanager
def services_on(
    make_runtime: Callable[[], Plantangenet], count: int
) -> Iterator[list[SessionService]]:
    started: list[SessionService] = []
    try:
        for _ in range(count):
            service = SessionService(make_runtime(), partitions=PARTITIONS, lease_ttl=LEASE)
            service.runtime.run(service.start())
            started.append(service)
        yield started
    finally:
        for service in started:
            with contextlib.suppress(Exception):
                service.runtime.run(service.stop(timeout=10))


def test_partitions_spread_evenly_with_one_owner_each(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    with services_on(make_runtime, 3) as services:
        wait_until(lambda: settled(services), timeout=30)
        counts = sorted(len(s.ownership.owned) for s in services if s.ownership)
        assert counts == [2, 3, 3]
        members = services[0].ownership.live_members() if services[0].ownership else []
        assert len(members) == 3


def test_a_process_joining_when_every_share_is_full_still_gets_one(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    """8 partitions: four processes hold two each (their full share, ceil(8/5) = 2, once a
    fifth is live); the fifth must still get its least share (floor(8/5) = 1)."""
    with services_on(make_runtime, 4) as services:
        wait_until(lambda: settled(services), timeout=30)
        fifth = SessionService(make_runtime(), partitions=PARTITIONS, lease_ttl=LEASE)
        fifth.runtime.run(fifth.start())
        services.append(fifth)
        wait_until(lambda: settled(services), timeout=30)
        counts = sorted(len(s.ownership.owned) for s in services if s.ownership)
        assert counts == [1, 1, 2, 2, 2]


def test_a_joining_service_gets_its_share_and_a_leaving_one_hands_over(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    with services_on(make_runtime, 1) as services:
        first = services[0].ownership
        assert first is not None and len(first.owned) == PARTITIONS  # alone: all of them
        second = SessionService(make_runtime(), partitions=PARTITIONS, lease_ttl=LEASE)
        second.runtime.run(second.start())
        services.append(second)
        wait_until(lambda: settled(services), timeout=30)
        assert len(first.owned) == len(second.ownership.owned) == 4  # type: ignore[union-attr]
        assert first.released >= 4
        # A graceful stop hands every partition back at once: no lease to wait out.
        second.runtime.run(second.stop(timeout=10))
        services.pop()
        wait_until(lambda: len(first.owned) == PARTITIONS, timeout=LEASE)


def test_an_owner_that_stops_renewing_is_replaced_after_its_lease(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    with services_on(make_runtime, 2) as services:
        wait_until(lambda: settled(services), timeout=30)
        survivor, dying = services[0].ownership, services[1].ownership
        assert survivor is not None and dying is not None

        # As a SIGKILL leaves it: no more renewals, nothing handed back.
        async def die() -> None:
            for task in dying._tasks:
                task.cancel()

        services[1].runtime.run(die())
        wait_until(lambda: len(survivor.owned) == PARTITIONS, timeout=LEASE * 4)
        assert survivor.taken >= PARTITIONS // 2


def test_a_live_owner_that_looks_gone_to_a_lagging_watcher_keeps_its_partitions(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    """A stalled loop or a watcher that stops delivering makes a live member look gone;
    its key is read before its partitions are taken, so nothing moves."""
    with services_on(make_runtime, 2) as services:
        wait_until(lambda: settled(services), timeout=30)
        lagging, live = services[0].ownership, services[1].ownership
        assert lagging is not None and live is not None
        before = (lagging.owned, live.owned, lagging.taken)

        async def stop_seeing_members() -> None:
            lagging._tasks[0].cancel()  # the members watcher: renewals no longer seen

        services[0].runtime.run(stop_seeing_members())
        time.sleep(LEASE * 3)
        assert (lagging.owned, live.owned, lagging.taken) == before
        assert live.lost == 0


def test_a_live_member_that_takes_nothing_does_not_leave_partitions_unowned(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    """A third member renews its lease but never takes a partition (stuck, or broken in
    a way its lease does not show). The others make room for it once; when that room
    stays free for a lease, they count it as absent and own every partition again."""
    with services_on(make_runtime, 2) as services:
        wait_until(lambda: settled(services), timeout=30)
        runtime = make_runtime()
        stuck = Ownership(
            runtime.journal.js,
            runtime.journal_config.stream,
            partitions=PARTITIONS,
            lease_ttl=LEASE,
        )

        async def take_nothing(partition: int) -> None:
            return None

        stuck._take = take_nothing  # type: ignore[method-assign]
        first, second = (s.ownership for s in services)
        assert first is not None and second is not None
        released = first.released + second.released
        runtime.run(stuck.start())
        try:
            # Room is made for it (down to the least share of three: 2 each)...
            wait_until(lambda: first.released + second.released >= released + 4, timeout=LEASE * 4)
            # ... which it never takes: the two own all eight again, and say why.
            wait_until(
                lambda: stuck.member_id in {*first._not_taking, *second._not_taking},
                timeout=LEASE * 4,
            )
            wait_until(lambda: settled(services), timeout=LEASE * 4)
            assert len(first.owned) + len(second.owned) == PARTITIONS
            assert {*first._not_taking, *second._not_taking} == {stuck.member_id}  # only it
            assert stuck.member_id not in first.live_members() + second.live_members()
            assert stuck.owned == frozenset()
            # Once its time is up it is counted again (and the entry goes: none piles up).
            counting = first if stuck.member_id in first._not_taking else second
            counting._not_taking[stuck.member_id] = 0.0
            services[[first, second].index(counting)].runtime.run(counting.tick())
            assert stuck.member_id not in counting._not_taking
            assert stuck.member_id in counting.live_members()
        finally:
            runtime.run(stuck.stop())
            runtime.close()


def test_each_session_is_decided_by_its_owner_only(
    make_runtime: Callable[[], Plantangenet], journal_config: JournalConfig, nats_server: object
) -> None:
    url = getattr(nats_server, "url")  # noqa: B009
    sessions = [f"s{i}" for i in range(24)]
    with services_on(make_runtime, 2) as services:
        wait_until(lambda: settled(services), timeout=30)

        async def scenario() -> None:
            async with await BotClient.connect(
                url, agent_id="a", journal=journal_config, timeout=5
            ) as bot:
                for sid in sessions:
                    await bot.open(sid)
                    await bot.attach(sid)
                    await bot.add_cursor(sid, "c", ["x"], 0, 1, issued_by=None)

        asyncio.run(scenario())
        for sid in sessions:
            owner_index = [
                i
                for i, s in enumerate(services)
                if s.ownership and partition_of(sid, PARTITIONS) in s.ownership.owned
            ]
            running = [i for i, s in enumerate(services) if s.runtime.running_session(sid)]
            assert running == owner_index, sid  # only the owner ever started its actor
        assert sum(s.forwarded for s in services) > 0
        assert sum(s.metrics.conflicts._value.get() for s in services) == 0
        replay = services[0].runtime.replay(sessions[0])
        assert "a" in replay.agents and "c" in replay.cursors


def test_a_lease_bucket_creation_that_times_out_is_asked_again(nats_server: EmbeddedNats) -> None:
    async def scenario() -> tuple[int, set[int]]:
        nc = await nats.connect(nats_server.url)
        try:
            slow = LateCreates(nc.jetstream(), "create_key_value", late=2)
            ownership = Ownership(slow, f"SLOWKV{new_id()[:8]}", partitions=4, lease_ttl=1.0)
            await ownership.start()
            try:
                return slow.creates, set(ownership.owned)
            finally:
                await ownership.stop()
        finally:
            await nc.close()

    creates, owned = asyncio.run(scenario())
    assert creates == 4  # the members bucket after two time-outs, then the partitions bucket
    assert owned == {0, 1, 2, 3}  # alone: every partition

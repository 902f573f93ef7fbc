"""One writer per session across ``serve`` processes: partitions owned under leases in NATS KV.

Every session id hashes into one of ``partitions`` partitions (:func:`partition_of`).
Processes that share a stream agree, through two key-value buckets next to it, which
of them owns which partition; a process serves the commands of the sessions in its
partitions and forwards the others to their owners (see :mod:`plantangenet.wire.service`).

* ``<stream>-members``: one key per process (``m.<member id>``), renewed with
  compare-and-set every ``lease_ttl / 6``. The bucket's TTL is ``lease_ttl``: the
  key of a process that stopped renewing (SIGKILLed, cut off) ages out. A member is
  *live* while its key was renewed within ``lease_ttl`` (as this process saw it).
* ``<stream>-partitions``: one key per partition (``p.<n>``) naming its owner (empty:
  free). Taking a partition is a compare-and-set on the key's revision as this process
  last saw it (or a create), so of two processes that try at once exactly one wins.

Each process aims at its share, ``ceil(partitions / live members)``: below it, it takes
free partitions and partitions whose owner is no longer live (in its own rendezvous
order, so that processes starting together do not race for the same ones); above it
(someone joined), it hands the excess back (its ``on_release`` callback drains them
first). While another live process holds less than ``floor(partitions / live members)``
(it joined when every other one held a full share: 8 partitions, a fifth process), each
aims at that least share instead, handing back what is above it, and takes nothing
more. So every process owns between the floor and the ceiling: ownership spreads evenly
and moves when processes join or leave. A live process that takes none of the room made
for it (stuck, or broken in a way its lease does not show) would hold the others at the
floor and leave partitions unowned: once the same members have had partitions left free
for them for a whole lease, the others count them as absent for ten leases. A SIGKILLed
owner's partitions are taken once its member key is ``lease_ttl`` old, a stopped one's at
once (:meth:`Ownership.stop` frees them). Liveness is what this process's watcher
delivered, so before an owner's partitions are taken its key is read from the bucket: a
stalled loop or a lagging watcher does not make a live owner look gone.

Nothing here is consensus of our own: every decision is one compare-and-set in
JetStream. Nor does correctness rest on it: a process that still writes a session it
no longer owns (paused past its lease, say) is stopped by the journal's optimistic
concurrency guard. Ownership keeps that from happening in steady state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors

from plantangenet.creating import created
from plantangenet.errors import JournalError

__all__ = [
    "DEFAULT_LEASE_TTL",
    "DEFAULT_PARTITIONS",
    "Ownership",
    "partition_of",
]

log = logging.getLogger("plantangenet.wire.ownership")

#: Partitions sessions hash into (``serve --partitions``).
DEFAULT_PARTITIONS = 32
#: Seconds a process's membership lasts without renewal (``serve --lease-ttl``).
DEFAULT_LEASE_TTL = 3.0
_MEMBER = "m."
#: Leases a live member that took no partition left free for it counts as absent.
_NOT_TAKING_LEASES = 10
_PARTITION = "p."


def partition_of(session_id: str, partitions: int) -> int:
    """The partition ``session_id`` belongs to (the same in every process and release)."""
    digest = hashlib.blake2b(session_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def _rank(member: str, partition: int) -> bytes:
    """Rendezvous rank of ``member`` for ``partition`` (lower: it wants it more)."""
    return hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()


def new_member_id() -> str:
    """A member id for this process: its pid and a random part (a subject token)."""
    return f"{os.getpid()}x{secrets.token_hex(4)}"


@dataclass(slots=True)
class _Seen:
    """A key as this process last saw it: its value, revision, and when it arrived."""

    value: str
    revision: int
    at: float


class Ownership:
    """This process's part in owning partitions (see the module docs).

    Runs on the loop that owns ``js``'s connection. ``on_release(partition)`` is
    awaited before a partition is handed back (not when it is lost to another process:
    that one already serves it); ``on_change()`` is called after any change of owner.
    """

    def __init__(
        self,
        js: Any,
        stream: str,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        replicas: int | None = None,
        member_id: str | None = None,
        on_release: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        if type(partitions) is not int or not 1 <= partitions <= 4096:
            raise ValueError(f"partitions: 1 to 4096, got {partitions!r}")
        if not lease_ttl > 0.1:
            raise ValueError(f"lease_ttl: more than 0.1 seconds, got {lease_ttl!r}")
        self.js = js
        self.stream = stream
        self.partitions = partitions
        self.lease_ttl = float(lease_ttl)
        self.replicas = replicas
        self.member_id = member_id or new_member_id()
        self.members_bucket = f"{stream}-members"
        self.partitions_bucket = f"{stream}-partitions"
        self.on_release = on_release
        self._members: dict[str, _Seen] = {}
        self._table: dict[int, _Seen] = {}
        self._own_revision = 0
        self._renewed_at = 0.0
        self._members_kv: Any = None
        self._partitions_kv: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[Any] = []
        self._tick_lock = asyncio.Lock()
        self._releasing: set[int] = set()
        #: Live members found taking nothing, and until when they count as absent.
        self._not_taking: dict[str, float] = {}
        #: The members partitions are left free for, and since when (the same ones).
        self._room_for: frozenset[str] | None = None
        self._room_since = 0.0
        self._stopped = False
        #: Partitions taken, handed back, and lost to another process, since start.
        self.taken = 0
        self.released = 0
        self.lost = 0

    # -- what callers ask ----------------------------------------------------------------

    def partition(self, session_id: str) -> int:
        """The partition of ``session_id``."""
        return partition_of(session_id, self.partitions)

    def owner_of(self, session_id: str) -> str | None:
        """The live member that owns ``session_id``'s partition (``None``: nobody now)."""
        seen = self._table.get(self.partition(session_id))
        if seen is None or not seen.value:
            return None
        return seen.value if self._live(seen.value, time.monotonic()) else None

    def successor(self, session_id: str, gone: str | None = None) -> str | None:
        """The live member (not ``gone``) that would take ``session_id``'s partition first:
        the one whose rendezvous order puts it first (see ``_preference``). Serving a
        session there while its partition has no live owner keeps it to one writer."""
        partition = self.partition(session_id)
        candidates = [m for m in self.live_members() if m != gone]
        if self.member_id != gone and self._live(self.member_id, time.monotonic()):
            candidates.append(self.member_id)
        if not candidates:
            return None
        return min(set(candidates), key=lambda m: _rank(m, partition))

    @property
    def owned(self) -> frozenset[int]:
        """The partitions this process owns now."""
        me = self.member_id
        return frozenset(p for p, seen in self._table.items() if seen.value == me)

    def live_members(self) -> list[str]:
        """The members seen renewing within the lease (this one included once joined),
        but for those found taking nothing (see the module docs)."""
        now = time.monotonic()
        return sorted(m for m in self._members if self._counted(m, now))

    def _counted(self, member: str, now: float) -> bool:
        """Live, and not found taking nothing lately (see the module docs)."""
        return self._live(member, now) and self._not_taking.get(member, 0.0) <= now

    def _live(self, member: str, now: float) -> bool:
        if member == self.member_id:
            return not self._stopped and now - self._renewed_at < self.lease_ttl
        seen = self._members.get(member)
        return seen is not None and now - seen.at < self.lease_ttl

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the buckets, join, see the table, take this process's share, keep at it."""
        self._members_kv = await self._bucket(self.members_bucket, ttl=self.lease_ttl)
        self._partitions_kv = await self._bucket(self.partitions_bucket, ttl=None)
        for kv, apply in (
            (self._members_kv, self._member_seen),
            (self._partitions_kv, self._partition_seen),
        ):
            watcher = await kv.watchall()
            self._watchers.append(watcher)
            first = await watcher.updates(timeout=10.0)
            while first is not None:  # the current values, then None
                apply(first)
                first = await watcher.updates(timeout=10.0)
            self._tasks.append(asyncio.create_task(self._follow(watcher, apply)))
        await self.tick()
        self._tasks.append(asyncio.create_task(self._run()))

    async def stop(self) -> None:
        """Hand every partition back (drained) and leave, so others take them at once."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        async with self._tick_lock:
            for partition in sorted(self.owned):
                await self._release(partition)
            self._stopped = True
            with contextlib.suppress(Exception):
                await self._members_kv.delete(_MEMBER + self.member_id)
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()
        self._watchers = []

    async def _bucket(self, name: str, ttl: float | None) -> Any:
        try:
            return await self.js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            pass
        except nats.errors.Error as exc:
            raise JournalError(f"cannot open {name}: {exc}") from exc
        replicas = self.replicas
        if replicas is None:  # as many as the stream's: a bucket as available as the log
            try:
                replicas = (await self.js.stream_info(self.stream)).config.num_replicas or 1
            except nats.errors.Error:
                replicas = 1
        try:
            return await created(
                lambda: self.js.create_key_value(
                    bucket=name, history=1, ttl=ttl, replicas=replicas
                ),
                name,
            )
        except nats.errors.Error as exc:
            raise JournalError(f"cannot create {name}: {exc}") from exc

    async def _follow(self, watcher: Any, apply: Callable[[Any], None]) -> None:
        async for entry in watcher:
            if entry is not None:
                apply(entry)

    def _member_seen(self, entry: Any) -> None:
        member = entry.key[len(_MEMBER) :]
        if entry.operation is not None:  # deleted (left) or purged
            self._members.pop(member, None)
        else:
            self._members[member] = _Seen(member, entry.revision, time.monotonic())

    def _partition_seen(self, entry: Any) -> None:
        try:
            partition = int(entry.key[len(_PARTITION) :])
        except ValueError:
            return
        value = "" if entry.operation is not None else bytes(entry.value or b"").decode()
        before = self._table.get(partition)
        if before is not None and before.revision > entry.revision:
            return  # this process wrote a later revision already
        self._table[partition] = _Seen(value, entry.revision, time.monotonic())
        if (
            before is not None
            and before.value == self.member_id
            and value != self.member_id
            and partition not in self._releasing
        ):
            self.lost += 1
            log.warning("partition %d moved to %s", partition, value or "nobody")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 6 * (0.8 + 0.4 * secrets.randbelow(1000) / 1000))
            try:
                await self.tick()
            except Exception:  # the next tick tries again; the lease covers a few misses
                log.warning("ownership tick failed", exc_info=True)

    # -- one round ---------------------------------------------------------------------------

    async def tick(self) -> None:
        """Renew this process's membership, then take or hand back partitions to its share."""
        async with self._tick_lock:
            if self._stopped:
                return
            await self._renew()
            now = time.monotonic()
            held = collections.Counter(seen.value for seen in self._table.values())
            for member in [m for m, until in self._not_taking.items() if until <= now]:
                del self._not_taking[member]  # counted again (a process gone stays gone)
            share, least, under = self._shares(now, held)
            room_for = frozenset(under) if under and self._any_free() else None
            if room_for != self._room_for:
                self._room_for, self._room_since = room_for, now
            elif room_for and now - self._room_since > self.lease_ttl:
                # Room made for them stayed free for a whole lease: they take nothing.
                # Counted as absent for a while, so that no partition stays unowned.
                for member in room_for:
                    self._not_taking[member] = now + _NOT_TAKING_LEASES * self.lease_ttl
                    log.warning(
                        "member %s is live but took no partition left free for it; counted "
                        "as absent for %.0f s",
                        member,
                        _NOT_TAKING_LEASES * self.lease_ttl,
                    )
                share, least, under = self._shares(now, held)
            if under:
                # Another live process holds less than its least share (it joined when
                # every other one held its full share): make room down to the least share.
                share = least
            owned = sorted(self.owned, key=self._preference)
            if len(owned) > share:
                for partition in owned[share:]:
                    await self._release(partition)
                return
            wanted = share - len(owned)
            if wanted <= 0:
                return
            free = [
                p
                for p in range(self.partitions)
                if (seen := self._table.get(p)) is None
                or not seen.value
                or (seen.value != self.member_id and not self._live(seen.value, now))
            ]
            gone: dict[str, bool] = {}
            for partition in sorted(free, key=self._preference):
                if wanted <= 0:
                    break
                owner = self._table[partition].value if partition in self._table else ""
                if owner and owner not in gone:
                    gone[owner] = await self._gone(owner)
                if not owner or gone[owner]:
                    await self._take(partition)
                    wanted -= 1

    def _shares(self, now: float, held: collections.Counter[str]) -> tuple[int, int, list[str]]:
        """This process's full and least share among the members counted (live, and not
        found taking nothing), and the others holding less than the least share."""
        live = [m for m in {*self._members, self.member_id} if self._counted(m, now)]
        share = math.ceil(self.partitions / max(len(live), 1))
        least = self.partitions // max(len(live), 1)
        under = [m for m in live if m != self.member_id and held[m] < least]
        return share, least, under

    def _any_free(self) -> bool:
        """Whether a partition is free (handed back, and nobody took it yet)."""
        return any(not seen.value for seen in self._table.values())

    def _preference(self, partition: int) -> bytes:
        """This member's rendezvous order of partitions (its favourites first)."""
        return _rank(self.member_id, partition)

    async def _renew(self) -> None:
        key = _MEMBER + self.member_id
        try:
            if self._own_revision:
                self._own_revision = await self._members_kv.update(
                    key, b"", last=self._own_revision
                )
            else:
                self._own_revision = await self._members_kv.create(key, b"")
        except nats.js.errors.KeyWrongLastSequenceError:
            # Our key aged out (this process stalled past its lease): join again. The
            # partitions it named us for may have been taken meanwhile; the table says.
            log.warning("membership of %s lapsed; joining again", self.member_id)
            self._own_revision = 0
            self._own_revision = await self._members_kv.create(key, b"")
        self._renewed_at = time.monotonic()

    async def _gone(self, member: str) -> bool:
        """Whether ``member`` stopped renewing, asked of the bucket itself.

        This process's view of a member is what its watcher delivered: a stalled loop or
        a lagging watcher makes a live member look gone. Before its partitions are taken,
        its key is read: a revision newer than the one seen means it renewed (seen now).
        """
        seen = self._members.get(member)
        try:
            entry = await self._members_kv.get(_MEMBER + member)
        except nats.js.errors.KeyNotFoundError:  # aged out or deleted: it left
            return True
        if seen is not None and entry.revision <= seen.revision:
            return True
        self._members[member] = _Seen(member, entry.revision, time.monotonic())
        return False

    async def _take(self, partition: int) -> None:
        seen = self._table.get(partition)
        key = f"{_PARTITION}{partition}"
        value = self.member_id.encode()
        try:
            if seen is None:
                revision = await self._partitions_kv.create(key, value)
            else:
                revision = await self._partitions_kv.update(key, value, last=seen.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # another process took it first; the watcher tells us who
        self._table[partition] = _Seen(self.member_id, revision, time.monotonic())
        self.taken += 1
        log.info("took partition %d", partition)

    async def _release(self, partition: int) -> None:
        seen = self._table.get(partition)
        if seen is None or seen.value != self.member_id:
            return
        if self.on_release is not None:
            try:
                await self.on_release(partition)
            except Exception:
                log.warning("draining partition %d failed", partition, exc_info=True)
        self._releasing.add(partition)
        try:
            revision = await self._partitions_kv.update(
                f"{_PARTITION}{partition}", b"", last=seen.revision
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # no longer ours anyway
        finally:
            self._releasing.discard(partition)
        self._table[partition] = _Seen("", revision, time.monotonic())
        self.released += 1
        log.info("handed back partition %d", partition)

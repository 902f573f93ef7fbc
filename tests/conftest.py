"""Shared fixtures: one real nats-server per test run, a fresh stream per test.

A test that needs NATS never skips: if the server cannot start, the fixture
raises and the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import pytest

from plantangenet import (
    EmbeddedNats,
    EmbeddedServerError,
    Journal,
    JournalConfig,
    JournalError,
    Plantangenet,
    SessionHandle,
)
from plantangenet.nats.embedded import LOG_DIR_ENV
from plantangenet.wire.client import BotClient
from plantangenet.wire.service import SessionService

_streams = itertools.count(1)
T = TypeVar("T")


@pytest.fixture(scope="session", autouse=True)
def nats_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tests' nats-server logs go to a folder pytest cleans up, not the shared tmp."""
    folder = tmp_path_factory.mktemp("nats-logs")
    before = os.environ.get(LOG_DIR_ENV)
    os.environ[LOG_DIR_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(LOG_DIR_ENV, None)
    else:
        os.environ[LOG_DIR_ENV] = before


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A real nats-server with JetStream, on a free loopback port, for the whole run."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats-store")).start()
    yield server
    server.stop()


@pytest.fixture
def journal_config() -> JournalConfig:
    """A stream of its own for each test (no test sees another's events, stored or live)."""
    n = next(_streams)
    return JournalConfig(stream=f"T{n}", subject_prefix=f"t{n}.events", live_prefix=f"t{n}.live")


@pytest.fixture
def runtime(nats_server: EmbeddedNats, journal_config: JournalConfig) -> Iterator[Plantangenet]:
    """A started runtime on the shared server, with the test's own stream."""
    pg = Plantangenet.open(nats_url=nats_server.url, journal=journal_config)
    yield pg
    pg.close()


@pytest.fixture
def make_runtime(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> Iterator[Callable[[], Plantangenet]]:
    """Start more runtimes on the same stream (other writers, other processes)."""
    started: list[Plantangenet] = []

    def make() -> Plantangenet:
        pg = Plantangenet.open(nats_url=nats_server.url, journal=journal_config)
        started.append(pg)
        return pg

    yield make
    for pg in started:
        pg.close()


@pytest.fixture
def service(runtime: Plantangenet) -> Iterator[SessionService]:
    """A session service on ``runtime`` (what ``plantangenet serve`` runs), serving."""
    svc = SessionService(runtime, idle_timeout=300)
    runtime.run(svc.start())
    yield svc
    runtime.run(svc.stop(timeout=10))


def with_client(
    url: str, config: JournalConfig, body: Callable[[BotClient], Awaitable[T]], **kw: Any
) -> T:
    """``body(client)`` with a connected :class:`BotClient`, on a fresh event loop."""

    async def scenario() -> T:
        async with await BotClient.connect(url, journal=config, **kw) as client:
            return await body(client)

    return asyncio.run(scenario())


@contextlib.contextmanager
def two_services(make_runtime: Callable[[], Plantangenet]) -> Iterator[list[SessionService]]:
    """Two session services (two runtimes, one queue group) serving the same stream."""
    services = [SessionService(make_runtime()), SessionService(make_runtime())]
    for service in services:
        service.runtime.run(service.start())
    try:
        yield services
    finally:
        for service in services:
            service.runtime.run(service.stop())


@contextlib.contextmanager
def owning_services(
    url: str, count: int = 2, *, partitions: int = 4, runtime_options: Any = None, **options: Any
) -> Iterator[list[SessionService]]:
    """``count`` session services (in this process, each on a runtime of its own) owning
    the sessions by ``partitions``, once each owns its share; stopped at the end."""
    services: list[SessionService] = []
    try:
        for _ in range(count):
            runtime = Plantangenet.open(nats_url=url, **(runtime_options or {}))
            service = SessionService(runtime, partitions=partitions, lease_ttl=2.0, **options)
            services.append(service)
            runtime.run(service.start())
        least, most = partitions // count, -(-partitions // count)

        probes = [f"probe-{i}" for i in range(16 * partitions)]  # every partition, surely

        def spread() -> bool:
            owned = [len(s.ownership.owned) if s.ownership else 0 for s in services]
            if sum(owned) != partitions or not all(least <= n <= most for n in owned):
                return False
            # ... and every service sees the same owner for every partition (until then, a
            # request could be served where it arrives, starting a second actor).
            views = [
                [s.ownership.owner_of(p) if s.ownership else None for p in probes] for s in services
            ]
            return None not in views[0] and all(view == views[0] for view in views)

        # A member found taking nothing is counted absent for 20 s (see ownership): the
        # spread can take that long on a loaded machine.
        wait_until(spread, timeout=40)
        yield services
    finally:
        for service in services:
            with contextlib.suppress(Exception):
                service.runtime.run(service.stop(timeout=10))
            service.runtime.close()


class LateCreates:
    """A JetStream context whose first ``late`` calls of ``method`` (a create) time out,
    the first of them carried out anyway: a busy cluster answering after the request
    gave up. Everything else goes to ``js``."""

    def __init__(self, js: Any, method: str, late: int) -> None:
        self._js, self._method, self.late, self.creates = js, method, late, 0

    def __getattr__(self, name: str) -> Any:
        if name != self._method:
            return getattr(self._js, name)
        create = getattr(self._js, name)

        async def late_create(*args: Any, **kwargs: Any) -> Any:
            self.creates += 1
            if self.creates <= self.late:
                if self.creates == 1:
                    await create(*args, **kwargs)
                raise nats.errors.TimeoutError
            return await create(*args, **kwargs)

        return late_create


class AsyncJournal:
    """Runs journal coroutines on a private loop, for tests of the journal alone."""

    def __init__(self, url: str, config: JournalConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.nc = self.run(nats.connect(url))
        self.journal = Journal(self.nc, config)
        self.run(self.journal.ensure_stream())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.nc.close())
        self.loop.close()


@pytest.fixture
def journal(nats_server: EmbeddedNats, journal_config: JournalConfig) -> Iterator[AsyncJournal]:
    j = AsyncJournal(nats_server.url, journal_config)
    yield j
    j.close()


def log_options(runtime: Plantangenet) -> list[str]:
    """CLI options that point ``plantangenet`` at ``runtime``'s server and stream."""
    config = runtime.journal_config
    return [
        "--nats-url",
        runtime.url,
        "--stream",
        config.stream,
        "--subject-prefix",
        config.subject_prefix,
    ]


def session_with_cursor(
    runtime: Plantangenet, session_id: str = "s1", agent_id: str = "bot", cursor_id: str = "c"
) -> SessionHandle:
    """A started session with one attached agent owning one cursor on axis ``x`` over [0, 1]."""
    session = runtime.session(session_id)
    session.start()
    session.attach(agent_id)
    session.add_cursor(agent_id, cursor_id, ["x"], 0, 1)
    return session


def append_sizes(runtime: Plantangenet) -> list[int]:
    """A list that gets the event count of every append ``runtime``'s journal makes from now on."""
    sizes: list[int] = []
    append = runtime.journal.append_payloads

    async def counted(session_id: str, envelopes: Any, payloads: Any, **kwargs: Any) -> Any:
        sizes.append(len(envelopes))
        return await append(session_id, envelopes, payloads, **kwargs)

    runtime.journal.append_payloads = counted  # type: ignore[method-assign]
    return sizes


#: What a probe of a cluster may raise while it is not ready yet (``eventually`` retries).
NOT_YET = (KeyError, EmbeddedServerError, JournalError, nats.errors.Error)


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """``probe()``'s first answer that is not ``None`` (raising ``NOT_YET`` counts as none);
    fail the test after ``timeout`` seconds, naming ``what`` and the last error."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except NOT_YET as exc:
            result, last = None, exc
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        time.sleep(0.02)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within timeout")
        time.sleep(0.01)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"

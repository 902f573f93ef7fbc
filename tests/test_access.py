"""The generated nats-server config, enforced by a real nats-server.

One server runs for the module, started with ``-c`` and the config from
:func:`plantangenet.access.server_config`. The service user runs a
plantangenet runtime (sessions ``A`` and ``B``, and a bigger session ``big``);
bots connect with their own users and inboxes. What a bot may not do is shown
by what the server says: nats-py hands ``-ERR 'Permissions Violation ...'``
(lower-cased) to the connection's error callback, asynchronously, and the
request or JetStream call that caused it times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import json
import os
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

import plantangenet.access
from plantangenet import (
    AgentAttached,
    EmbeddedNats,
    EmbeddedServerError,
    Envelope,
    Journal,
    JournalConfig,
    JournalError,
    Plantangenet,
    PlantangenetError,
)
from plantangenet.access import (
    BotAccess,
    InvalidAccessConfig,
    bot_permissions,
    inbox_prefix,
    server_config,
    write_config,
)
from plantangenet.embedded import find_nats_server_binary
from plantangenet.events import new_id, utc_now

STREAM = "PLANTANGENET"
# Characters that matter to the config parser ($ variables, quotes, braces, comments)
# and to URLs (the service connects with a URL: no '/', '#', '?', '%', '[' or ']').
SERVICE_PASSWORD = "s3rv1ce$pw{x}':@;"
ALICE_PASSWORD = "al1ce#pw/$HOME//x=1,"
BIG_EVENTS = 1000  # about 2 MB: the server asks for flow control after about 0.8 MB


@dataclass
class Deployment:
    server: EmbeddedNats
    runtime: Plantangenet
    store: Path
    conf: str

    @property
    def url(self) -> str:
        return self.server.url

    def stream_messages(self) -> int:
        info = self.runtime.run(self.runtime.journal.js.stream_info(STREAM), timeout=10)
        return int(info.state.messages)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("access")
    store = root / "store"
    conf = server_config(
        service_user="service",
        service_password=SERVICE_PASSWORD,
        bots=[
            BotAccess("alice", ALICE_PASSWORD, ("A", "big")),
            BotAccess("bob", "bob-pw", ("B",)),
            BotAccess("carol", "carol-pw", ("big",)),
        ],
        system_account=True,
    )
    # carol gets alice's rights minus flow control, to show that it is needed.
    head, carol = conf.split('user: "carol"')
    fc = f', "$JS.FC.{STREAM}.>"'
    assert carol.count(fc) == 1
    conf = head + 'user: "carol"' + carol.replace(fc, "", 1)
    path = root / "nats.conf"
    path.write_text(conf)
    server = EmbeddedNats(store, extra_args=["-c", str(path)]).start()
    try:
        url = f"nats://service:{SERVICE_PASSWORD}@{server.host}:{server.port}"
        runtime = Plantangenet.open(nats_url=url, journal=JournalConfig())
        try:
            runtime.session("A").start({"purpose": "a"})
            runtime.session("A").attach("probe", kind="bot", name="Probe")
            runtime.session("B").start({"purpose": "b"})
            now = utc_now()
            name = "n" * 2000
            big = [
                Envelope(AgentAttached(f"a{i}", "bot", name), "big", new_id(), "c", "c", now)
                for i in range(BIG_EVENTS)
            ]
            runtime.run(runtime.journal.append("big", big, expected_sequence=0), timeout=30)
            yield Deployment(server, runtime, store, conf)
        finally:
            runtime.close()
    finally:
        server.stop()


# -- helpers --------------------------------------------------------------------------


class Bot:
    """A bot's connection and the errors the server sent it (lower-cased, as nats-py does)."""

    def __init__(self, nc: Any, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors
        self.journal = Journal(nc, JournalConfig(leader_reads=False))  # bots: per-session rights
        self.journal.js = nc.jetstream(timeout=1.0)  # refused API calls time out quickly

    async def violation(
        self, subject: str, kind: str = "publish", *, prefix: bool = False, timeout: float = 5.0
    ) -> str:
        """Wait for the server's permission error about ``subject`` (or a subject
        starting with it, with ``prefix``); return it."""
        kinds = {"publish": "publish to", "subscribe": "subscription to"}
        needle = f'permissions violation for {kinds[kind]} "{subject.lower()}'
        if not prefix:
            needle += '"'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for error in self.errors:
                if needle in error:
                    return error
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {needle!r} within {timeout}s; errors: {self.errors}")

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e]


@contextlib.asynccontextmanager
async def connect_bot(
    url: str, user: str, password: str, *, use_inbox_prefix: bool = True
) -> AsyncIterator[Bot]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(user)} if use_inbox_prefix else {}
    nc = await nats.connect(
        url, user=user, password=password, error_cb=on_error, allow_reconnect=False, **options
    )
    try:
        yield Bot(nc, errors)
    finally:
        await nc.close()


def alice(deployment: Deployment, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[Bot]:
    return connect_bot(deployment.url, "alice", ALICE_PASSWORD, **kwargs)


async def consumer_create(nc: Any, subject: str, **config: Any) -> dict[str, Any]:
    """A raw $JS.API.CONSUMER.CREATE request (what nats-py sends for a named consumer)."""
    body = {"stream_name": STREAM, "config": ConsumerConfig(**config).as_dict()}
    reply = await nc.request(subject, json.dumps(body).encode(), timeout=2)
    result: dict[str, Any] = json.loads(reply.data)
    return result


# -- the server and the service ---------------------------------------------------------


def test_server_runs_the_config_with_the_agreed_store(deployment: Deployment) -> None:
    log = deployment.server.log_path.read_text()
    assert "Using configuration file" in log
    # The store comes from EmbeddedNats' -sd; the config leaves it alone.
    assert f'Store Directory: "{deployment.store / "jetstream"}"' in log
    assert "store_dir" not in deployment.conf
    # The service user did everything the runtime needs: stream, appends, replay.
    assert deployment.runtime.sessions() == {"A": 2, "B": 1, "big": BIG_EVENTS}
    assert deployment.runtime.replay("A").event_count == 2


def test_unknown_users_and_wrong_passwords_are_refused(deployment: Deployment) -> None:
    async def attempt(**credentials: str) -> None:
        nc = await nats.connect(
            deployment.url, allow_reconnect=False, max_reconnect_attempts=0, **credentials
        )
        await nc.close()

    for credentials in (
        {},
        {"user": "alice", "password": "wrong"},
        {"user": "eve", "password": "x"},
    ):
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            asyncio.run(attempt(**credentials))


def test_system_account_user_reaches_the_system_account(deployment: Deployment) -> None:
    async def ping() -> dict[str, Any]:
        nc = await nats.connect(
            deployment.url, user="service-sys", password=SERVICE_PASSWORD, allow_reconnect=False
        )
        try:
            reply = await nc.request("$SYS.REQ.SERVER.PING", b"", timeout=5)
        finally:
            await nc.close()
        result: dict[str, Any] = json.loads(reply.data)
        return result

    assert asyncio.run(ping())["server"]["name"] == f"plantangenet-{deployment.server.port}"


# -- what a bot may do -------------------------------------------------------------------


def test_bot_reads_its_sessions(deployment: Deployment) -> None:
    async def scenario() -> tuple[list[Envelope], int, int, list[str]]:
        async with alice(deployment) as bot:
            events = [e async for e in bot.journal.read("A")]
            last = await bot.journal.last_sequence("A")
            # More than the flow control window: the consumer must answer $JS.FC.
            big = 0
            async for _ in bot.journal.read("big"):
                big += 1
            await bot.nc.flush()
            return events, last, big, bot.violations()

    events, last, big, violations = asyncio.run(scenario())
    assert events == deployment.runtime.history("A")
    assert [type(e.event).__name__ for e in events] == ["SessionStarted", "AgentAttached"]
    assert last == events[-1].sequence
    assert big == BIG_EVENTS
    assert violations == []


def test_another_bot_reads_its_own_session(deployment: Deployment) -> None:
    async def scenario() -> list[Envelope]:
        async with connect_bot(deployment.url, "bob", "bob-pw") as bot:
            return [e async for e in bot.journal.read("B")]

    assert asyncio.run(scenario()) == deployment.runtime.history("B")


def test_bot_reads_need_flow_control(deployment: Deployment) -> None:
    # carol has alice's read rights for "big", except $JS.FC: the server asks for flow
    # control during the replay and refuses her answer.
    async def scenario() -> str:
        async with connect_bot(deployment.url, "carol", "carol-pw") as bot:

            async def replay() -> None:
                async for _ in bot.journal.read("big"):
                    pass

            task = asyncio.create_task(replay())
            try:
                return await bot.violation(f"$JS.FC.{STREAM}.", prefix=True, timeout=10)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, JournalError):
                    await task

    assert f"$js.fc.{STREAM.lower()}." in asyncio.run(scenario())


def test_bot_commands_its_sessions(deployment: Deployment) -> None:
    async def scenario() -> list[str]:
        async with alice(deployment) as bot:
            # Allowed: the request reaches the server, which says nobody serves it yet.
            with pytest.raises(nats.errors.NoRespondersError):
                await bot.nc.request("plantangenet.cmd.A.state", b"", timeout=2)
            with pytest.raises(nats.errors.NoRespondersError):
                await bot.nc.request("plantangenet.cmd.big.attach", b"", timeout=2)
            with pytest.raises(nats.errors.NoRespondersError):  # batches: same sessions only
                await bot.nc.request("plantangenet.cmd.A.batch", b"", timeout=2)
            await bot.nc.flush()
            return bot.violations()

    assert asyncio.run(scenario()) == []


# -- what a bot may not do -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["start", "batch"])
def test_bot_cannot_command_other_sessions(deployment: Deployment, name: str) -> None:
    subject = f"plantangenet.cmd.B.{name}"

    async def scenario() -> str:
        async with alice(deployment) as bot:
            with pytest.raises(nats.errors.TimeoutError):
                await bot.nc.request(subject, b"", timeout=0.5)
            return await bot.violation(subject)

    error = asyncio.run(scenario())
    assert error == f'nats: permissions violation for publish to "{subject.lower()}"'


def test_bot_cannot_read_other_sessions(deployment: Deployment) -> None:
    async def scenario() -> list[str]:
        async with alice(deployment) as bot:
            with pytest.raises(JournalError, match="cannot read B"):
                await bot.journal.last_sequence("B")
            with pytest.raises(JournalError, match="cannot read B"):
                [e async for e in bot.journal.read("B")]
            # Past the last-sequence check, straight to the consumer.
            with pytest.raises(JournalError, match="cannot read B"):
                async for _ in bot.journal.tail("B", from_sequence=1):
                    pass
            return [
                await bot.violation(f"$JS.API.DIRECT.GET.{STREAM}.plantangenet.events.B"),
                await bot.violation(f"$JS.API.CONSUMER.CREATE.{STREAM}.", prefix=True),
            ]

    direct, create = asyncio.run(scenario())
    assert direct.endswith('"$js.api.direct.get.plantangenet.plantangenet.events.b"')
    assert create.endswith('.plantangenet.events.b"')


def test_bot_cannot_widen_a_permitted_consumer(deployment: Deployment) -> None:
    # The create subject names session A; the server checks the config against it.
    async def scenario() -> list[dict[str, Any]]:
        async with alice(deployment) as bot:
            replies = []
            for config in (
                {"filter_subject": "plantangenet.events.B"},
                {"filter_subjects": ["plantangenet.events.A", "plantangenet.events.B"]},
                {"filter_subject": "plantangenet.events.>"},
            ):
                name = new_id()
                subject = f"$JS.API.CONSUMER.CREATE.{STREAM}.{name}.plantangenet.events.A"
                reply = await consumer_create(
                    bot.nc,
                    subject,
                    name=name,
                    deliver_subject=bot.nc.new_inbox(),
                    ack_policy=AckPolicy.NONE,
                    **config,
                )
                replies.append(reply["error"])
            return replies

    codes = [error["err_code"] for error in asyncio.run(scenario())]
    assert codes == [10131, 10137, 10131]


def test_bot_cannot_forge_events(deployment: Deployment) -> None:
    before = deployment.stream_messages()

    async def scenario() -> list[str]:
        async with alice(deployment) as bot:
            await bot.nc.publish("plantangenet.events.A", b"forged")
            await bot.nc.publish("plantangenet.events.B", b"forged")
            with pytest.raises(nats.errors.TimeoutError):
                await bot.journal.js.publish("plantangenet.events.A", b"forged", timeout=0.5)
            await bot.nc.flush()
            return [
                await bot.violation("plantangenet.events.A"),
                await bot.violation("plantangenet.events.B"),
            ]

    assert len(asyncio.run(scenario())) == 2
    assert deployment.stream_messages() == before
    assert [e.sequence for e in deployment.runtime.history("A")] == [1, 2]


def test_bot_cannot_snoop(deployment: Deployment) -> None:
    async def scenario() -> list[str]:
        async with alice(deployment) as bot:
            for subject in ("_INBOX_bob.>", "_INBOX.>", "plantangenet.events.>", "plantangenet.>"):
                await bot.nc.subscribe(subject)
            await bot.nc.flush()
            return [
                await bot.violation(subject, "subscribe")
                for subject in (
                    "_INBOX_bob.>",
                    "_INBOX.>",
                    "plantangenet.events.>",
                    "plantangenet.>",
                )
            ]

    assert len(asyncio.run(scenario())) == 4


def test_bot_without_its_inbox_prefix_gets_no_replies(deployment: Deployment) -> None:
    async def scenario() -> str:
        async with alice(deployment, use_inbox_prefix=False) as bot:
            with pytest.raises(nats.errors.TimeoutError):
                await bot.nc.request("plantangenet.cmd.A.state", b"", timeout=0.5)
            return await bot.violation("_INBOX.", "subscribe", prefix=True)

    assert asyncio.run(scenario()).startswith(
        'nats: permissions violation for subscription to "_inbox.'
    )


@pytest.mark.parametrize(
    "subject",
    [
        f"$JS.API.STREAM.INFO.{STREAM}",
        f"$JS.API.STREAM.MSG.GET.{STREAM}",
        f"$JS.API.STREAM.MSG.DELETE.{STREAM}",
        f"$JS.API.STREAM.PURGE.{STREAM}",
        f"$JS.API.STREAM.DELETE.{STREAM}",
        f"$JS.API.STREAM.UPDATE.{STREAM}",
        "$JS.API.STREAM.LIST",
        f"$JS.API.DIRECT.GET.{STREAM}",
        f"$JS.API.CONSUMER.CREATE.{STREAM}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.mine",
        f"$JS.API.CONSUMER.LIST.{STREAM}",
        f"$JS.API.CONSUMER.DELETE.{STREAM}.someone",
        "$JS.API.INFO",
    ],
)
def test_bot_cannot_use_the_rest_of_the_jetstream_api(deployment: Deployment, subject: str) -> None:
    async def scenario() -> str:
        async with alice(deployment) as bot:
            await bot.nc.publish(subject, b'{"seq": 1}', reply=bot.nc.new_inbox())
            await bot.nc.flush()
            return await bot.violation(subject)

    assert asyncio.run(scenario()).endswith(f'"{subject.lower()}"')
    assert deployment.stream_messages() == 2 + 1 + BIG_EVENTS


# -- the config itself ------------------------------------------------------------------------


def test_default_config_lets_the_command_line_choose_the_store(tmp_path: Path) -> None:
    conf = server_config(
        service_user="svc", service_password="pw", bots=[BotAccess("bob", "bpw", ("s1",))]
    )
    assert "jetstream {}" in conf and "store_dir" not in conf and "system_account" not in conf
    path = write_config(
        tmp_path / "nats.conf",
        service_user="svc",
        service_password="pw",
        bots=[BotAccess("bob", "bpw", ("s1",))],
    )
    assert path.read_text() == conf

    async def scenario(url: str) -> list[Envelope]:
        svc = await nats.connect(url, user="svc", password="pw")
        try:
            journal = Journal(svc, JournalConfig())
            await journal.ensure_stream()
            event = AgentAttached("x", "bot", "X")
            await journal.append(
                "s1", [Envelope(event, "s1", new_id(), "c", "c", utc_now())], expected_sequence=0
            )
        finally:
            await svc.close()
        async with connect_bot(url, "bob", "bpw") as bot:
            return [e async for e in bot.journal.read("s1")]

    with EmbeddedNats(tmp_path / "store", extra_args=["-c", str(path)]) as server:
        events = asyncio.run(scenario(server.url))
    assert [e.sequence for e in events] == [1]
    assert (tmp_path / "store" / "jetstream").is_dir()


def test_write_config_is_private_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "nats.conf"
    target.write_text("old")
    os.chmod(target, 0o644)
    kwargs: dict[str, Any] = {"service_user": "svc", "service_password": "pw", "bots": []}
    assert write_config(target, **kwargs) == target
    assert target.read_text() == server_config(**kwargs)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nats.conf"]
    with pytest.raises(InvalidAccessConfig):
        write_config(target, **{**kwargs, "service_user": "bad user"})
    assert target.read_text() == server_config(**kwargs)


def test_bot_permissions_follow_the_prefixes() -> None:
    perms = bot_permissions(
        BotAccess("b1", "pw", ("s1", "s2")), stream="LOG", event_prefix="ev", command_prefix="cmd"
    )
    assert perms == {
        "publish": {
            "allow": [
                "cmd.s1.*",
                "cmd.s2.*",
                "$JS.API.CONSUMER.CREATE.LOG.*.ev.s1",
                "$JS.API.CONSUMER.CREATE.LOG.*.ev.s2",
                "$JS.API.DIRECT.GET.LOG.ev.s1",
                "$JS.API.DIRECT.GET.LOG.ev.s2",
                "$JS.FC.LOG.>",
                "$JS.ACK.LOG.>",
            ],
            "deny": ["ev.>"],
        },
        "subscribe": {"allow": ["_INBOX_b1.>"], "deny": ["ev.>", "cmd.>"]},
    }
    assert inbox_prefix("b1") == "_INBOX_b1"


def ok_kwargs(**changes: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "service_user": "svc",
        "service_password": "pw",
        "bots": [BotAccess("b1", "pw1", ("s1",))],
    }
    kwargs.update(changes)
    return kwargs


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"service_user": ""}, "service user name"),
        ({"service_user": "a.b"}, "service user name"),
        ({"service_user": "a b"}, "service user name"),
        ({"service_user": "x" * 65}, "service user name"),
        ({"service_password": ""}, "password of user 'svc'"),
        ({"service_password": 'a"b'}, "password of user 'svc'"),
        ({"service_password": "a\\b"}, "password of user 'svc'"),
        ({"service_password": "a b"}, "password of user 'svc'"),
        ({"service_password": "pässword"}, "password of user 'svc'"),
        ({"account": "A.B"}, "account name"),
        ({"stream": "S*"}, "stream name"),
        ({"event_prefix": "ev.>"}, "event subject prefix"),
        ({"event_prefix": "ev..x"}, "event subject prefix"),
        ({"command_prefix": ""}, "command subject prefix"),
        ({"command_prefix": "_INBOX_x.cmd"}, "collides with reply inboxes"),
        ({"event_prefix": "plantangenet.cmd.x"}, "overlap"),
        ({"event_prefix": "plantangenet"}, "overlap"),
        ({"bots": [BotAccess("b.1", "pw", ("s1",))]}, "user name"),
        (
            {"bots": [BotAccess("_", "pw", ("s1",)), BotAccess("_", "pw", ("s2",))]},
            "more than once",
        ),
        ({"bots": [BotAccess("svc", "pw", ("s1",))]}, "more than once"),
        ({"bots": [BotAccess("b1", "p w", ("s1",))]}, "password of user 'b1'"),
        ({"bots": [BotAccess("b1", "pw", ())]}, "has no sessions"),
        ({"bots": [BotAccess("b1", "pw", "s1")]}, "must be a tuple"),  # type: ignore[arg-type]
        ({"bots": [BotAccess("b1", "pw", ("s1", "s1"))]}, "twice"),
        ({"bots": [BotAccess("b1", "pw", ("s.1",))]}, "session id of bot 'b1'"),
        ({"bots": [BotAccess("b1", "pw", ("*",))]}, "session id of bot 'b1'"),
        ({"bots": [BotAccess("b1", "pw", (">",))]}, "session id of bot 'b1'"),
        ({"bots": [BotAccess("b1", "pw", ("x" * 129,))]}, "session id of bot 'b1'"),
        ({"bots": [BotAccess("b1", "pw", (1,))]}, "session id of bot 'b1'"),  # type: ignore[arg-type]
        ({"bots": BotAccess("b1", "pw", ("s1",))}, "sequence of BotAccess"),
        ({"bots": [("b1", "pw", ("s1",))]}, "BotAccess instances"),
        ({"system_account": True, "account": "SYS"}, "cannot be named"),
        ({"system_account": True, "bots": [BotAccess("svc-sys", "pw", ("s1",))]}, "more than once"),
        ({"store_dir": 'a"b'}, "store_dir cannot be quoted"),
        ({"store_dir": "a\nb"}, "store_dir cannot be quoted"),
    ],
)
def test_server_config_refuses_unsafe_input(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidAccessConfig, match=message) as info:
        server_config(**ok_kwargs(**changes))
    assert isinstance(info.value, PlantangenetError)
    assert info.value.code == "invalid_access_config"


def test_refused_passwords_are_not_echoed() -> None:
    with pytest.raises(InvalidAccessConfig) as info:
        server_config(**ok_kwargs(service_password="top secret"))
    assert "top secret" not in str(info.value)
    with pytest.raises(InvalidAccessConfig):
        inbox_prefix("a.b")


def test_module_doctest() -> None:
    assert doctest.testmod(plantangenet.access).failed == 0


def test_store_dir_in_the_config(tmp_path: Path) -> None:
    store = tmp_path / "my store"
    path = write_config(tmp_path / "nats.conf", **ok_kwargs(store_dir=store, system_account=True))
    text = path.read_text()
    assert f'jetstream {{\n  store_dir: "{store}"\n}}' in text
    assert "system_account: SYS" in text
    binary = str(find_nats_server_binary())
    checked = subprocess.run(
        [binary, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr
    assert "is valid" in checked.stdout + checked.stderr
    # ...but not together with -sd (EmbeddedNats passes it): keep store_dir=None there.
    with pytest.raises(EmbeddedServerError, match="Duplicate 'store_dir'"):
        EmbeddedNats(store, extra_args=["-c", str(path)]).start()

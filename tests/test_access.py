"""The generated nats-server config, enforced by a real nats-server.

One server runs for the module, started with ``-c`` and the config from
:func:`plantangenet.wire.access.server_config`: the service account (its user runs a
plantangenet runtime, which creates the event stream) and one account per bot.
Both sides use raw nats-py: a responder in the service account, subscribed on
``plantangenet.cmd.*.*``, answers each request with what it received (subject,
reply subject, headers), so the tests see what the service would see.

``mallory``'s user permissions are widened to ``>`` by hand, so what she cannot
do shows what the accounts alone enforce. What the user permissions refuse is
shown by what the server says: nats-py hands ``-ERR 'Permissions Violation
...'`` (lower-cased) to the connection's error callback, asynchronously, and
the request that caused it times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import io
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js.api import RePublish, StorageType, StreamConfig

import plantangenet.wire.access
from plantangenet import (
    EmbeddedNats,
    EmbeddedServerError,
    JournalConfig,
    JournalError,
    Plantangenet,
    PlantangenetError,
)
from plantangenet.cli import main
from plantangenet.nats.embedded import find_nats_server_binary
from plantangenet.wire.access import (
    DEFAULT_BOT_MAX_CONSUMERS,
    DEFAULT_BOT_MAX_MEMORY,
    DEFAULT_BOT_MAX_STORAGE,
    DEFAULT_BOT_MAX_STREAMS,
    REQUEST_INFO_HEADER,
    BotAccess,
    InvalidAccessConfig,
    bot_account,
    bot_limits,
    bot_permissions,
    inbox_prefix,
    parse_size,
    principal_from_headers,
    principal_from_request_info,
    server_config,
    write_config,
)
from plantangenet.wire.client import BotClient

STREAM = "PLANTANGENET"
# Characters that matter to the config parser ($ variables, quotes, braces, comments)
# and to URLs (the service connects with a URL: no '/', '#', '?', '%', '[' or ']').
SERVICE_PASSWORD = "s3rv1ce$pw{x}':@;"
ALICE_PASSWORD = "al1ce#pw/$HOME//x=1,"
PASSWORDS = {
    "alice": ALICE_PASSWORD,
    "bob": "bob-pw",
    "dave": "dave-pw",
    "mallory": "mallory-pw",
}
DAVE_STORAGE = 8192
BOTS = [
    BotAccess("alice", ALICE_PASSWORD, ("A", "C")),
    BotAccess("bob", "bob-pw", ("B",)),
    BotAccess(
        "dave",
        "dave-pw",
        ("D",),
        max_consumers=2,
        max_streams=1,
        max_storage=DAVE_STORAGE,
        max_memory=0,
    ),
    BotAccess("mallory", "mallory-pw", ("M",), account="mallory-corp"),
]


@dataclass
class Deployment:
    server: EmbeddedNats
    runtime: Plantangenet
    store: Path
    conf: str

    @property
    def url(self) -> str:
        return self.server.url

    def stream_state(self) -> tuple[int, int]:
        """(messages, consumers) of the service's event stream."""
        info = self.runtime.run(self.runtime.journal.js.stream_info(STREAM), timeout=10)
        return int(info.state.messages), int(info.state.consumer_count)


def widen(conf: str, user: str) -> str:
    """``conf`` with ``user``'s publish and subscribe permissions widened to ``>``."""
    head, sep, tail = conf.partition(f'user: "{user}"')
    assert sep
    for direction in ("publish", "subscribe"):
        pattern = rf"{direction}: \{{allow: \[[^\]]*\]\}}"
        tail, n = re.subn(pattern, f'{direction}: {{allow: [">"]}}', tail, count=1)
        assert n == 1
    return head + sep + tail


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("access")
    store = root / "store"
    conf = server_config(
        service_user="service",
        service_password=SERVICE_PASSWORD,
        bots=BOTS,
        system_account=True,
    )
    conf = widen(conf, "mallory")
    path = root / "nats.conf"
    path.write_text(conf)
    server = EmbeddedNats(store, extra_args=["-c", str(path)]).start()
    try:
        url = f"nats://service:{SERVICE_PASSWORD}@{server.host}:{server.port}"
        runtime = Plantangenet.open(nats_url=url, journal=JournalConfig())
        try:
            for session in ("A", "B"):
                publish = runtime.journal.js.publish(f"plantangenet.events.{session}", b"{}")
                runtime.run(publish, timeout=10)
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

    async def violation(self, subject: str, kind: str = "publish", *, timeout: float = 5.0) -> str:
        """Wait for the server's permission error about ``subject``; return it."""
        kinds = {"publish": "publish to", "subscribe": "subscription to"}
        needle = f'permissions violation for {kinds[kind]} "{subject.lower()}"'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for error in self.errors:
                if needle in error:
                    return error
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {needle!r} within {timeout}s; errors: {self.errors}")

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e]

    async def api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A raw JetStream API request; the decoded reply."""
        payload = b"" if body is None else json.dumps(body).encode()
        reply = await self.nc.request(subject, payload, timeout=2)
        result: dict[str, Any] = json.loads(reply.data)
        return result


@contextlib.asynccontextmanager
async def connect_bot(url: str, user: str, **options: Any) -> AsyncIterator[Bot]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        url,
        user=user,
        password=PASSWORDS[user],
        error_cb=on_error,
        allow_reconnect=False,
        **options,
    )
    try:
        yield Bot(nc, errors)
    finally:
        await nc.close()


@dataclass
class Service:
    """The responder in the service account, and the requests it answered."""

    nc: Any
    seen: list[Any] = field(default_factory=list)

    async def publish(self, subject: str, data: bytes = b"") -> None:
        await self.nc.publish(subject, data)
        await self.nc.flush()


@contextlib.asynccontextmanager
async def service(url: str) -> AsyncIterator[Service]:
    nc = await nats.connect(url, user="service", password=SERVICE_PASSWORD, allow_reconnect=False)
    responder = Service(nc)

    async def answer(msg: Any) -> None:
        responder.seen.append(msg)
        if not msg.reply:  # not a request
            return
        echo = {"subject": msg.subject, "reply": msg.reply, "headers": msg.headers or {}}
        await nc.publish(msg.reply, json.dumps(echo).encode())

    await nc.subscribe("plantangenet.cmd.>", cb=answer)
    await nc.flush()
    try:
        yield responder
    finally:
        await nc.close()


async def ask(bot: Bot, subject: str, **kwargs: Any) -> dict[str, Any]:
    """``bot``'s request on ``subject``, answered by the responder: what it received."""
    reply = await bot.nc.request(subject, b"{}", timeout=2, **kwargs)
    echo: dict[str, Any] = json.loads(reply.data)
    return echo


def request_info(echo: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(echo["headers"][REQUEST_INFO_HEADER])
    return info


async def collect(nc: Any, subject: str) -> tuple[Any, list[Any]]:
    received: list[Any] = []

    async def keep(msg: Any) -> None:
        received.append(msg)

    sub = await nc.subscribe(subject, cb=keep)
    await nc.flush()
    return sub, received


async def until(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# -- the server and the service ---------------------------------------------------------


def test_server_runs_the_config_with_the_agreed_store(deployment: Deployment) -> None:
    log = deployment.server.log_path.read_text()
    assert "Using configuration file" in log
    # The store comes from EmbeddedNats' -sd; the config leaves it alone.
    assert f'Store Directory: "{deployment.store / "jetstream"}"' in log
    assert "store_dir" not in deployment.conf
    # The service user created the stream in the service account and appended to it.
    messages, consumers = deployment.stream_state()
    assert messages >= 2 and consumers == 0


def test_unknown_users_and_wrong_passwords_are_refused(deployment: Deployment) -> None:
    async def attempt(**credentials: str) -> None:
        nc = await nats.connect(
            deployment.url, allow_reconnect=False, max_reconnect_attempts=0, **credentials
        )
        await nc.close()

    for credentials in (
        {},
        {"user": "alice", "password": "wrong"},
        {"user": "alice", "password": "bob-pw"},
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


# -- commands: identity from the account -----------------------------------------------------


@pytest.mark.parametrize("compat_inbox", [False, True])
def test_bot_request_carries_its_account_and_user(
    deployment: Deployment, compat_inbox: bool
) -> None:
    # With nats-py's default inbox, and with the _INBOX_<user> older clients use.
    options = {"inbox_prefix": inbox_prefix("alice")} if compat_inbox else {}

    async def scenario() -> tuple[list[dict[str, Any]], list[str]]:
        async with (
            service(deployment.url) as svc,
            connect_bot(deployment.url, "alice", **options) as bot,
        ):
            echoes = [
                await ask(bot, "plantangenet.cmd.A.state"),
                await ask(bot, "plantangenet.cmd.C.attach"),
            ]
            assert [m.subject for m in svc.seen] == [e["subject"] for e in echoes]
            assert all(principal_from_headers(m.headers) == "alice@bot-alice" for m in svc.seen)
            await bot.nc.flush()
            return echoes, bot.violations()

    echoes, violations = asyncio.run(scenario())
    # The import maps the bot's subject onto its ingress lane and account (lane 0: the
    # first bot of the config), whose token the server checks.
    assert [e["subject"] for e in echoes] == [
        "plantangenet.cmd.0.bot-alice.A.state",
        "plantangenet.cmd.0.bot-alice.C.attach",
    ]
    for echo in echoes:
        # The server issued the reply subject; the bot's inbox is not visible to the service.
        assert echo["reply"].startswith("_R_.") and "INBOX" not in echo["reply"]
        info = request_info(echo)
        assert (info["acc"], info["user"]) == ("bot-alice", "alice")
        assert principal_from_request_info(echo["headers"][REQUEST_INFO_HEADER]) == (
            "alice@bot-alice"
        )
    assert violations == []


def test_forged_request_info_is_replaced(deployment: Deployment) -> None:
    forged = json.dumps({"acc": "PLANTANGENET", "user": "service"})

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
        async with service(deployment.url) as svc, connect_bot(deployment.url, "alice") as bot:
            exact = await ask(
                bot, "plantangenet.cmd.A.state", headers={REQUEST_INFO_HEADER: forged}
            )
            other_case = await ask(
                bot, "plantangenet.cmd.A.state", headers={"nats-request-info": forged}
            )
            return exact, other_case, [m.headers for m in svc.seen]

    exact, other_case, headers = asyncio.run(scenario())
    # The exact name: the server replaced the bot's value with its own.
    assert list(exact["headers"]) == [REQUEST_INFO_HEADER]
    assert request_info(exact)["acc"] == "bot-alice"
    assert principal_from_headers(headers[0]) == "alice@bot-alice"
    # Another case is another header to the server: it passes through beside the real one.
    # The exact lookup still finds the server's; principal_from_headers refuses to guess.
    assert other_case["headers"]["nats-request-info"] == forged
    assert request_info(other_case)["user"] == "alice"
    assert principal_from_headers(headers[1]) is None


def test_bot_cannot_command_other_sessions(deployment: Deployment) -> None:
    async def scenario() -> tuple[str, int]:
        async with service(deployment.url) as svc:
            async with connect_bot(deployment.url, "alice") as alice:
                # Her user may not publish there: the server refuses it, the request times out.
                with pytest.raises(nats.errors.TimeoutError):
                    await alice.nc.request("plantangenet.cmd.B.state", b"", timeout=0.5)
                error = await alice.violation("plantangenet.cmd.B.state")
            async with connect_bot(deployment.url, "mallory") as mallory:
                # Mallory may publish anything: her account has no import for A or B.
                for subject in ("plantangenet.cmd.A.state", "plantangenet.cmd.B.start"):
                    with pytest.raises(nats.errors.NoRespondersError):
                        await mallory.nc.request(subject, b"", timeout=2)
                # Her own session is served.
                assert (await ask(mallory, "plantangenet.cmd.M.state"))["subject"].endswith(
                    "M.state"
                )
            return error, len(svc.seen)

    error, answered = asyncio.run(scenario())
    assert error == 'nats: permissions violation for publish to "plantangenet.cmd.b.state"'
    assert answered == 1


def test_a_bot_client_the_server_says_no_to_is_told_so_and_does_not_ask_again(
    deployment: Deployment,
) -> None:
    """A wrong password fails at once (nats-py alone retried it for ~2 minutes); a
    request to a session the bot's account does not reach is sent once, not once per
    retry, and refused naming the server's permissions violation."""

    async def scenario() -> list[str]:
        with pytest.raises(JournalError, match="refused the login"):
            await BotClient.connect(deployment.url, user="alice", password="wrong")
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        async with service(deployment.url):
            bot = await BotClient.connect(
                deployment.url,
                user="alice",
                password=PASSWORDS["alice"],
                error_cb=on_error,
                timeout=0.5,
                retries=3,
            )
            try:
                with pytest.raises(JournalError, match=r"state on B: the NATS server refused it"):
                    await bot.state("B")
            finally:
                await bot.close()
        return errors

    errors = asyncio.run(scenario())
    assert errors == ['nats: permissions violation for publish to "plantangenet.cmd.b.state"']


def test_two_bots_each_carry_their_own_identity(deployment: Deployment) -> None:
    async def scenario() -> list[tuple[str, str | None]]:
        async with (
            service(deployment.url) as svc,
            connect_bot(deployment.url, "alice") as alice,
            connect_bot(deployment.url, "bob") as bob,
            connect_bot(deployment.url, "mallory") as mallory,
        ):
            requests = [
                ask(bot, f"plantangenet.cmd.{session}.n{i}")
                for i in range(10)
                for bot, session in ((alice, "A"), (bob, "B"), (mallory, "M"))
            ]
            await asyncio.gather(*requests)
            # Bob has no rights on alice's session, whoever asks first.
            with pytest.raises(nats.errors.TimeoutError):
                await bob.nc.request("plantangenet.cmd.A.n0", b"", timeout=0.5)
            return [(m.subject.split(".")[4], principal_from_headers(m.headers)) for m in svc.seen]

    seen = asyncio.run(scenario())
    assert len(seen) == 30
    owner = {"A": "alice@bot-alice", "B": "bob@bot-bob", "M": "mallory@mallory-corp"}
    assert all(principal == owner[session] for session, principal in seen)


# -- live events ----------------------------------------------------------------------------


def test_bot_follows_only_its_sessions_live_events(deployment: Deployment) -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with (
            service(deployment.url) as svc,
            connect_bot(deployment.url, "alice") as alice,
            connect_bot(deployment.url, "mallory") as mallory,
        ):
            _, alice_got = await collect(alice.nc, "plantangenet.live.A")
            _, alice_got_c = await collect(alice.nc, "plantangenet.live.C")
            _, mallory_got = await collect(mallory.nc, ">")  # mallory may subscribe to anything
            for subject in ("plantangenet.live.B", "plantangenet.live.>"):
                await alice.nc.subscribe(subject)
            await alice.nc.flush()
            # Others' sessions first; the bots' own sessions last, so that when those
            # arrive, anything sent before on the same connection would have too.
            for subject in (
                "plantangenet.live.B",
                "plantangenet.live.D",
                "plantangenet.cmd.A.state",
                "plantangenet.live.A",
                "plantangenet.live.C",
                "plantangenet.live.M",
            ):
                await svc.publish(subject, subject.encode())
            await until(lambda: alice_got and alice_got_c and mallory_got)
            refused = [
                await alice.violation(subject, "subscribe")
                for subject in ("plantangenet.live.B", "plantangenet.live.>")
            ]
            assert len(refused) == 2
            return (
                [m.subject for m in alice_got + alice_got_c],
                [m.data.decode() for m in alice_got + alice_got_c],
                [m.subject for m in mallory_got],
            )

    alice_subjects, alice_data, mallory_subjects = asyncio.run(scenario())
    assert alice_subjects == alice_data == ["plantangenet.live.A", "plantangenet.live.C"]
    assert mallory_subjects == ["plantangenet.live.M"]


def test_stream_republish_reaches_the_bot(deployment: Deployment) -> None:
    # What the service's stream does: store, then republish on <live prefix>.<session>.
    # Shown with a stream of its own, so the event stream stays as the runtime made it.
    async def scenario() -> list[tuple[str, str, str | None]]:
        async with service(deployment.url) as svc, connect_bot(deployment.url, "alice") as bot:
            js = svc.nc.jetstream()
            await js.add_stream(
                StreamConfig(
                    name="REPUBLISHED",
                    subjects=["republished.*"],
                    republish=RePublish(
                        src="republished.*", dest="plantangenet.live.{{wildcard(1)}}"
                    ),
                )
            )
            try:
                _, got = await collect(bot.nc, "plantangenet.live.A")
                await js.publish("republished.B", b"not for alice")
                await js.publish("republished.A", b"for alice")
                await until(lambda: got)
                await asyncio.sleep(0.1)
            finally:
                await js.delete_stream("REPUBLISHED")
            return [(m.subject, m.data.decode(), (m.headers or {}).get("Nats-Stream")) for m in got]

    assert asyncio.run(scenario()) == [("plantangenet.live.A", "for alice", "REPUBLISHED")]


def test_bots_cannot_see_each_others_traffic(deployment: Deployment) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        async with (
            service(deployment.url) as svc,
            connect_bot(deployment.url, "alice") as alice,
            connect_bot(deployment.url, "bob") as bob,
            connect_bot(deployment.url, "mallory") as mallory,
        ):
            _, alice_inbox = await collect(alice.nc, "_INBOX.>")  # allowed: her account's only
            _, alice_live = await collect(alice.nc, "plantangenet.live.A")
            _, mallory_got = await collect(mallory.nc, ">")
            _, bob_got = await collect(bob.nc, "plantangenet.live.B")
            await ask(bob, "plantangenet.cmd.B.state")
            await svc.publish("plantangenet.live.B")
            await until(lambda: bob_got)
            # Sentinels, sent after bob's traffic: when they arrive, his would have too.
            await svc.publish("plantangenet.live.M")
            await svc.publish("plantangenet.live.A")
            await until(lambda: mallory_got and alice_live)
            return [m.subject for m in alice_inbox], [m.subject for m in mallory_got]

    alice_inbox, mallory_saw = asyncio.run(scenario())
    assert alice_inbox == []
    assert mallory_saw == ["plantangenet.live.M"]


def test_bot_jetstream_publishes_carry_only_its_account(deployment: Deployment) -> None:
    # A bot's own stream may republish into its sessions' command subjects: the server
    # names the account (and kind JetStream) but no user, so authorize by the account.
    async def scenario() -> list[Any]:
        async with service(deployment.url) as svc, connect_bot(deployment.url, "alice") as bot:
            js = bot.nc.jetstream(timeout=2)
            await js.add_stream(
                StreamConfig(
                    name="LOOP",
                    subjects=["plantangenet.live.A"],
                    republish=RePublish(src="plantangenet.live.A", dest="plantangenet.cmd.A.x"),
                )
            )
            try:
                await svc.publish("plantangenet.live.A")
                await until(lambda: svc.seen)
            finally:
                await js.delete_stream("LOOP")
            return svc.seen

    (msg,) = asyncio.run(scenario())
    assert msg.subject == "plantangenet.cmd.0.bot-alice.A.x" and msg.reply == ""
    info = json.loads(msg.headers[REQUEST_INFO_HEADER])
    assert (info["acc"], info["kind"], "user" in info) == ("bot-alice", "JetStream", False)
    assert principal_from_headers(msg.headers) == "@bot-alice"


# -- JetStream: the bot's own account, never the service's ------------------------------------


@pytest.mark.parametrize("user", ["alice", "mallory"])
def test_bot_cannot_reach_the_service_jetstream(deployment: Deployment, user: str) -> None:
    before = deployment.stream_state()
    consumer = {"name": "mine", "filter_subject": "plantangenet.events.B", "ack_policy": "none"}
    push = {**consumer, "deliver_subject": "plantangenet.cmd.B.state"}

    async def scenario() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        async with connect_bot(deployment.url, user) as bot:
            replies = {
                "info": await bot.api(f"$JS.API.STREAM.INFO.{STREAM}"),
                "create": await bot.api(
                    f"$JS.API.CONSUMER.CREATE.{STREAM}.mine.plantangenet.events.B",
                    {"stream_name": STREAM, "config": consumer},
                ),
                "push": await bot.api(
                    f"$JS.API.CONSUMER.CREATE.{STREAM}",
                    {"stream_name": STREAM, "config": push},
                ),
                "durable": await bot.api(
                    f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.mine",
                    {"stream_name": STREAM, "config": {**consumer, "durable_name": "mine"}},
                ),
                "list": await bot.api(f"$JS.API.CONSUMER.LIST.{STREAM}", {}),
                "get": await bot.api(f"$JS.API.STREAM.MSG.GET.{STREAM}", {"seq": 1}),
                "purge": await bot.api(f"$JS.API.STREAM.PURGE.{STREAM}"),
                "delete": await bot.api(f"$JS.API.STREAM.DELETE.{STREAM}"),
            }
            streams = await bot.api("$JS.API.STREAM.NAMES", {})
            assert bot.violations() == []  # all of it was allowed: it reached her own JetStream
            return replies, streams

    replies, streams = asyncio.run(scenario())
    for what, reply in replies.items():
        assert reply["error"]["err_code"] == 10059, what  # stream not found
        assert reply["error"]["description"] == "stream not found"
    assert STREAM not in (streams.get("streams") or [])
    assert deployment.stream_state() == before


def test_bot_account_jetstream_limits_hold(deployment: Deployment) -> None:
    async def scenario() -> dict[str, Any]:
        async with service(deployment.url) as svc, connect_bot(deployment.url, "dave") as bot:
            js = bot.nc.jetstream(timeout=2)
            results: dict[str, Any] = {"info": await bot.api("$JS.API.INFO")}
            # No memory storage for him (max_memory=0).
            with pytest.raises(nats.js.errors.APIError) as memory:
                await js.add_stream(name="MEM", subjects=["dave.mem"], storage=StorageType.MEMORY)
            results["memory"] = memory.value.err_code
            # A stream of his own, keeping his session's live events: allowed, and limited.
            await js.add_stream(name="MINE", subjects=["plantangenet.live.D"])
            try:
                with pytest.raises(nats.js.errors.BadRequestError) as second:
                    await js.add_stream(name="MORE", subjects=["dave.more"])
                results["second stream"] = second.value.err_code
                for name in ("c1", "c2"):
                    await js.add_consumer("MINE", durable_name=name)
                with pytest.raises(nats.js.errors.BadRequestError) as third:
                    await js.add_consumer("MINE", durable_name="c3")
                results["third consumer"] = third.value.err_code
                for _ in range(20):
                    await svc.publish("plantangenet.live.D", b"x" * 1000)
                await asyncio.sleep(0.3)
                results["stored"] = (await js.stream_info("MINE")).state
            finally:
                await js.delete_stream("MINE")
            return results

    results = asyncio.run(scenario())
    limits = results["info"]["limits"]
    assert (
        limits["max_consumers"],
        limits["max_streams"],
        limits["max_storage"],
        limits["max_memory"],
    ) == (2, 1, DAVE_STORAGE, 0)
    assert results["second stream"] == 10027  # maximum number of streams reached
    assert results["third consumer"] == 10026  # maximum consumers limit reached
    assert results["memory"] == 10028  # insufficient memory resources
    stored = results["stored"]
    assert 0 < stored.messages < 20 and stored.bytes <= DAVE_STORAGE


def test_bot_accounts_get_the_default_limits(deployment: Deployment) -> None:
    async def scenario() -> dict[str, Any]:
        async with connect_bot(deployment.url, "alice") as bot:
            return await bot.api("$JS.API.INFO")

    info = asyncio.run(scenario())
    assert info["streams"] == 0 and info["consumers"] == 0  # not the service's stream
    limits = info["limits"]
    assert (
        limits["max_consumers"],
        limits["max_streams"],
        limits["max_storage"],
        limits["max_memory"],
    ) == (
        DEFAULT_BOT_MAX_CONSUMERS,
        DEFAULT_BOT_MAX_STREAMS,
        DEFAULT_BOT_MAX_STORAGE,
        DEFAULT_BOT_MAX_MEMORY,
    )


def test_bot_cannot_publish_events(deployment: Deployment) -> None:
    before = deployment.stream_state()

    async def scenario() -> str:
        async with connect_bot(deployment.url, "alice") as alice:
            await alice.nc.publish("plantangenet.events.A", b"forged")
            error = await alice.violation("plantangenet.events.A")
        async with connect_bot(deployment.url, "mallory") as mallory:
            # Allowed to her user, but her account's subject space has no such stream.
            await mallory.nc.publish("plantangenet.events.A", b"forged")
            await mallory.nc.publish("plantangenet.events.M", b"forged")
            with pytest.raises(nats.js.errors.NoStreamResponseError):
                await mallory.nc.jetstream(timeout=1).publish("plantangenet.events.M", b"forged")
            await mallory.nc.flush()
            assert mallory.violations() == []
        return error

    assert asyncio.run(scenario()).endswith('"plantangenet.events.a"')
    assert deployment.stream_state() == before


# -- the config itself ------------------------------------------------------------------------


ONE_BOT = """\
# nats-server configuration written by plantangenet.wire.access

jetstream {}

accounts {
  "PLANTANGENET" {
    jetstream: enabled
    users: [
      {
        user: "svc"
        password: "pw"
        permissions: {
          publish: {allow: [">"]}
          subscribe: {allow: [">"]}
        }
      }
    ]
    exports: [
      {service: "plantangenet.cmd.*.*.*.*", account_token_position: 4, accounts: ["bot-b1"]}
      {stream: "plantangenet.live.*", accounts: ["bot-b1"]}
    ]
  }
  "bot-b1" {
    jetstream: {max_mem: 33554432, max_file: 268435456, max_streams: 10, max_consumers: 100}
    users: [
      {
        user: "b1"
        password: "pw1"
        permissions: {
          publish: {allow: ["plantangenet.cmd.s1.*", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>"]}
          subscribe: {allow: ["_INBOX.>", "_INBOX_b1.>", "plantangenet.live.s1"]}
        }
      }
    ]
    imports: [
      {service: {account: "PLANTANGENET", subject: "plantangenet.cmd.0.bot-b1.s1.*"}, to: "plantangenet.cmd.s1.*", share: true}
      {stream: {account: "PLANTANGENET", subject: "plantangenet.live.s1"}}
    ]
  }
}
"""


def ok_kwargs(**changes: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "service_user": "svc",
        "service_password": "pw",
        "bots": [BotAccess("b1", "pw1", ("s1",))],
    }
    kwargs.update(changes)
    return kwargs


def test_config_layout() -> None:
    assert server_config(**ok_kwargs()) == ONE_BOT
    # Without bots there is nothing to export (an export naming no accounts is public).
    no_bots = server_config(**ok_kwargs(bots=[]))
    assert "exports" not in no_bots and "imports" not in no_bots


@pytest.mark.parametrize(
    ("changes", "principal"),
    [
        ({}, "b1@bot-b1"),
        # Names the config language would otherwise read as keywords or numbers.
        (
            {"account": "1", "bots": [BotAccess("b1", "pw1", ("s1",), account="include")]},
            "b1@include",
        ),
    ],
)
def test_config_serves_a_bot(tmp_path: Path, changes: dict[str, Any], principal: str) -> None:
    path = write_config(tmp_path / "nats.conf", **ok_kwargs(**changes))
    if not changes:
        assert path.read_text() == ONE_BOT

    async def scenario(url: str) -> tuple[str, int]:
        svc = await nats.connect(url, user="svc", password="pw")
        try:
            js = svc.jetstream()
            await js.add_stream(name=STREAM, subjects=["plantangenet.events.>"])
            await js.publish("plantangenet.events.s1", b"{}")

            async def answer(msg: Any) -> None:
                await msg.respond((principal_from_headers(msg.headers) or "").encode())

            await svc.subscribe("plantangenet.cmd.>", cb=answer)
            await svc.flush()  # the server has the subscription before the bot asks
            bot = await nats.connect(url, user="b1", password="pw1")
            try:
                reply = await bot.request("plantangenet.cmd.s1.state", b"", timeout=2)
            finally:
                await bot.close()
            messages = (await js.stream_info(STREAM)).state.messages
            return reply.data.decode(), messages
        finally:
            await svc.close()

    with EmbeddedNats(tmp_path / "store", extra_args=["-c", str(path)]) as server:
        assert asyncio.run(scenario(server.url)) == (principal, 1)
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
        BotAccess("b1", "pw", ("s1", "s2")), command_prefix="cmd", live_prefix="live"
    )
    assert perms == {
        "publish": {"allow": ["cmd.s1.*", "cmd.s2.*", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>"]},
        "subscribe": {"allow": ["_INBOX.>", "_INBOX_b1.>", "live.s1", "live.s2"]},
    }
    assert inbox_prefix("b1") == "_INBOX_b1"
    conf = server_config(
        **ok_kwargs(event_prefix="ev", command_prefix="cmd", live_prefix="live", account="SVC")
    )
    assert '{service: "cmd.*.*.*.*", account_token_position: 3, accounts: ["bot-b1"]}' in conf
    assert '{stream: "live.*", accounts: ["bot-b1"]}' in conf
    assert (
        '{service: {account: "SVC", subject: "cmd.0.bot-b1.s1.*"}, to: "cmd.s1.*", share: true}'
        in conf
    )
    assert '{stream: {account: "SVC", subject: "live.s1"}}' in conf
    assert "plantangenet." not in conf.split("\n", 1)[1]  # past the comment


def test_bot_limits_defaults_and_overrides() -> None:
    assert bot_limits(BotAccess("b", "pw", ("s",))) == {
        "max_mem": 32 * 1024 * 1024,
        "max_file": 256 * 1024 * 1024,
        "max_streams": 10,
        "max_consumers": 100,
    }
    own = BotAccess("b", "pw", ("s",), max_consumers=3, max_memory=0)
    assert bot_limits(own, max_streams=2, max_storage=1024) == {
        "max_mem": 0,
        "max_file": 1024,
        "max_streams": 2,
        "max_consumers": 3,
    }
    conf = server_config(**ok_kwargs(bots=[own], bot_max_streams=4, bot_max_storage=5))
    assert "jetstream: {max_mem: 0, max_file: 5, max_streams: 4, max_consumers: 3}" in conf


def test_bot_accounts() -> None:
    assert bot_account(BotAccess("alice", "pw", ("s",))) == "bot-alice"
    assert bot_account(BotAccess("alice", "pw", ("s",), account="team_1")) == "team_1"
    with pytest.raises(InvalidAccessConfig, match="account name of bot"):
        bot_account(BotAccess("x" * 61, "pw", ("s",)))  # bot-<61 chars> is too long
    assert bot_account(BotAccess("x" * 61, "pw", ("s",), account="short")) == "short"
    conf = server_config(**ok_kwargs(bots=[BotAccess("b1", "pw1", ("s1",), account="team_1")]))
    assert '  "team_1" {' in conf and 'accounts: ["team_1"]' in conf and "bot-b1" not in conf


@pytest.mark.parametrize(
    "bots",
    [
        # Two bots, one account: refused, however it comes about.
        [
            BotAccess("a", "pw", ("s1",), account="team"),
            BotAccess("b", "pw", ("s2",), account="team"),
        ],
        [BotAccess("a", "pw", ("s1",)), BotAccess("b", "pw", ("s2",), account="bot-a")],
        [
            BotAccess("a", "pw", ("s1",), account="Team"),
            BotAccess("b", "pw", ("s2",), account="team"),
        ],
        [BotAccess("a", "pw", ("s1",), account="PLANTANGENET")],
        [BotAccess("a", "pw", ("s1",), account="plantangenet")],
    ],
)
def test_bots_cannot_share_an_account(bots: list[BotAccess]) -> None:
    with pytest.raises(InvalidAccessConfig, match="each bot needs an account of its own"):
        server_config(**ok_kwargs(bots=bots))


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
        ({"account": "$G"}, "account name"),
        ({"stream": "S*"}, "stream name"),
        ({"event_prefix": "ev.>"}, "event subject prefix"),
        ({"event_prefix": "ev..x"}, "event subject prefix"),
        ({"command_prefix": ""}, "command subject prefix"),
        ({"live_prefix": "live.*"}, "live subject prefix"),
        ({"command_prefix": "_INBOX_x.cmd"}, "collides with reply subjects"),
        ({"live_prefix": "_R_.live"}, "collides with reply subjects"),
        ({"live_prefix": "_INBOX"}, "collides with reply subjects"),
        ({"event_prefix": "plantangenet.cmd.x"}, "overlap"),
        ({"event_prefix": "plantangenet"}, "overlap"),
        ({"live_prefix": "plantangenet.events"}, "overlap"),
        ({"live_prefix": "plantangenet.cmd.live"}, "overlap"),
        ({"live_prefix": "plantangenet"}, "overlap"),
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
        ({"bots": [BotAccess("b1", "pw", ("s1",), account="a b")]}, "account name of bot 'b1'"),
        ({"bots": [BotAccess("b1", "pw", ("s1",), account="")]}, "account name of bot 'b1'"),
        ({"bots": [BotAccess("b1", "pw", ("s1",), max_consumers=0)]}, "max_consumers of bot"),
        ({"bots": [BotAccess("b1", "pw", ("s1",), max_streams=-1)]}, "max_streams of bot"),
        ({"bots": [BotAccess("b1", "pw", ("s1",), max_storage=-1)]}, "max_storage of bot"),
        ({"bots": [BotAccess("b1", "pw", ("s1",), max_memory=True)]}, "max_memory of bot"),
        ({"bots": [BotAccess("b1", "pw", ("s1",), max_memory=1.5)]}, "max_memory of bot"),  # type: ignore[arg-type]
        ({"bot_max_consumers": 0}, "bot_max_consumers"),
        ({"bot_max_streams": 0}, "bot_max_streams"),
        ({"bot_max_storage": -1}, "bot_max_storage"),
        ({"bot_max_memory": 2**63}, "bot_max_memory"),
        ({"bot_max_memory": "32M"}, "bot_max_memory"),
        ({"bots": BotAccess("b1", "pw", ("s1",))}, "sequence of BotAccess"),
        ({"bots": "b1"}, "sequence of BotAccess"),
        ({"bots": [("b1", "pw", ("s1",))]}, "BotAccess instances"),
        ({"system_account": True, "account": "SYS"}, "cannot be named"),
        ({"system_account": True, "account": "sys"}, "cannot be named"),
        ({"system_account": True, "bots": [BotAccess("svc-sys", "pw", ("s1",))]}, "more than once"),
        (
            {"system_account": True, "bots": [BotAccess("b1", "pw", ("s1",), account="SYS")]},
            "already the system account",
        ),
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
    with pytest.raises(InvalidAccessConfig) as info:
        server_config(**ok_kwargs(bots=[BotAccess("b1", "bot secret", ("s1",))]))
    assert "bot secret" not in str(info.value)
    with pytest.raises(InvalidAccessConfig):
        inbox_prefix("a.b")


def test_module_doctest() -> None:
    assert doctest.testmod(plantangenet.wire.access).failed == 0


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


# -- principals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "principal"),
    [
        ('{"acc":"bot-alice","user":"alice","rtt":1,"kind":"Client"}', "alice@bot-alice"),
        ('{"acc":"bot-alice"}', "@bot-alice"),  # an import without share: true
        ('{"acc":"bot-alice","user":""}', "@bot-alice"),
        ('{"acc":"bot-alice","user":null}', "@bot-alice"),
        ('{"user":"alice","acc":"A","user":"bob"}', "bob@A"),  # JSON: the last one counts
        ('{"acc":"ÄCC"}', None),
        ('{"acc":"a b"}', None),
        ('{"acc":"a@b"}', None),
        ('{"acc":"a","user":"u@v"}', None),
        ('{"acc":"a","user":"u\\nv"}', None),
        ('{"acc":"a","user":7}', None),
        ('{"acc":"a","user":["u"]}', None),
        ('{"acc":""}', None),
        ('{"acc":null}', None),
        ('{"acc":1}', None),
        ('{"user":"alice"}', None),
        ('["acc","a"]', None),
        ('"acc"', None),
        ("null", None),
        ("NaN", None),
        ("1e999999", None),
        ("{", None),
        ("", None),
        ("   ", None),
        ("[" * 100_000, None),
        ("[" * 10_000 + "]" * 10_000, None),
        ('{"acc":"' + "a" * 257 + '"}', None),
        ('{"acc":"a","pad":"' + "x" * 20_000 + '"}', None),
        ('{"acc":"\\ud800"}', None),
    ],
)
def test_principal_from_request_info(value: str, principal: str | None) -> None:
    assert principal_from_request_info(value) == principal


def test_principal_from_request_info_takes_any_object() -> None:
    for value in (None, b'{"acc":"a"}', 1, {"acc": "a"}, object()):
        assert principal_from_request_info(value) is None  # type: ignore[arg-type]


@given(st.one_of(st.text(), st.from_regex(r'\{"acc": ?"[^"]*"(, ?"user": ?"[^"]*")?\}')))
def test_principal_from_request_info_never_raises(value: str) -> None:
    principal = principal_from_request_info(value)
    assert principal is None or (principal.count("@") == 1 and principal.split("@")[1])


def test_principal_from_headers() -> None:
    info = '{"acc":"bot-alice","user":"alice"}'
    assert principal_from_headers({REQUEST_INFO_HEADER: info, "X": "y"}) == "alice@bot-alice"
    assert principal_from_headers(None) is None
    assert principal_from_headers({}) is None
    assert principal_from_headers({"X": "y"}) is None
    assert principal_from_headers({"nats-request-info": info}) is None
    assert principal_from_headers({REQUEST_INFO_HEADER: info, "NATS-REQUEST-INFO": info}) is None
    assert principal_from_headers({REQUEST_INFO_HEADER: 7}) is None  # type: ignore[dict-item]
    assert principal_from_headers({1: "x"}) is None  # type: ignore[dict-item]
    assert principal_from_headers("not a mapping") is None  # type: ignore[arg-type]


# -- the command line -----------------------------------------------------------------------


def test_parse_size() -> None:
    assert [parse_size(s) for s in ("0", "4096", "64K", "256M", "256MiB", "1g", "2 TB", "9B")] == [
        0,
        4096,
        64 * 1024,
        256 * 1024**2,
        256 * 1024**2,
        1024**3,
        2 * 1024**4,
        9,
    ]
    for bad in ("", "M", "-1", "1.5G", "1P", "256iB", "x"):
        with pytest.raises(InvalidAccessConfig, match="not a size"):
            parse_size(bad)


def test_cli_writes_the_accounts(tmp_path: Path) -> None:
    out = io.StringIO()
    status = main(
        [
            "nats-config",
            "--service-password",
            "svc-pw",
            "--bot",
            "alice:pa:ss:A,B",
            "--bot",
            "bob:bpw:C",
            "--bot-max-consumers",
            "5",
            "--bot-max-streams",
            "2",
            "--bot-max-storage",
            "1M",
            "--bot-max-memory",
            "0",
            "--live-prefix",
            "pg.live",
        ],
        out=out,
    )
    assert status == 0
    expected = server_config(
        service_user="plantangenet",
        service_password="svc-pw",
        bots=[BotAccess("alice", "pa:ss", ("A", "B")), BotAccess("bob", "bpw", ("C",))],
        live_prefix="pg.live",
        bot_max_consumers=5,
        bot_max_streams=2,
        bot_max_storage=1024 * 1024,
        bot_max_memory=0,
    )
    assert out.getvalue() == expected
    assert (
        "jetstream: {max_mem: 0, max_file: 1048576, max_streams: 2, max_consumers: 5}" in expected
    )
    conf = tmp_path / "nats.conf"
    assert main(["nats-config", "--service-password", "p", "--out", str(conf)], io.StringIO()) == 0
    assert conf.read_text() == server_config(
        service_user="plantangenet", service_password="p", bots=[]
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--bot-max-storage", "lots"],
        ["--bot-max-consumers", "0"],
        ["--live-prefix", "plantangenet.events.live"],
        ["--bot", "alice:pw:A", "--bot", "bob:pw:B", "--bot", "alice:pw:C"],
    ],
)
def test_cli_refuses_bad_settings(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert main(["nats-config", "--service-password", "secret-pw", *args], out=out) == 2
    assert out.getvalue() == ""
    assert "secret-pw" not in capsys.readouterr().err

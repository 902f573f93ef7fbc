"""The session service and the bot client over a real nats-server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import nats
import pykka
import pytest

from plantangenet import (
    EmbeddedNats,
    InvalidCommand,
    JournalConfig,
    Plantangenet,
    SessionAlreadyStarted,
    SessionEnded,
    UnknownAgent,
)
from plantangenet.actors.session import SessionActor
from plantangenet.errors import AccessRefused, DecodeError, JournalError, PlantangenetError
from plantangenet.projections.session import SessionState
from plantangenet.projections.views import plain
from plantangenet.wire.client import BotClient
from plantangenet.wire.protocol import (
    COMMANDS,
    ERROR_CLASSES,
    command_subject,
    decode_reply,
    encode_request,
)
from plantangenet.wire.service import SessionService
from tests.conftest import two_services, wait_until, with_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

T = TypeVar("T")


def test_two_example_bots_interact_through_a_session(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
    service: SessionService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import tide_bot
    import watcher_bot

    monkeypatch.setenv("PLANTANGENET_STREAM", journal_config.stream)
    monkeypatch.setenv("PLANTANGENET_SUBJECT_PREFIX", journal_config.subject_prefix)

    async def both() -> None:
        await asyncio.wait_for(
            asyncio.gather(
                tide_bot.run(nats_server.url, "harbour", steps=5),
                watcher_bot.run(nats_server.url, "harbour"),
            ),
            timeout=60,
        )

    # Twice on the same session: the second run's bots coordinate on this run's events,
    # not on the first run's watcher or tide bot still in the log.
    for _ in range(2):
        asyncio.run(both())
        out = capsys.readouterr().out
        assert "tide-bot: done" in out and "watcher-bot: done" in out
    # The session, rehydrated from the log, holds exactly what the bots did.
    runtime.stop_session("harbour")
    state = runtime.session("harbour").state
    assert state == runtime.replay("harbour")
    assert state.agents == {} and state.cursors == {}
    history = runtime.history("harbour")
    moves = [
        (e.event.agent_id, e.event.start, e.event.end)  # type: ignore[attr-defined]
        for e in history
        if e.type_name == "CursorMoved"
    ]
    tide = [m for m in moves if m[0] == "tide-bot"]
    watcher = [m for m in moves if m[0] == "watcher-bot"]
    assert [m[1:] for m in tide] == [(10.0 * s, 10.0 * s + 60) for s in range(1, 6)] * 2
    # The watcher looked just ahead of every tide position, in order, in both runs.
    assert [m[1:] for m in watcher] == [(end, end + 10) for _, _, end in tide]
    # ...and each look ahead came after the move it follows (not a replay of the last run's).
    sequences = [
        (e.event.agent_id, e.sequence or 0)  # type: ignore[attr-defined]
        for e in history
        if e.type_name == "CursorMoved"
    ]
    tide_at = [seq for who, seq in sequences if who == "tide-bot"]
    watcher_at = [seq for who, seq in sequences if who == "watcher-bot"]
    assert all(w > t for t, w in zip(tide_at, watcher_at, strict=True))
    assert all(
        e.agent_id == "watcher-bot"
        for e in history
        if e.type_name == "CursorMoved" and e.event.agent_id == "watcher-bot"  # type: ignore[attr-defined]
    )
    detached = [e.event.agent_id for e in history if e.type_name == "AgentDetached"]  # type: ignore[attr-defined]
    assert detached == ["tide-bot", "watcher-bot"] * 2


def test_client_commands_state_and_events(
    nats_server: EmbeddedNats, journal_config: JournalConfig, service: SessionService
) -> None:
    async def body(bot: BotClient) -> None:
        state = await bot.open("s1", {"k": "v"})
        assert state["status"] == "active" and state["metadata"] == {"k": "v"}
        assert (await bot.open("s1"))["event_count"] == 1  # joining does not start it again
        with pytest.raises(SessionAlreadyStarted):
            await bot.request("s1", "start")
        reply = await bot.attach("s1", kind="bot", name="B")
        assert reply["seq"] == 2 and reply["events"] == ["AgentAttached"]
        with pytest.raises(AccessRefused) as refused:  # no policy yet: default deny
            await bot.add_cursor("s1", "c", ["ocean.x"], 0, 1)
        assert refused.value.sequence == 3
        await bot.change_policy(
            "s1", replace=[{"id": "all", "effect": "allow", "actions": ["*"], "resources": ["*"]}]
        )
        await bot.add_cursor("s1", "c", ["ocean.x"], 0, 1)
        with pytest.raises(UnknownAgent):
            await bot.detach("s1", "ghost")
        seen = []
        async for envelope in bot.events("s1", from_sequence=1):
            seen.append(envelope.type_name)
            if len(seen) == 5:
                break
        assert seen == [
            "SessionStarted",
            "AgentAttached",
            "AccessDenied",
            "PolicyChanged",
            "CursorAdded",
        ]
        assert (await bot.state("s1"))["cursors"]["c"]["axes"] == ["ocean.x"]

    with_client(nats_server.url, journal_config, body, agent_id="bot")


def raw_request(url: str, subject: str, payload: bytes, timeout: float = 5.0) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        nc = await nats.connect(url)
        try:
            msg = await nc.request(subject, payload, timeout=timeout)
            reply = msgpack.unpackb(msg.data, raw=False)
            assert isinstance(reply, dict)
            return reply
        finally:
            await nc.close()

    return asyncio.run(go())


def good(args: dict[str, Any], **kw: Any) -> bytes:
    return encode_request(args, command_id=os.urandom(8).hex(), **kw)


BAD_PAYLOADS: list[tuple[str, bytes, str]] = [
    ("garbage bytes", b"\xc1\xff\x00 not msgpack", "decode_error"),
    ("truncated", good({"agent_id": "a"})[:-3], "decode_error"),
    ("not a map", msgpack.packb([1, 2, 3]), "decode_error"),
    ("no version", msgpack.packb({"id": "x", "args": {}}), "invalid_command"),
    ("future version", msgpack.packb({"v": 99, "id": "x", "args": {}}), "invalid_command"),
    ("no command id", msgpack.packb({"v": 1, "args": {}}), "invalid_command"),
    ("id wrong type", msgpack.packb({"v": 1, "id": 5, "args": {}}), "invalid_command"),
    ("args not a map", msgpack.packb({"v": 1, "id": "x", "args": [1]}), "invalid_command"),
    ("unknown field", msgpack.packb({"v": 1, "id": "x", "args": {}, "x": 1}), "invalid_command"),
    ("unknown arg", good({"nonsense": 1}), "invalid_command"),
    ("oversized", good({"reason": "x" * 300_000}), "invalid_command"),
    ("deep nesting", b"\x81\xa1v" + b"\x91" * 5000 + b"\x01", "decode_error"),
]

WRONG_TYPES: dict[str, dict[str, Any]] = {
    "start": {"metadata": [1, 2]},
    "change_metadata": {"changed": "x"},
    "attach": {"agent_id": 17},
    "detach": {"agent_id": ["x"]},
    "add_cursor": {"agent_id": "a", "cursor_id": "c", "axes": "x", "start": "0", "end": 1},
    "move_cursor": {"agent_id": "a", "cursor_id": "c", "axes": [1], "start": 0, "end": None},
    "remove_cursor": {"agent_id": "a", "cursor_id": {"x": 1}},
    "change_policy": {"replace": [{"id": "s", "effect": "maybe", "actions": [], "resources": []}]},
    "bind_identity": {"identity_id": 3.5},
    "grant_role": {"agent_id": "a", "role": "bad role"},
    "revoke_role": {"agent_id": "a", "role": 1},
    "end": {"reason": 42},
    "register_compositor": {"name": "bad name"},
    "query_cursor": {"agent_id": "a", "cursor_id": "c", "compositor": "x", "max_bytes": -1},
    "set_prices": {"prices": {"cursor.query": -1}},
    "deposit": {"account": "a", "amount": 1.5},
    "grant": {"source": "a", "target": "a", "amount": True},
    "add_owner": {"owner": "has space@acc"},
    "remove_owner": {"owner": 7},
    "bind_agent": {"agent_id": "a", "bound_to": ""},
    "propose_chem": {"chem_id": "k", "peer": "s2", "terms": "x"},
    "accept_chem": {"chem_id": 5},
    "refuse_chem": {"chem_id": "k", "reason": 3},
    "revoke_chem": {"chem_id": ["k"]},
    "query_chem": {
        "chem_id": "k",
        "agent_id": "a",
        "axes": "x",
        "start": 0,
        "end": 1,
        "compositor": "x",
    },
    "disclose_chem": {
        "chem_id": "k",
        "peer": "p",
        "agent_id": "a",
        "axes": ["x"],
        "start": 0,
        "end": 1,
        "compositor": "x",
        "max_bytes": -1,
    },
}


def test_every_malformed_payload_gets_a_typed_error_and_nothing_is_written(
    nats_server: EmbeddedNats, runtime: Plantangenet, service: SessionService
) -> None:
    runtime.session("s1").start()
    runtime.session("s1").attach("a")
    runtime.session("s1").add_cursor("a", "c", ["x"], 0, 1)
    before = runtime.sessions()["s1"]
    assert set(WRONG_TYPES) == set(COMMANDS)
    for name in sorted(COMMANDS, key=lambda n: n == "end"):  # `end` (all defaults) ends it
        subject = command_subject("s1", name)
        for label, payload, code in BAD_PAYLOADS:
            reply = raw_request(nats_server.url, subject, payload)
            assert reply["ok"] is False, (name, label)
            assert reply["error"]["code"] == code, (name, label, reply)
            assert reply["error"]["message"]
        reply = raw_request(nats_server.url, subject, good(WRONG_TYPES[name]))
        assert reply["ok"] is False and reply["error"]["code"] in (
            "invalid_command",
            "invalid_policy",
            "session_already_started",
        ), (name, reply)
        if name not in ("start",):
            missing = raw_request(nats_server.url, subject, good({}))
            if not missing["ok"]:
                assert missing["error"]["code"].startswith("invalid"), (name, missing)
    for subject in ("plantangenet.cmd.s1.no_such_command", "plantangenet.cmd.bad@id.start"):
        reply = raw_request(nats_server.url, subject, good({}))
        assert reply["error"]["code"] == "invalid_command"
    # Only `end` with no args (all defaults) went through: it ended, detaching `a`.
    history = runtime.history("s1")
    assert len(history) == before + 1
    assert [e.event for e in history[before:]] == [SessionEnded("ended", ("a",))]
    assert runtime.session("s1").state.status == "ended"
    assert service.failed > 100


def test_service_keeps_serving_others_while_flooded_with_garbage(
    nats_server: EmbeddedNats, journal_config: JournalConfig, service: SessionService
) -> None:
    async def scenario() -> list[int]:
        nc = await nats.connect(nats_server.url)
        client = BotClient(nc, journal=journal_config)
        await client.open("good")
        garbage = [
            nc.request(command_subject("bad", "attach"), os.urandom(64), timeout=10)
            for _ in range(300)
        ]
        work = [client.attach("good", f"a{i}") for i in range(50)]
        # nats replies (untyped: Any) and then the bots' reply maps, in one gather.
        results: list[Any] = await asyncio.gather(*garbage, *work)
        codes = {decode_error_code(m.data) for m in results[:300]}
        assert codes == {"decode_error"}
        await nc.close()
        return [r["seq"] for r in results[300:]]

    sequences = asyncio.run(scenario())
    assert sorted(sequences) == list(range(2, 52))


def decode_error_code(data: bytes) -> str:
    try:
        decode_reply(data)
    except PlantangenetError as exc:
        return exc.code
    return "ok"


def test_retried_command_after_a_lost_reply_is_applied_once(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
    service: SessionService,
) -> None:
    runtime.session("s1").start()
    payload = encode_request({"agent_id": "bot"}, command_id="attach-bot-once")

    async def scenario() -> dict[str, Any]:
        nc = await nats.connect(nats_server.url)
        # First try: the reply goes to an inbox nobody listens on (the reply is lost).
        await nc.publish(command_subject("s1", "attach"), payload, reply="_INBOX.lost.reply")
        await nc.flush()
        await asyncio.sleep(0.3)
        msg = await nc.request(command_subject("s1", "attach"), payload, timeout=5)
        await nc.close()
        return decode_reply(msg.data)

    reply = asyncio.run(scenario())
    assert reply["duplicate"] is True and reply["seq"] == 2
    assert [e.type_name for e in runtime.history("s1")] == ["SessionStarted", "AgentAttached"]


def test_idle_sessions_are_stopped_and_come_back_from_the_log(
    nats_server: EmbeddedNats, journal_config: JournalConfig, runtime: Plantangenet
) -> None:
    svc = SessionService(runtime, idle_timeout=0.2)
    runtime.run(svc.start())
    try:

        async def first(bot: BotClient) -> None:
            await bot.open("idle")
            await bot.attach("idle", "a")

        with_client(nats_server.url, journal_config, first)
        wait_until(lambda: "idle" not in svc.active_sessions)
        wait_until(lambda: runtime.running_session("idle") is None)  # passivated

        async def again(bot: BotClient) -> dict[str, Any]:
            return await bot.attach("idle", "b")

        assert with_client(nats_server.url, journal_config, again)["seq"] == 3
        assert sorted(runtime.session("idle").state.agents) == ["a", "b"]
    finally:
        runtime.run(svc.stop())


# -- the serve process -------------------------------------------------------------------


def serve(url: str, config: JournalConfig) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plantangenet",
            "serve",
            "--nats-url",
            url,
            "--stream",
            config.stream,
            "--subject-prefix",
            config.subject_prefix,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None and process.stderr is not None
    line = process.stdout.readline()
    assert "listening" in line, line + (process.stderr.read() if process.poll() else "")
    return process


def load(
    url: str, config: JournalConfig, count: int, kill: Callable[[int], None]
) -> dict[str, str]:
    """Send ``count`` attach commands, calling ``kill(n)`` after n replies; retry failures."""

    async def scenario() -> dict[str, str]:
        bot = await BotClient.connect(url, journal=config, timeout=2.0, retries=0)
        await bot.open("load")
        acked: dict[str, str] = {}
        pending = {f"cmd-{n}": f"agent-{n}" for n in range(count)}
        killed = False
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:
            command_id, agent = next(iter(pending.items()))
            try:
                await bot.attach("load", agent, command_id=command_id)
                acked[command_id] = agent
                pending.pop(command_id)
            except PlantangenetError:
                await asyncio.sleep(0.1)  # service down: retry the same command id
            if not killed and len(acked) >= count // 3:
                killed = True
                kill(len(acked))
        await bot.close()
        return acked

    return asyncio.run(scenario())


def test_killed_service_loses_no_acknowledged_command(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    make_runtime: Callable[[], Plantangenet],
) -> None:
    processes = [serve(nats_server.url, journal_config)]

    def kill_and_restart(_: int) -> None:
        processes[-1].kill()
        processes[-1].wait()
        processes.append(serve(nats_server.url, journal_config))

    try:
        acked = load(nats_server.url, journal_config, 60, kill_and_restart)
    finally:
        for p in processes:
            p.kill()
            p.wait()
    assert len(acked) == 60
    pg = make_runtime()
    history = pg.history("load")
    stored = [e.causation_id for e in history if e.type_name == "AgentAttached"]
    assert sorted(stored) == sorted(acked)  # every acknowledged command, exactly once
    assert len(pg.replay("load").agents) == 60


def test_sigterm_finishes_requests_in_flight(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    make_runtime: Callable[[], Plantangenet],
) -> None:
    process = serve(nats_server.url, journal_config)

    async def scenario() -> list[Any]:
        bot = await BotClient.connect(nats_server.url, journal=journal_config, retries=0)
        await bot.open("drain")
        calls = [bot.attach("drain", f"a{i}") for i in range(200)]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await bot.close()
        return results

    results = asyncio.run(scenario())
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopped after" in out
    acked = {r["seq"] for r in results if isinstance(r, dict)}
    history = make_runtime().history("drain")
    assert acked <= {e.sequence for e in history}
    assert len(history) - 1 >= len(acked)
    # Whatever was not answered was refused (no responders) or timed out, never half-written.
    assert len({e.event.agent_id for e in history[1:]}) == len(history) - 1  # type: ignore[attr-defined]


def test_bad_subject_parts_and_invalid_reply_do_not_crash(
    nats_server: EmbeddedNats, runtime: Plantangenet, service: SessionService
) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.publish(command_subject("s1", "start"), b"\x00")  # no reply subject at all
        await nc.flush()
        await nc.close()

    asyncio.run(scenario())
    reply = raw_request(nats_server.url, command_subject("s1", "start"), good({}))
    assert reply["ok"] is True and reply["seq"] == 1
    with pytest.raises(InvalidCommand):
        decode_reply(
            msgpack.packb(
                {"v": 1, "ok": False, "error": {"code": "invalid_command", "message": "m"}}
            )
        )
    with pytest.raises(DecodeError):
        decode_reply(b"\xc1")


@pytest.mark.parametrize(
    ("reply", "refused"),
    [
        ("_INBOX.abc.def", None),
        ("answers.x1", None),
        ("a..b", "not a subject"),
        ("a.", "not a subject"),
        ("a b", "not a subject"),
        ("a\nb", "not a subject"),
        ("a.*", "not a subject"),
        ("a.>", "not a subject"),
        ("$JS.API.STREAM.LIST", "a system subject"),
    ],
)
def test_a_reply_subject_one_may_not_publish_to_is_refused(
    service: SessionService, reply: str, refused: str | None
) -> None:
    why = service._reply_refusal(reply, crossed=False)
    assert (why is None) if refused is None else (why is not None and refused in why)


def test_two_services_share_a_session_and_every_command_lands_once(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    make_runtime: Callable[[], Plantangenet],
) -> None:

    async def body(bot: BotClient) -> list[dict[str, Any]]:
        await bot.open("shared")
        return list(await asyncio.gather(*(bot.attach("shared", f"a{i}") for i in range(120))))

    with two_services(make_runtime) as services:
        replies = with_client(nats_server.url, journal_config, body)
    runtimes = [s.runtime for s in services]
    assert all(s.handled > 0 for s in services)  # the queue group used both
    history = runtimes[0].history("shared")
    attached = [e.event.agent_id for e in history if e.type_name == "AgentAttached"]  # type: ignore[attr-defined]
    assert sorted(attached) == sorted(f"a{i}" for i in range(120))
    assert sorted(r["seq"] for r in replies) == [e.sequence for e in history[1:]]
    assert runtimes[1].replay("shared") == runtimes[0].replay("shared")


def test_reads_and_refusals_for_sessions_never_started_start_no_actor(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
    service: SessionService,
) -> None:
    # Anyone may name any session id. A `state` query, or a command that cannot apply to a
    # session without events, is answered from the (empty) log: no actor thread is started
    # per id, so clients cannot make the service run threads at will.
    runtime.session("real").start()
    actors = len(pykka.ActorRegistry.get_by_class(SessionActor))  # (other tests' may linger)

    async def scenario() -> tuple[list[dict[str, Any]], list[str]]:
        async with await BotClient.connect(nats_server.url, journal=journal_config) as bot:
            states = await asyncio.gather(*(bot.state(f"ghost-{i}") for i in range(300)))
            refused = []
            for i in range(50):
                try:
                    await bot.attach(f"phantom-{i}", "a")
                    refused.append("ok")
                except PlantangenetError as exc:
                    refused.append(exc.code)
            return list(states), refused

    states, refused = asyncio.run(scenario())
    assert [s["status"] for s in states] == ["new"] * 300
    assert states[7] == plain(SessionState("ghost-7"))  # what an actor would have answered
    assert refused == ["session_not_started"] * 50
    assert len(pykka.ActorRegistry.get_by_class(SessionActor)) == actors
    assert sorted(runtime._sessions) == ["real"] and service.active_sessions == []
    assert runtime.sessions() == {"real": 1}  # nothing written
    assert service.handled == service.failed + 300 == 350
    # A session that exists is still served by its actor, and a start still starts one.
    real = with_client(nats_server.url, journal_config, lambda bot: bot.state("real"))
    assert real["status"] == "active"
    created = with_client(nats_server.url, journal_config, lambda bot: bot.open("ghost-7"))
    assert created["status"] == "active" and created["event_count"] == 1
    assert sorted(runtime._sessions) == ["ghost-7", "real"]
    assert service.active_sessions == ["ghost-7", "real"]


def test_every_error_code_a_reply_can_carry_is_documented() -> None:
    table = (ROOT / "docs" / "protocol.md").read_text().split("| code | meaning |")[1]
    table = table.split("\n\n")[0]
    documented = set(re.findall(r"`([a-z_]+)`", table))
    journal_codes = {c.code for c in ERROR_CLASSES.values() if issubclass(c, JournalError)}
    expected = journal_codes | {
        *("decode_error", "unknown_event_type", "unknown_event_version", "invalid_command"),
        *("invalid_policy", "access_refused", "session_not_started", "session_already_started"),
        *("session_ended", "unknown_agent", "agent_already_attached", "unknown_cursor"),
        *("cursor_already_exists", "limit_exceeded", "encode_error", "payload_too_large"),
        *("duplicate_command", "storage_exhausted", "too_many_readers", "reply_too_large"),
        *("actor_stopped", "error", "insufficient_dust", "unknown_compositor"),
        *("compositor_failed",),
    }
    assert expected <= set(ERROR_CLASSES)
    assert expected - documented == set()


def test_stop_ends_even_when_a_subscription_never_drains(
    runtime: Plantangenet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py's drain waits for a subscription's queue without a limit: a stop (what
    SIGTERM runs) bounds every step by its timeout, goes on, and closes its connections."""
    svc = SessionService(runtime, idle_timeout=300)
    runtime.run(svc.start())
    connections = [svc._nc, *svc._lane_connections]

    async def never_drains() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(svc._sub, "drain", never_drains)
    stopped = threading.Event()

    def stop() -> None:
        runtime.run(svc.stop(timeout=1.0))
        stopped.set()

    threading.Thread(target=stop, daemon=True).start()
    assert stopped.wait(60), "stop waited for a drain that never ends"
    assert all(nc.is_closed for nc in connections)
    assert svc._nc is None and svc._lane_connections == []


@pytest.mark.parametrize(
    "option",
    [
        {"per_principal": 0},
        {"max_in_flight": 0},
        {"first_window": 0},
        {"queued_per_principal": -1},
        {"conflict_retries": -1},
        {"per_principal": 2.5},
    ],
)
def test_service_limits_that_would_serve_nobody_are_refused(
    runtime: Plantangenet, option: dict[str, Any]
) -> None:
    # A window of 0 (or no room in flight) would queue every request for ever.
    name = next(iter(option))
    with pytest.raises(ValueError, match=name):
        SessionService(runtime, **option)


def test_the_bot_client_retries_the_same_request_and_names_what_went_wrong(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    """Replies come back on one subscription: a request with no reply is sent again with
    the same bytes (the same command id) and the first reply wins; no reply at all, or
    nobody serving the subject, is a ``JournalError`` naming it."""
    prefix = "botclient-t"

    async def scenario() -> tuple[list[bytes], dict[str, Any], str, str]:
        responder = await nats.connect(nats_server.url)
        seen: list[bytes] = []

        async def answer_the_second_try(msg: Any) -> None:
            seen.append(msg.data)
            if len(seen) >= 2:  # the first try's reply is lost
                reply = msgpack.packb({"ok": True, "seq": 7}, use_bin_type=True)
                await responder.publish(msg.reply, reply, headers={"Note": "ignored"})

        await responder.subscribe(f"{prefix}.s1.attach", cb=answer_the_second_try)

        async def never_answer(msg: Any) -> None:
            seen.append(b"silent")

        await responder.subscribe(f"{prefix}.s1.silent", cb=never_answer)
        await responder.flush()
        bot = await BotClient.connect(
            nats_server.url, journal=journal_config, command_prefix=prefix, timeout=0.4, retries=2
        )
        try:
            reply = await bot.request("s1", "attach", {"agent_id": "a1"})
            with pytest.raises(JournalError) as silent:
                await bot.request("s1", "silent")
            with pytest.raises(JournalError) as nobody:
                await bot.request("s1", "nobody")
            assert bot._replies.waiting == 0
        finally:
            await bot.close()
            await responder.close()
        return seen, reply, str(silent.value), str(nobody.value)

    seen, reply, silent, nobody = asyncio.run(scenario())
    assert seen[2:] == [b"silent"] * 3  # three tries
    assert len(seen) == 5 and seen[0] == seen[1]  # the same command, sent again
    assert reply["seq"] == 7
    assert "no reply to silent on s1 after 3 tries" in silent
    assert f"no session service is serving {prefix}.s1.nobody" in nobody


def test_a_lanes_reader_lets_the_loop_run_between_messages_of_one_read() -> None:
    """A flooded lane's reader (nats-py's parser awaits ``_process_msg`` per message of a
    read) gives the loop back every 16 messages: other work runs in between."""
    from plantangenet.wire.service_ingress import yield_between_messages

    class Reader:
        def __init__(self) -> None:
            self.seen = 0

        async def _process_msg(self, *args: Any) -> None:
            self.seen += 1

    async def scenario(yielding: bool) -> list[int]:
        nc = Reader()
        if yielding:
            yield_between_messages(nc)
        others_ran_at: list[int] = []
        done = False

        async def other_work() -> None:
            while not done:
                others_ran_at.append(nc.seen)
                await asyncio.sleep(0)

        other = asyncio.ensure_future(other_work())
        await asyncio.sleep(0)  # it has run once, before the read
        for _ in range(64):  # one read's messages, as the parser hands them over
            await nc._process_msg(1, b"s", b"r", b"x", None)
        done = True
        await other
        return others_ran_at

    assert asyncio.run(scenario(False)) == [0]  # nothing in between: one long turn
    assert asyncio.run(scenario(True)) == [0, 16, 32, 48, 64]

"""A command to a session whose actor runs in the service is answered without a task
(:mod:`plantangenet.wire.service_direct`): the same replies, counts and retries as the
task's way, which still answers everything else."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import msgpack
import nats

from plantangenet import EmbeddedNats, JournalConfig, Plantangenet
from plantangenet.actors.future import ReplyFuture
from plantangenet.domain.commands import AttachAgent
from plantangenet.errors import AccessRefused, PlantangenetError
from plantangenet.events.envelope import OPERATOR
from plantangenet.wire.client import BotClient
from plantangenet.wire.protocol import command_subject, encode_request
from plantangenet.wire.service import SessionService
from plantangenet.wire.service_direct import _Asked
from tests.conftest import wait_until, with_client


def handled_by_tasks(service: SessionService) -> list[str]:
    """The subjects of the requests the service answers through a task, from now on."""
    subjects: list[str] = []
    handle = service._handle

    async def counted(msg: Any, *args: Any, **kw: Any) -> None:
        subjects.append(msg.subject.rsplit(".", 1)[-1])
        await handle(msg, *args, **kw)

    service._handle = counted  # type: ignore[method-assign]
    return subjects


def test_a_command_to_a_running_session_takes_no_task_and_the_rest_do(
    nats_server: EmbeddedNats, journal_config: JournalConfig, service: SessionService
) -> None:
    async def body(bot: BotClient) -> tuple[list[str], list[Any], list[Any]]:
        await bot.open("d1")  # started through a task: no actor ran for it before
        tasks = handled_by_tasks(service)
        first = await bot.attach("d1")
        second = await bot.attach("d1", "b")
        together = await asyncio.gather(*(bot.attach("d1", f"b{i}") for i in range(20)))
        refused: list[Any] = []
        try:
            await bot.attach("d1")  # attached already: a refusal, answered at once
        except PlantangenetError as exc:
            refused.append(exc)
        await bot.state("d1")
        await bot.request_many("d1", [("detach", {"agent_id": "a"})])
        return tasks, [first, second, *together], refused

    tasks, replies, refused = with_client(nats_server.url, journal_config, body, agent_id="a")
    assert tasks == ["state", "batch"]  # the 23 single commands took none
    assert sorted(r["seq"] for r in replies) == list(range(2, 24))
    assert [type(e).__name__ for e in refused] == ["AgentAlreadyAttached"]
    assert service.handled == 2 + 25  # open's two requests, then these
    assert service.failed == 1
    wait_until(lambda: service._direct == 0 and not service._tasks and not service._running_of)
    assert service.endpoints[0].requests == service.handled


def test_a_lost_race_is_retried_on_the_caught_up_state(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    service: SessionService,
    make_runtime: Callable[[], Plantangenet],
) -> None:
    """Another writer stores behind the actor's back: the actor's next append loses the
    race, and the command is decided again on the state caught up from the log."""
    other = make_runtime()

    async def body(bot: BotClient) -> tuple[list[str], dict[str, Any]]:
        await bot.open("d2")
        await bot.attach("d2", "a")  # the service's actor runs now
        tasks = handled_by_tasks(service)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: other.session("d2").execute(AttachAgent(agent_id="b"))
        )
        reply = await bot.attach("d2", "c")
        return tasks, reply

    tasks, reply = with_client(nats_server.url, journal_config, body)
    assert tasks == []
    assert reply["seq"] == 4  # after b's, stored by the other writer at 3
    assert service.metrics.conflicts._value.get() == 1
    attached = [
        e.event.agent_id  # type: ignore[attr-defined]
        for e in other.history("d2")
        if e.type_name == "AgentAttached"
    ]
    assert attached == ["a", "b", "c"]


def test_a_retry_limit_of_zero_answers_the_lost_race(
    nats_server: EmbeddedNats, journal_config: JournalConfig, make_runtime: Callable[[], Any]
) -> None:
    runtime, other = make_runtime(), make_runtime()
    service = SessionService(runtime, conflict_retries=0)
    runtime.run(service.start())
    try:

        async def body(bot: BotClient) -> str:
            await bot.open("d3")
            await bot.attach("d3", "a")
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: other.session("d3").execute(AttachAgent(agent_id="b"))
            )
            try:
                await bot.attach("d3", "c")
            except PlantangenetError as exc:
                return exc.code
            return "stored"

        code = with_client(nats_server.url, journal_config, body, retries=0)
    finally:
        runtime.run(service.stop())
    assert code == "concurrency_conflict"
    assert service.metrics.conflicts._value.get() == 1
    wait_until(lambda: service._direct == 0 and not service._running_of)


def test_an_outcome_set_on_the_actors_thread_is_answered_on_the_loop(
    nats_server: EmbeddedNats, runtime: Plantangenet, service: SessionService
) -> None:
    """An actor deciding on its own thread sets the outcome there; the reply, the counts
    and the next turns are the loop's (nothing of the service is touched elsewhere)."""
    loop_thread: list[int] = []
    counted: list[int] = []
    count_answer = service._count_answer

    def on_which_thread(*args: Any) -> Any:
        counted.append(threading.get_ident())
        return count_answer(*args)

    service._count_answer = on_which_thread  # type: ignore[method-assign,assignment]

    async def scenario() -> dict[str, Any]:
        nc = await nats.connect(nats_server.url)
        try:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.flush()
            outcome: concurrent.futures.Future[Any] = ReplyFuture()
            msg = SimpleNamespace(subject="plantangenet.cmd.d4.attach", reply=inbox, headers=None)
            asked = _Asked(
                msg,  # type: ignore[arg-type]
                service.endpoints[0],
                0,
                OPERATOR,
                "d4",
                "attach",
                None,
                runtime.session("d4"),
                AttachAgent(agent_id="a"),
            )

            def start() -> None:  # on the loop, as _start_direct does
                loop_thread.append(threading.get_ident())
                service._running_of[OPERATOR] = 1
                service._direct += 1
                outcome.add_done_callback(lambda f: service._decided(asked, f))

            await asyncio.wrap_future(runtime.loop.submit(_call(start)))
            setter = threading.Thread(
                target=outcome.set_result, args=((AccessRefused("refused on the actor"),),)
            )
            setter.start()
            setter.join()
            return msgpack.unpackb((await sub.next_msg(timeout=10)).data)  # type: ignore[no-any-return]
        finally:
            await nc.close()

    reply = asyncio.run(scenario())
    assert reply["ok"] is False and reply["error"]["code"] == "access_refused"
    assert counted == loop_thread  # counted once, on the loop's thread
    wait_until(lambda: service._direct == 0 and not service._running_of)


async def _call(fn: Callable[[], None]) -> None:
    fn()


def test_a_failure_while_answering_still_ends_the_requests_turn(
    nats_server: EmbeddedNats, journal_config: JournalConfig, service: SessionService
) -> None:
    """A bug in answering (here: counting the answer raises once) leaves that request
    unanswered, logged, but its principal's turn ends and the service serves on."""
    count_answer = service._count_answer
    broken = [1]

    def once(*args: Any) -> Any:
        if broken:
            broken.pop()
            raise RuntimeError("a bug while answering")
        return count_answer(*args)

    async def body(bot: BotClient) -> tuple[str, dict[str, Any]]:
        await bot.open("d5")
        service._count_answer = once  # type: ignore[method-assign,assignment]
        try:
            await bot.attach("d5", "a")
            lost = "answered"
        except PlantangenetError as exc:
            lost = f"{exc.code}: {exc}"
        return lost, await bot.attach("d5", "b")

    lost, reply = with_client(
        nats_server.url, journal_config, body, agent_id="a", timeout=1.0, retries=0
    )
    assert lost.startswith("journal_error: no reply to attach") and not broken
    assert reply["seq"] == 3  # "a" was stored (seq 2), then "b"
    wait_until(lambda: service._direct == 0 and not service._running_of)


def test_a_command_the_actor_cannot_be_told_takes_the_tasks_way(
    nats_server: EmbeddedNats, journal_config: JournalConfig, service: SessionService
) -> None:
    async def body(bot: BotClient) -> tuple[list[str], dict[str, Any]]:
        await bot.open("d6")
        handle = service.runtime.session("d6")
        submit_many = handle.submit_many
        refusing = [1]

        def once(commands: Any) -> Any:
            if refusing:
                refusing.pop()
                raise RuntimeError("the actor's inbox refused it")
            return submit_many(commands)

        handle.submit_many = once  # type: ignore[method-assign]
        tasks = handled_by_tasks(service)
        try:
            return tasks, await bot.attach("d6", "a")
        finally:
            del handle.submit_many

    tasks, reply = with_client(nats_server.url, journal_config, body, agent_id="a")
    assert tasks == ["attach"] and reply["seq"] == 2
    wait_until(lambda: not (service._direct or service._running_of or service._busy.get("d6")))


def test_a_request_answered_at_once_ends_its_turn_on_the_loops_next(
    nats_server: EmbeddedNats, runtime: Plantangenet, service: SessionService
) -> None:
    """Two duplicates of a stored command, queued for one principal: the actor answers
    both at once, inside the dispatch; their turns end on the loop's next turn (as a
    task's would), not within it, so what that principal sends meanwhile queues."""
    payload = encode_request({"agent_id": "a"}, command_id="d7-attach-a")

    async def store_it() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            start = encode_request({}, command_id="d7-start")
            for name, data in (("start", start), ("attach", payload)):
                reply = await nc.request(command_subject("d7", name), data, timeout=10)
                assert msgpack.unpackb(reply.data)["ok"], reply.data
        finally:
            await nc.close()

    asyncio.run(store_it())
    handled = service.handled

    def duplicate() -> Any:
        msg = SimpleNamespace(
            subject=command_subject("d7", "attach"), reply="", data=payload, headers=None
        )
        return (msg, service.endpoints[0], time.perf_counter_ns())

    async def dispatch_two() -> tuple[int, int]:
        service._waiting[OPERATOR] = deque([duplicate(), duplicate()])
        service._turns.append(OPERATOR)
        service._dispatch()
        return service.handled - handled, service._running_of.get(OPERATOR, 0)

    answered, running = runtime.run(dispatch_two())
    assert answered == 2  # both answered within the dispatch
    assert running == 2  # ... and their turns still held until the loop's next
    wait_until(lambda: not service._running_of and not service._waiting)


def test_a_reply_the_connection_cannot_take_at_once_is_sent_by_a_task_with_its_frame(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    service: SessionService,
    monkeypatch: Any,
) -> None:
    """A full write buffer (``queue_frames`` says no): the reply goes out through
    ``_reply`` as a task of its own, with the frame built once, and arrives."""
    import plantangenet.wire.service_direct as direct

    frames: list[bytes | None] = []
    reply = service._reply

    async def traced(msg: Any, answer: bytes, headers: Any = None, frame: Any = None) -> None:
        frames.append(frame)
        await reply(msg, answer, headers, frame)

    async def body(bot: BotClient) -> dict[str, Any]:
        await bot.open("d9")
        await bot.attach("d9", "a")  # the service's actor runs now
        monkeypatch.setattr(direct, "queue_frames", lambda *a: False)
        service._reply = traced  # type: ignore[method-assign,assignment]
        return await bot.attach("d9", "b")

    answer = with_client(nats_server.url, journal_config, body)
    assert answer["seq"] == 3
    assert len(frames) == 1 and frames[0] is not None and b"PUB " in frames[0]

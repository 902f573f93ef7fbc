"""The event-loop thread: hand-offs from other threads, coroutines submitted, answers wrapped."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from plantangenet.actors.future import ReplyFuture
from plantangenet.log.loop import EventLoopThread


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    thread = EventLoopThread(name="test-loop").start()
    yield thread
    thread.stop()


def test_calls_from_many_threads_all_run_in_each_threads_order(
    loop_thread: EventLoopThread,
) -> None:
    ran: list[tuple[int, int]] = []
    finished = threading.Event()
    threads, calls = 8, 2_000

    def record(who: int, n: int) -> None:
        ran.append((who, n))
        if len(ran) == threads * calls:
            finished.set()

    def hand_off(who: int) -> None:
        for n in range(calls):
            loop_thread.call_soon(record, who, n)

    workers = [threading.Thread(target=hand_off, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert finished.wait(10)
    for who in range(threads):
        assert [n for w, n in ran if w == who] == list(range(calls))


def test_hand_offs_queued_while_the_loop_is_busy_share_one_wake_up(
    loop_thread: EventLoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    wake_ups: list[Any] = []
    real = loop_thread.loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        wake_ups.append(callback)
        return real(callback, *args)

    monkeypatch.setattr(loop_thread.loop, "call_soon_threadsafe", counting)
    busy, release = threading.Event(), threading.Event()

    def hold_the_loop() -> None:
        busy.set()
        release.wait(10)  # the loop's thread is busy (as with a long callback)

    loop_thread.call_soon(hold_the_loop)
    assert busy.wait(10)
    ran: list[int] = []
    done = threading.Event()
    for n in range(1_000):
        loop_thread.call_soon(ran.append, n)
    loop_thread.call_soon(done.set)
    release.set()
    assert done.wait(10)
    assert ran == list(range(1_000))
    # the first call_soon woke the loop; the 1,001 queued behind it: one more wake-up
    assert len(wake_ups) == 2


def test_a_failing_hand_off_is_logged_and_the_next_ones_run(
    loop_thread: EventLoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    done = threading.Event()

    def fail() -> None:
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="plantangenet.loop"):
        loop_thread.call_soon(fail)
        loop_thread.call_soon(done.set)
        assert done.wait(10)
    assert any("boom" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_submit_gives_the_coroutines_result_or_error(loop_thread: EventLoopThread) -> None:
    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    async def fail() -> int:
        raise KeyError("nope")

    assert loop_thread.submit(answer()).result(5) == 42
    with pytest.raises(KeyError):
        loop_thread.submit(fail()).result(5)


def test_cancelling_a_submitted_coroutine_cancels_it_on_the_loop(
    loop_thread: EventLoopThread,
) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    future = loop_thread.submit(forever())
    assert started.wait(5)
    assert future.cancel() or future.cancelled()
    assert cancelled.wait(5)


def test_a_coroutine_cancelled_before_it_starts_never_runs(loop_thread: EventLoopThread) -> None:
    release = threading.Event()
    loop_thread.call_soon(lambda: release.wait(10))  # keeps the loop busy meanwhile
    ran: list[bool] = []

    async def never() -> None:
        ran.append(True)

    future = loop_thread.submit(never())
    assert future.cancel()
    release.set()
    assert loop_thread.submit(asyncio.sleep(0.05, result="after")).result(5) == "after"
    assert ran == [] and future.cancelled()


def test_run_then_hands_the_ended_task_to_its_callback_on_the_loop(
    loop_thread: EventLoopThread,
) -> None:
    ended: concurrent.futures.Future[tuple[asyncio.Future[int], bool]] = concurrent.futures.Future()
    failed: concurrent.futures.Future[asyncio.Future[int]] = concurrent.futures.Future()

    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 7

    async def fail() -> int:
        raise KeyError("nope")

    loop_thread.run_then(answer(), lambda t: ended.set_result((t, loop_thread.in_loop_thread)))
    loop_thread.run_then(fail(), failed.set_result)
    task, on_loop = ended.result(5)
    assert on_loop and task.result() == 7  # read from this thread: the task has ended
    with pytest.raises(KeyError):
        failed.result(5).result()


def test_run_then_on_the_loop_creates_the_task_at_once_and_keeps_the_order(
    loop_thread: EventLoopThread,
) -> None:
    order: list[str] = []
    seen: concurrent.futures.Future[tuple[int, int]] = concurrent.futures.Future()
    ended = threading.Event()

    async def step(name: str) -> None:
        order.append(name)
        if len(order) == 3:
            ended.set()

    def on_loop() -> None:
        before = len(asyncio.all_tasks())
        loop_thread.run_then(step("first"), lambda _: None)
        created = len(asyncio.all_tasks())  # no turn of the loop in between
        loop_thread.call_soon(order.append, "queued")
        loop_thread.run_then(step("second"), lambda _: None)
        seen.set_result((before, created))

    loop_thread.call_soon(on_loop)
    before, created = seen.result(5)
    assert created == before + 1
    assert ended.wait(5)
    assert order == ["first", "queued", "second"]


def test_run_then_on_a_stopping_loop_still_hears_of_the_cancelled_task() -> None:
    thread = EventLoopThread(name="test-stopping").start()
    heard: concurrent.futures.Future[asyncio.Future[None]] = concurrent.futures.Future()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(60)

    thread.run_then(forever(), heard.set_result)
    assert started.wait(5)
    thread.stop()
    assert heard.result(5).cancelled()
    coro = forever()
    with pytest.raises(RuntimeError):
        thread.run_then(coro, print)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def test_a_closed_loop_refuses_work_and_closes_the_coroutine() -> None:
    thread = EventLoopThread(name="test-closed").start()
    thread.stop()
    ran: list[bool] = []

    async def never() -> None:
        ran.append(True)

    coro = never()
    with pytest.raises(RuntimeError):
        thread.submit(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # never runs, no warning
    with pytest.raises(RuntimeError):
        thread.call_soon(print)
    thread.call_later(0.01, print)  # does nothing, raises nothing
    assert ran == []


@pytest.mark.parametrize("kind", ["result", "error", "cancelled"])
def test_wrap_gives_a_coroutine_the_outcome_of_another_threads_future(
    loop_thread: EventLoopThread, kind: str
) -> None:
    source: concurrent.futures.Future[int] = ReplyFuture()

    async def wait() -> Any:
        wrapped = loop_thread.wrap(source)
        threading.Thread(target=end).start()
        try:
            return await wrapped
        except asyncio.CancelledError:
            return "cancelled"
        except LookupError as exc:
            return exc

    def end() -> None:
        if kind == "result":
            source.set_result(7)
        elif kind == "error":
            source.set_exception(LookupError("gone"))
        else:
            source.cancel()

    outcome = loop_thread.submit(wait()).result(5)
    if kind == "result":
        assert outcome == 7
    elif kind == "error":
        assert isinstance(outcome, LookupError)
    else:
        assert outcome == "cancelled"


def test_wrap_of_a_future_already_ended_answers_at_once(loop_thread: EventLoopThread) -> None:
    source: concurrent.futures.Future[str] = concurrent.futures.Future()
    source.set_result("ready")

    async def wait() -> str:
        return await loop_thread.wrap(source)

    assert loop_thread.submit(wait()).result(5) == "ready"


def test_cancelling_the_wrapped_future_cancels_the_source(loop_thread: EventLoopThread) -> None:
    source: concurrent.futures.Future[int] = ReplyFuture()

    async def give_up() -> None:
        wrapped = loop_thread.wrap(source)
        wrapped.cancel()
        await asyncio.sleep(0)

    loop_thread.submit(give_up()).result(5)
    assert source.cancelled()


def test_a_future_ended_on_the_loop_is_copied_at_once_and_calls_from_there_queue_directly(
    loop_thread: EventLoopThread,
) -> None:
    async def scenario() -> tuple[bool, list[str]]:
        source: concurrent.futures.Future[int] = ReplyFuture()
        wrapped = loop_thread.wrap(source)
        source.set_result(3)  # as a session actor answers when the loop takes its turn
        copied = wrapped.done() and wrapped.result() == 3
        order: list[str] = []
        loop_thread.call_soon(order.append, "first")
        loop_thread.call_soon(order.append, "second")
        await asyncio.sleep(0)
        return copied, order

    copied, order = loop_thread.submit(scenario()).result(5)
    assert copied
    assert order == ["first", "second"]


def test_in_loop_thread_is_true_only_on_the_running_loops_thread() -> None:
    thread = EventLoopThread(name="test-ident")
    assert not thread.in_loop_thread  # not started yet
    thread.start()
    asked: concurrent.futures.Future[bool] = concurrent.futures.Future()
    thread.call_soon(lambda: asked.set_result(thread.in_loop_thread))
    assert asked.result(5) and not thread.in_loop_thread
    thread.stop()
    # Another thread started later may get the ended thread's identifier: still not it.
    later: list[bool] = []
    other = threading.Thread(target=lambda: later.append(thread.in_loop_thread))
    other.start()
    other.join()
    assert later == [False]

"""ReplyFuture: a concurrent.futures.Future that shares one lock and waits lazily."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import logging
import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantangenet.actors.future import ReplyFuture


def later(delay: float, fn: object, *args: object) -> threading.Timer:
    timer = threading.Timer(delay, fn, args)  # type: ignore[arg-type]
    timer.start()
    return timer


def test_it_is_a_concurrent_future() -> None:
    future: ReplyFuture[int] = ReplyFuture()
    assert isinstance(future, cf.Future)
    assert not future.done() and not future.running() and not future.cancelled()
    assert "pending" in repr(future)


def test_result_waits_for_another_thread() -> None:
    future: ReplyFuture[int] = ReplyFuture()
    later(0.05, future.set_result, 5)
    assert future.result(5) == 5
    assert future.done() and future.exception() is None
    assert "finished" in repr(future)


def test_an_exception_is_raised_by_result_and_returned_by_exception() -> None:
    future: ReplyFuture[int] = ReplyFuture()
    later(0.05, future.set_exception, ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        future.result(5)
    error = future.exception(0)
    assert isinstance(error, ValueError)


def test_a_timeout_raises_and_leaves_the_future_usable() -> None:
    future: ReplyFuture[int] = ReplyFuture()
    with pytest.raises(cf.TimeoutError):
        future.result(0.02)
    with pytest.raises(cf.TimeoutError):
        future.exception(0)
    assert future._sleepers in (None, [])  # the timed-out waiter left no lock behind
    future.set_result(1)
    assert future.result(0) == 1


def test_every_waiting_thread_wakes() -> None:
    future: ReplyFuture[str] = ReplyFuture()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(future.result(5))) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    future.set_result("x")
    for thread in threads:
        thread.join(5)
    assert results == ["x"] * 8


def test_ending_one_future_does_not_end_a_wait_on_another() -> None:
    waited: ReplyFuture[int] = ReplyFuture()
    other: ReplyFuture[int] = ReplyFuture()
    later(0.02, other.set_result, 1)
    with pytest.raises(cf.TimeoutError):
        waited.result(0.2)  # the shared lock must not wake it
    assert other.result(0) == 1


def test_cancel() -> None:
    future: ReplyFuture[int] = ReplyFuture()
    seen: list[bool] = []
    future.add_done_callback(lambda f: seen.append(f.cancelled()))
    assert future.cancel() and future.cancel()
    assert future.cancelled() and future.done() and seen == [True]
    with pytest.raises(cf.CancelledError):
        future.result(0)
    with pytest.raises(cf.CancelledError):
        future.exception(0)
    with pytest.raises(cf.InvalidStateError):
        future.set_result(1)
    with pytest.raises(cf.InvalidStateError):
        future.set_exception(ValueError())
    assert not future.set_running_or_notify_cancel()


def test_cancel_wakes_a_waiting_thread() -> None:
    future: ReplyFuture[int] = ReplyFuture()
    later(0.05, future.cancel)
    with pytest.raises(cf.CancelledError):
        future.result(5)


def test_a_finished_or_running_future_cannot_be_cancelled() -> None:
    finished: ReplyFuture[int] = ReplyFuture()
    finished.set_result(1)
    assert not finished.cancel()
    running: ReplyFuture[int] = ReplyFuture()
    assert running.set_running_or_notify_cancel() and running.running()
    assert not running.cancel()
    running.set_result(2)
    assert running.result(0) == 2


def test_it_ends_once() -> None:
    future: ReplyFuture[int] = ReplyFuture()
    future.set_result(1)
    with pytest.raises(cf.InvalidStateError):
        future.set_result(2)
    with pytest.raises(cf.InvalidStateError):
        future.set_exception(ValueError())
    assert future.result(0) == 1


def test_callbacks_run_once_in_order_and_a_failing_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    future: ReplyFuture[int] = ReplyFuture()
    calls: list[str] = []

    def failing(_: cf.Future[int]) -> None:
        calls.append("failing")
        raise RuntimeError("callback bug")

    future.add_done_callback(lambda f: calls.append(f"first {f.result()}"))
    future.add_done_callback(failing)
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        future.set_result(3)
    future.add_done_callback(lambda f: calls.append("after"))  # runs at once
    assert calls == ["first 3", "failing", "after"]
    assert "callback bug" in caplog.text


def test_concurrent_futures_wait_and_as_completed() -> None:
    first: ReplyFuture[int] = ReplyFuture()
    second: ReplyFuture[int] = ReplyFuture()
    later(0.05, first.set_result, 1)
    done, not_done = cf.wait([first, second], timeout=5, return_when=cf.FIRST_COMPLETED)
    assert done == {first} and not_done == {second}
    later(0.05, second.set_exception, ValueError("b"))
    done, not_done = cf.wait([first, second], timeout=5, return_when=cf.FIRST_EXCEPTION)
    assert done == {first, second} and not not_done
    # Used as any concurrent future: typeshed types as_completed's argument by the base
    # class's private members (a Condition, a settable _waiters), which ReplyFuture
    # replaces (a shared lock, a lazy property).
    futures: list[cf.Future[int]] = [ReplyFuture() for _ in range(5)]
    for i, future in enumerate(reversed(futures)):
        later(0.01 * (i + 1), future.set_result, i)
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=5)) == list(range(5))


def test_asyncio_wrap_future() -> None:
    async def main() -> int:
        future: ReplyFuture[int] = ReplyFuture()
        later(0.05, future.set_result, 9)
        return await asyncio.wrap_future(future)

    assert asyncio.run(main()) == 9


def test_futures_share_one_lock_and_track_few_objects() -> None:
    a: ReplyFuture[int] = ReplyFuture()
    b: ReplyFuture[int] = ReplyFuture()
    assert a._condition is b._condition
    gc.collect()
    before = len(gc.get_objects())
    kept: list[ReplyFuture[int]] = [ReplyFuture() for _ in range(1000)]
    made = len(gc.get_objects()) - before - 1  # the list holding them
    assert made <= 1000 + 50, made  # one tracked object each (a standard Future: ~10)
    assert len(kept) == 1000


@settings(max_examples=30, deadline=None)
@given(
    outcomes=st.lists(st.one_of(st.integers(), st.just(None)), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_many_threads_resolving_in_any_order(outcomes: list[int | None], seed: int) -> None:
    # None: the future is answered with an exception; resolvers run in a random order
    # while the caller waits on each future in turn.
    futures: list[ReplyFuture[int]] = [ReplyFuture() for _ in outcomes]
    order = list(range(len(outcomes)))
    random.Random(seed).shuffle(order)

    def resolve(indexes: list[int]) -> None:
        for i in indexes:
            value = outcomes[i]
            if value is None:
                futures[i].set_exception(KeyError(i))
            else:
                futures[i].set_result(value)

    threads = [threading.Thread(target=resolve, args=(order[k::3],)) for k in range(3)]
    for thread in threads:
        thread.start()
    for i, future in enumerate(futures):
        expected = outcomes[i]
        if expected is None:
            with pytest.raises(KeyError):
                future.result(5)
        else:
            assert future.result(5) == expected
    for thread in threads:
        thread.join(5)

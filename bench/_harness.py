"""Shared helpers for the benchmarks in this folder (not a benchmark itself).

Importing this module puts the repository checkout first on ``sys.path``, so
``.venv/bin/python bench/<script>.py`` benchmarks the code in this checkout
even when the installed (editable) package cannot be imported from outside
the repository root.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import dataclasses
import hashlib
import importlib.metadata
import io
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy  # noqa: E402

from plantangenet import (  # noqa: E402
    CODEC,
    CursorMoved,
    Envelope,
    Event,
    MoveCursor,
    Plantangenet,
    SessionHandle,
)
from plantangenet.nats.embedded import find_nats_server_binary  # noqa: E402

T = TypeVar("T")


# -- environment ------------------------------------------------------------------


def nats_server_version() -> str:
    """``nats-server --version`` of the binary EmbeddedNats starts."""
    try:
        binary = find_nats_server_binary()
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip() or out.stderr.strip() or "unknown"
    except Exception as exc:  # only informative
        return f"unknown ({exc})"


def environment_line() -> str:
    """One line naming the interpreter, the client and server versions and the cores."""
    return (
        f"python {platform.python_version()}, nats-py {importlib.metadata.version('nats-py')}, "
        f"{nats_server_version()}, {os.cpu_count()} CPUs"
    )


# -- raw nats-py client ---------------------------------------------------------------


class RawClient:
    """A plain nats-py connection with its own event loop, driven from the main thread.

    Used for the raw baselines and to fill or inspect streams outside the timed parts.
    """

    def __init__(self, url: str, *, max_pending: int = 4000) -> None:
        self._runner = asyncio.Runner()
        try:
            self.nc: Any = self.run(nats.connect(url, name="bench-raw", connect_timeout=5))
        except BaseException:
            self._runner.close()
            raise
        self.js: Any = self.nc.jetstream(publish_async_max_pending=max_pending)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this client's loop until it finishes."""
        return self._runner.run(coro)

    def push_read(
        self,
        stream: str,
        subject: str,
        *,
        count: int | None = None,
        on_data: Callable[[bytes], object] | None = None,
    ) -> tuple[float, int]:
        """:func:`raw_push_read` on this client's connection: (seconds, messages read)."""
        return self.run(raw_push_read(self.nc, stream, subject, count=count, on_data=on_data))

    def close(self) -> None:
        try:
            if not self.nc.is_closed:
                self.run(self.nc.drain())
        finally:
            self._runner.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: How every read benchmark names its raw baseline (:func:`raw_push_read`).
RAW_READ_LABEL = "raw nats-py push consumer (callback)"

#: Pending limits of the raw reader's subscription: far more than any benchmark reads,
#: so nats-py never drops a message as a slow consumer.
RAW_PENDING_MSGS = 4_000_000
RAW_PENDING_BYTES = 4 * 1024**3


async def raw_push_read(
    nc: Any,
    stream: str,
    subject: str,
    *,
    count: int | None = None,
    on_data: Callable[[bytes], object] | None = None,
    timeout: float = 120.0,
) -> tuple[float, int]:
    """The fastest read of ``subject``'s stored messages we found with raw nats-py.

    Every read benchmark's raw baseline: (seconds, messages read). Reads the
    first ``count`` messages of ``subject`` in ``stream`` (default: every
    message stored when the read starts, the ``num_pending`` of the new
    consumer), touching each one's data (``len(msg.data)``; with ``on_data``,
    also ``on_data(msg.data)``, whose exception ends the read). Timed from the
    subscription to the last message wanted, consumer creation included (as
    the library's readers time theirs); the consumer is deleted afterwards,
    untimed.

    How: a core subscription on a fresh inbox, with an ``async`` callback and
    pending limits far above any benchmark's size, then an ephemeral push
    consumer delivering there (``js.add_consumer``: ``deliver_policy=all``,
    ``filter_subject``, ``ack_policy=none``, ``flow_control=True``,
    ``idle_heartbeat=5``, memory storage, one replica). The callback counts
    data messages (reply ``$JS.ACK.*``) and answers flow-control requests
    (and a stalled heartbeat's ``Nats-Consumer-Stalled``) itself.

    Variants measured on the same 50,000-event session (CursorMoved envelopes
    of about 360 bytes with a ``Nats-Msg-Id`` header, from
    ``prepare_long_session``), nats-py 2.16.0, nats-server 2.15.1, 2 cores
    shared with other work (so the wall figures of one variant vary by +-30%
    from round to round): msgs/s, the median of each run of 5-15 alternating
    rounds (seven runs; the ordered consumer was not in the 7th), and the
    reading process's CPU per message:

    * ``js.subscribe(subject, ordered_consumer=True, cb=...)`` with
      ``deliver_policy=all``, ``idle_heartbeat=5`` and the limits above:
      83.9k / 75.7k / 67.7k / 60.3k / 66.1k / 69.0k, 12.5-14.6 us/msg (nats-py
      checks the order of every message);
    * ``js.subscribe(subject, cb=..., config=ConsumerConfig(ack_policy=NONE,
      ...), flow_control=True, idle_heartbeat=5)``, a plain push consumer:
      98.3k / 78.0k / 75.2k / 72.4k / 64.8k / 76.9k, then 86.2k in a 7th run of
      15 rounds; 11.1-12.8 us/msg;
    * the same without flow control: 90.4k / 81.8k / 75.9k / 67.1k / 70.2k /
      74.4k, then 80.1k; 10.9-12.9 us/msg;
    * this one (``js.add_consumer`` + ``nc.subscribe(cb=...)``, flow control
      answered in the callback): 96.0k / 86.7k / 79.7k (a scratch copy of it),
      64.6k (65.8k the scratch copy) / 66.6k / 70.0k, then 88.7k (the fastest
      of the three in 7 of the 15 rounds, the other two 4 each); 11.0-12.3
      us/msg. The same with the counting behind a second coroutine call: 93.4k
      / 79.5k / 73.4k in the first three runs;
    * for comparison, the ``await sub.next_msg()`` loop on an ordered consumer
      the read benchmarks used before: 22.0k / 19.1k, 48 us/msg.

    The three callback variants without ordering are tied within the noise: by
    run medians this one was the fastest in three runs of seven (the longest
    included), the plain push consumer with flow control in three, the one
    without in one. This one is kept: it led the longest run, and the count it
    reads to comes with the consumer's creation (``num_pending``), with no
    extra request.

    :param nc: a connected nats-py client.
    """
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    seen = 0
    size = 0
    wanted = count

    async def on_msg(msg: Any) -> None:
        nonlocal seen, size
        reply = msg.reply
        if reply[:8] == "$JS.ACK.":  # a stored message
            if done.done():
                return  # past the last one wanted
            data = msg.data
            size += len(data)
            if on_data is not None:
                try:
                    on_data(data)
                except Exception as exc:
                    done.set_exception(exc)
                    return
            seen += 1
            if seen == wanted:
                done.set_result(None)
        elif reply:  # a flow-control request
            await nc.publish(reply)
        elif msg.headers and (stalled := msg.headers.get("Nats-Consumer-Stalled")):
            await nc.publish(stalled)

    start = time.perf_counter()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(
        inbox,
        cb=on_msg,
        pending_msgs_limit=RAW_PENDING_MSGS,
        pending_bytes_limit=RAW_PENDING_BYTES,
    )
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE,
        max_deliver=1,
        flow_control=True,
        idle_heartbeat=5.0,
        deliver_subject=inbox,
        filter_subject=subject,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=5.0,
    )
    name = None
    try:
        info = await js.add_consumer(stream, config=config)
        name = info.name
        stored = int(info.num_pending or 0)
        if count is None:
            # Messages may arrive before this reply is processed: they are counted.
            wanted = stored
            if seen >= wanted and not done.done():
                done.set_result(None)
        elif count > stored:
            raise RuntimeError(f"raw read: {subject} holds {stored} messages, not {count}")
        await asyncio.wait_for(done, timeout)
        elapsed = time.perf_counter() - start
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if name is not None:
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, name)
    if size == 0:
        raise RuntimeError(f"raw read: read nothing from {subject}")
    return elapsed, seen


def report_against_raw(
    library: Sequence[tuple[str, float]], raw_rate: float, unit: str = "events/s"
) -> None:
    """Print each library figure, the raw push-consumer figure and the ratio library/raw."""
    width = max(len(RAW_READ_LABEL), *(len(label) for label, _ in library))
    for label, rate in library:
        print(f"{label.ljust(width)}  {rate:>10,.0f} {unit}")
    print(f"{RAW_READ_LABEL.ljust(width)}  {raw_rate:>10,.0f} msgs/s (same run, same messages)")
    for label, rate in library:
        print(f"{(label + ' / raw').ljust(width)}  {rate / raw_rate:>10.2f}")


def ordered_consumer_config(start_sequence: int) -> ConsumerConfig:
    """Deliver from ``start_sequence`` on, as the library's replays do."""
    return ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(start_sequence, 1)
    )


async def count_appends(js: Any, subject: str, first: int, last: int) -> tuple[int, int]:
    """(appends, messages) among ``subject``'s messages with stream sequence ``first..last``.

    The library writes a group commit of several events as one JetStream atomic
    batch (every message carries ``Nats-Batch-Id``) and a single event as one
    plain message, and the stored messages keep those headers.
    """
    sub = await js.subscribe(subject, ordered_consumer=True, config=ordered_consumer_config(first))
    batches: set[str] = set()
    singles = 0
    messages = 0
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            seq = msg.metadata.sequence.stream
            if seq > last:
                break
            messages += 1
            batch = (msg.headers or {}).get("Nats-Batch-Id")
            if batch is None:
                singles += 1
            else:
                batches.add(batch)
            if seq == last:
                break
    finally:
        await sub.unsubscribe()
    return len(batches) + singles, messages


# -- payloads -----------------------------------------------------------------------------


def new_id() -> str:
    """A fresh 32-hex-character id, like the library's command and event ids."""
    return uuid.uuid4().hex


def cursor_move(i: int, agent_id: str = "bot-1", cursor_id: str = "c1") -> CursorMoved:
    """The ``i``-th cursor move of a benchmark (the same values on both sides)."""
    return CursorMoved(agent_id, cursor_id, ("x",), float(i), float(i + 1))


def start_template_session(pg: Plantangenet, session_id: str) -> SessionHandle:
    """Start ``session_id`` through the library: one bot, one cursor, one move.

    Its last event is what a library-written CursorMoved looks like in the log.
    """
    handle = pg.session(session_id)
    handle.start({"bench": session_id})
    handle.attach("bot-1", kind="bot", name="bench bot")
    handle.add_cursor("bot-1", "c1", ["x"], 0.0, 1.0)
    handle.execute(MoveCursor(agent_id="bot-1", cursor_id="c1", axes=("x",), start=0.0, end=1.0))
    return handle


async def last_envelope(js: Any, stream: str, subject: str) -> tuple[Envelope, bytes]:
    """The last stored envelope of ``subject`` and the SHA-256 of its payload."""
    msg = await js.get_last_msg(stream, subject)
    return CODEC.decode(msg.data, sequence=msg.seq), hashlib.sha256(msg.data).digest()


_ENVELOPE_FIELDS = {f.name for f in dataclasses.fields(Envelope)}


def encoded_like(
    template: Envelope, session_id: str, events: Iterable[Event], previous_hash: bytes = b""
) -> Iterator[tuple[str, bytes]]:
    """(command id, CODEC-encoded envelope), one command per event, shaped like ``template``.

    ``template`` is an envelope the library stored (see :func:`last_envelope`),
    so the raw payloads carry whatever the library adds (agent, authorization,
    ...). Each gets fresh ids and time, the revision after the one before (as the
    session's writer numbers them), and ``previous_hash`` chains the
    payloads as the library chains a session's events (SHA-256 of the
    previous payload; ``previous_hash`` argument for the first).
    """
    previous = previous_hash
    chained = "previous_hash" in _ENVELOPE_FIELDS
    revision = getattr(template, "revision", None)  # each event numbered after the template
    for event in events:
        cid = new_id()
        changes: dict[str, Any] = {
            "event": event,
            "session_id": session_id,
            "event_id": new_id(),
            "causation_id": cid,
            "correlation_id": cid,
            "occurred_at": datetime.now(UTC),
            "sequence": None,
        }
        if chained:
            changes["previous_hash"] = previous
        if revision is not None:
            revision += 1
            changes["revision"] = revision
        payload = CODEC.encode(dataclasses.replace(template, **changes))
        previous = hashlib.sha256(payload).digest()
        yield cid, payload


def msg_id(session_id: str, command_id: str, index: int = 0) -> str:
    """The ``Nats-Msg-Id`` the library gives the ``index``-th event of a command."""
    return f"{session_id}:{command_id}:{index}"


def prepare_long_session(
    pg: Plantangenet, raw: RawClient, stream: str, prefix: str, session_id: str, events: int
) -> int:
    """Write a hash-chained session of ``events`` events quickly; returns its last sequence.

    The library starts it (SessionStarted, AgentAttached, CursorAdded, one
    CursorMoved, see :func:`start_template_session`); raw ``publish_async``
    adds the other moves, each shaped like the library's move and chained to
    the previous event, so the whole session verifies as intact.
    """
    if events < 5:
        raise ValueError("a long session has at least 5 events")
    start_template_session(pg, session_id)
    pg.stop_session(session_id)
    subject = f"{prefix}.{session_id}"
    template, previous = raw.run(last_envelope(raw.js, stream, subject))
    moves = (cursor_move(i) for i in range(1, events - 3))
    return raw.run(
        publish_chained(raw, subject, encoded_like(template, session_id, moves, previous))
    )


async def publish_chained(
    raw: RawClient, subject: str, messages: Iterable[tuple[str, bytes]]
) -> int:
    """``publish_async`` every (command id, payload) to ``subject``; the last sequence."""
    js = raw.js
    session_id = subject.rsplit(".", 1)[1]
    futures = []
    for cid, payload in messages:
        hdr = {"Nats-Msg-Id": msg_id(session_id, cid)}
        futures.append(await js.publish_async(subject, payload, headers=hdr))
    await js.publish_async_completed()
    last = 0
    for future in futures:
        ack = future.result()
        if ack.duplicate:
            raise RuntimeError("fill: duplicate acknowledgement")
        last = max(last, ack.seq)
    return last


# -- statistics and output --------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_kib() -> int:
    """Resident set size of this process now (KiB; the peak so far without /proc)."""
    now = _proc_status_kib("VmRSS")
    return now if now is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib() -> int:
    """Peak resident set size of this process (KiB).

    ``VmHWM`` from /proc, which starts afresh at exec and can be reset with
    :func:`reset_peak_rss`; ``ru_maxrss`` elsewhere (on Linux that one is
    inherited from the parent at fork, so it is useless in a child process).
    """
    peak = _proc_status_kib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def thread_cpu() -> dict[str, float] | None:
    """CPU seconds (user + system) each live thread of this process has used, by name.

    Linux only (``/proc/self/task``); ``None`` elsewhere. Threads that ended are not
    listed: take the readings while the threads measured are still running.
    """
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            if not out and not os.path.isdir("/proc/self/task"):
                return None
            continue
        out[thread.name] = (int(fields[11]) + int(fields[12])) / tick
    return out


class CpuSplit:
    """CPU per item spent by the calling thread, the runtime's loop thread, and the rest.

    ``start()`` and ``stop()`` bracket the measured work; "rest" is the process's CPU
    minus the two (in the library benchmarks: the session actors). Reads ``/proc``,
    so the split is empty off Linux; the process total is always there.

    :param loop: the name of the runtime's event-loop thread (``pg.loop.name``).
    """

    def __init__(self, loop: str) -> None:
        self.loop = loop

    def start(self) -> CpuSplit:
        self._threads = thread_cpu()
        self._process = time.process_time()
        return self

    def stop(self, items: int) -> dict[str, float]:
        """Microseconds per item: ``total``, and ``caller``, ``loop``, ``actors`` on Linux."""
        total = time.process_time() - self._process
        threads = thread_cpu()
        split = {"total": total / items * 1e6}
        if self._threads is None or threads is None:
            return split
        caller_name = threading.current_thread().name
        caller = threads.get(caller_name, 0.0) - self._threads.get(caller_name, 0.0)
        loop = threads.get(self.loop, 0.0) - self._threads.get(self.loop, 0.0)
        split["caller"] = caller / items * 1e6
        split["loop"] = loop / items * 1e6
        split["actors"] = max(total - caller - loop, 0.0) / items * 1e6
        return split


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with right-aligned columns (the first left-aligned)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        lines.append("  ".join(parts))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def rotate(items: Sequence[T], by: int) -> list[T]:
    """``items`` rotated left by ``by`` (to alternate the order of measurements)."""
    k = by % len(items)
    return [*items[k:], *items[:k]]


_BLOCKING = {
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'acquire' of '_thread.RLock' objects>",
    "<method 'poll' of 'select.epoll' objects>",
    "<method 'select' of 'select.epoll' objects>",
    "<built-in method time.sleep>",
}


class ThreadProfiler:
    """cProfile every thread started while active (plus the calling thread).

    cProfile only sees the thread that enabled it; the runtime works on its
    event-loop thread and on pykka actor threads, so a profiler is enabled in
    each new thread through :func:`threading.setprofile`. Start it *before*
    the runtime so the loop thread is covered. Stop it after the threads end.
    """

    def __init__(self) -> None:
        self._profilers: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _install(self, frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)
        profiler = cProfile.Profile()
        with self._lock:
            self._profilers.append(profiler)
        profiler.enable()

    def start(self) -> ThreadProfiler:
        threading.setprofile(self._install)
        main = cProfile.Profile()
        self._profilers.append(main)
        main.enable()
        return self

    def report(self, top: int = 30) -> str:
        """Stop profiling and return the ``top`` functions by own time, all threads merged."""
        threading.setprofile(None)
        for profiler in self._profilers:
            profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(self._profilers[0], stream=out)
        for profiler in self._profilers[1:]:
            stats.add(profiler)
        # Threads waiting (for a lock, a queue, the socket) are not costs: drop them.
        table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
        for key in list(table):
            if key[2] in _BLOCKING:
                del table[key]
        stats.sort_stats("tottime").print_stats(top)
        return "threads merged; time blocked in lock/poll/select/sleep left out\n" + out.getvalue()


def main(run: Callable[[], int]) -> None:
    """Run a benchmark's main function and exit with its status (1 on an exception)."""
    try:
        status = run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    except Exception as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        import traceback

        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    raise SystemExit(status)

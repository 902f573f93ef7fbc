"""One server per store directory, with real processes (SIGKILL included).

Each case ends with a fresh process that opens the store and finds every event
any process was told was stored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plantangenet import Plantangenet
from plantangenet.log.journal import store_problem
from plantangenet.nats.store import LOCK_FILE, SharedStore, StoreInUse

ROOT = Path(__file__).resolve().parent.parent

#: A process that opens the store and then does what its stdin says, one JSON line each.
CHILD = r"""
import json, os, sys
from plantangenet import MoveCursor, Plantangenet, PlantangenetError

pg = Plantangenet.open(store_dir=sys.argv[1])
store = pg.store
print(json.dumps({"owner": store.owner, "url": pg.url, "pid": os.getpid()}), flush=True)
for line in sys.stdin:
    order = json.loads(line)
    if order["do"] == "write":
        sid, n = order["session"], order["moves"]
        acked = []
        for attempt in range(300):  # through a hand-over, the same command ids again
            try:
                session = pg.session(sid)
                if session.state.status == "new":
                    acked.append(session.start(command_id=f"{sid}-start").events[0].event_id)
                if "a" not in session.state.agents:
                    acked.append(session.attach("a", command_id=f"{sid}-attach").events[0].event_id)
                    session.add_cursor("a", "c", ["x"], 0, 1, command_id=f"{sid}-cursor")
                for i in range(n):
                    result = session.execute(MoveCursor(
                        agent_id="a", cursor_id="c", axes=("x",), start=i, end=i + 1,
                        command_id=f"{sid}-move-{i}"))
                    acked += [e.event_id for e in result.events]
                break
            except PlantangenetError as exc:
                import time; time.sleep(0.1)
        print(json.dumps({"acked": sorted(set(acked)), "owner": store.owner, "url": pg.url}),
              flush=True)
    elif order["do"] == "read":
        found = {sid: [e.event_id for e in pg.history(sid)] for sid in order["sessions"]}
        print(json.dumps(found), flush=True)
    elif order["do"] == "status":
        print(json.dumps({"owner": store.owner, "url": pg.url}), flush=True)
    elif order["do"] == "close":
        pg.close()
        print(json.dumps({"closed": True}), flush=True)
        break
"""


#: Every child of the running test (killed at its end, whatever happened).
CHILDREN: list[subprocess.Popen[str]] = []


class Child:
    def __init__(self, store: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(store)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        CHILDREN.append(self.proc)
        self.hello = self.answer()

    def answer(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the child exited ({self.proc.wait()})")
        return json.loads(line)

    def ask(self, **order: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(order) + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def write(self, session: str, moves: int = 5) -> list[str]:
        acked: list[str] = self.ask(do="write", session=session, moves=moves)["acked"]
        return acked

    def close(self) -> None:
        assert self.ask(do="close") == {"closed": True}
        assert self.proc.wait(30) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "store"
    yield path
    for child in CHILDREN:
        if child.poll() is None:
            child.kill()
            child.wait()
    CHILDREN.clear()
    for pid in servers_of(path):  # nothing left behind, whatever a test killed
        os.kill(pid, signal.SIGKILL)


def servers_of(store: Path) -> list[int]:
    """The nats-server processes serving ``store``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split(") ")[1][0]
        except (OSError, IndexError):
            continue
        serves = cmdline and b"nats-server" in cmdline[0] and str(store).encode() in cmdline
        if serves and state != "Z":
            found.append(int(proc.name))
    return found


def everything_is_there(store: Path, acked: dict[str, list[str]]) -> None:
    reader = Child(store)
    try:
        found = reader.ask(do="read", sessions=sorted(acked))
        for session, events in acked.items():
            assert set(events) <= set(found[session]), session
    finally:
        reader.close()
    assert servers_of(store) == []


def test_a_second_process_joins_the_owners_server_and_loses_nothing(store: Path) -> None:
    first = Child(store)
    assert first.hello["owner"] is True
    second = Child(store)
    assert second.hello == {**second.hello, "owner": False, "url": first.hello["url"]}
    assert len(servers_of(store)) == 1  # never a second server on the store
    acked = {"s2": second.write("s2")}
    second.close()
    acked["s1"] = first.write("s1")
    first.close()
    everything_is_there(store, acked)


def test_an_owner_whose_server_cannot_be_joined_is_named(store: Path) -> None:
    store.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(store / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreInUse) as refused:
            SharedStore(store, timeout=1.0).open()
        assert refused.value.owner_pid == holder.pid
        assert str(holder.pid) in str(refused.value) and refused.value.code == "store_in_use"
        assert servers_of(store) == []
    finally:
        holder.kill()
        holder.wait()


def test_the_server_of_a_sigkilled_owner_is_adopted_and_loses_nothing(store: Path) -> None:
    first = Child(store)
    acked = {"s1": first.write("s1")}
    (orphan,) = servers_of(store)
    first.kill()  # its server lives on; the lock is released by the kernel
    assert servers_of(store) == [orphan]
    second = Child(store)
    assert second.hello["owner"] is True and second.hello["url"] == first.hello["url"]
    assert servers_of(store) == [orphan]  # adopted, not doubled
    acked["s2"] = second.write("s2")
    second.close()  # stops the adopted server
    assert servers_of(store) == []
    everything_is_there(store, acked)


def test_a_store_whose_owner_and_server_were_killed_starts_afresh(store: Path) -> None:
    first = Child(store)
    acked = {"s1": first.write("s1")}
    (server,) = servers_of(store)
    first.kill()
    os.kill(server, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while servers_of(store) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = Child(store)
    assert second.hello["owner"] is True
    acked["s2"] = second.write("s2")
    second.close()
    everything_is_there(store, acked)


@pytest.mark.parametrize("how", ["close", "SIGTERM"])
def test_when_the_owner_leaves_a_joined_process_takes_over_on_the_same_port(
    store: Path, how: str
) -> None:
    first = Child(store)
    second = Child(store)
    assert second.hello["owner"] is False
    acked = {"s1": first.write("s1"), "s2": second.write("s2")}
    if how == "close":
        first.close()
    else:
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(30)
    deadline = time.monotonic() + 15
    while not second.ask(do="status")["owner"]:  # it takes the store over
        assert time.monotonic() < deadline, "the joined process did not take the store over"
        time.sleep(0.1)
    after = second.ask(do="write", session="s2", moves=8)  # on the same port as before
    acked["s2"] += after["acked"]
    assert after["owner"] is True and after["url"] == first.hello["url"]
    assert len(servers_of(store)) == 1
    second.close()
    everything_is_there(store, acked)


def test_the_stores_server_serves_its_health_and_the_journal_asks_it(store: Path) -> None:
    """The store's server serves HTTP monitoring on loopback; every process opening the
    store (owner or joined) hands its URL to the journal, which asks it why an append is
    late (a full disk, see test_faults_disk)."""
    with Plantangenet.open(store_dir=store) as owner:
        assert owner.store is not None and owner.store.owner
        monitor = owner.store.monitor_url
        assert monitor is not None and monitor.startswith("http://127.0.0.1:")
        assert owner.journal.monitor_url == monitor
        assert json.loads((store / "plantangenet.json").read_text())["monitor_url"] == monitor
        with urllib.request.urlopen(monitor + "/healthz", timeout=5) as answer:
            assert json.loads(answer.read()) == {"status": "ok"}
        assert owner.run(store_problem(monitor)) is None
        with Plantangenet.open(store_dir=store) as joined:
            assert joined.store is not None and not joined.store.owner
            assert joined.journal.monitor_url == monitor

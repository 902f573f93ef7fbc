"""A real three-node JetStream cluster (plantangenet.nats.cluster) under a session's load.

Every node is a real ``nats-server`` process on loopback. Nothing is mocked or
skipped: a node that cannot start fails the test.

One cluster serves the whole module (starting one takes about half a second;
a node's restart about two: it has to find the meta leader again). Tests that
stop or kill a node leave it to the ``cluster`` fixture to bring it back. All
of them write to the R3 stream ``CLU``, each to sessions of its own.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
import pytest

from plantangenet import (
    CommandResult,
    CursorMoved,
    EmbeddedServerError,
    Envelope,
    JournalConfig,
    JournalError,
    MoveCursor,
    Plantangenet,
    SessionHandle,
    SessionState,
)
from plantangenet.cli.status import format_status, gather_status
from plantangenet.nats.cluster import EmbeddedCluster, ReplicaState

T = TypeVar("T")

STREAM = "CLU"
SUBJECT_PREFIX = "clu.events"
#: The stream every test here writes to; the first runtime to open creates it as R3.
R3 = JournalConfig(stream=STREAM, subject_prefix=SUBJECT_PREFIX, replicas=3)
#: The same with shorter timeouts, so that an append whose acknowledgement
#: was lost in a fail-over is given up (and retried) after 2 s, not 10 s.
R3_FAILOVER = dataclasses.replace(R3, ack_timeout=2.0, idle_timeout=5.0)

#: Errors a command may meet while a node goes away; the test sends it again.
#: (ConcurrencyError and DuplicateCommand are JournalErrors; TimeoutError is
#: also what concurrent.futures raises.)
RETRYABLE = (JournalError, TimeoutError)

#: How long one phase of the load may take, fail-over included (an election
#: after a crash takes up to ~10 s).
PHASE_DEADLINE = 45.0


# -- helpers ----------------------------------------------------------------------------


#: What a probe may raise while the cluster settles: a replica not there yet, a
#: node not answering yet, a read or stream info that needs a leader not elected yet.
NOT_YET = (KeyError, EmbeddedServerError, JournalError, nats.errors.Error)


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll `probe` until it returns something other than None; fail after `timeout` s.

    A probe raising one of `NOT_YET` counts as "not yet".
    """
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
        time.sleep(0.05)


def client_node(cluster: EmbeddedCluster, pg: Plantangenet) -> int:
    """The index of the node the runtime's NATS connection is connected to."""
    url = pg.journal.nc.connected_url
    assert url is not None and url.port is not None, "the runtime is not connected"
    return [ports.client for ports in cluster.ports].index(url.port)


def stream_leader(cluster: EmbeddedCluster) -> int:
    return eventually(lambda: cluster.stream_leader(STREAM), "a leader for CLU")


def stream_holds(pg: Plantangenet) -> tuple[int, int, int]:
    """``(messages, first_seq, last_seq)`` of CLU, as its leader answers the client."""
    info = pg.run(pg.journal.js.stream_info(STREAM), timeout=10)
    return info.state.messages, info.state.first_seq, info.state.last_seq


def history_through(pg: Plantangenet, session_id: str, sequence: int) -> list[Envelope]:
    """The session's history, read until it reaches stream sequence `sequence`.

    Reads are not read-your-writes on a replicated stream: the journal finds a
    session's last sequence with a *direct get*, which any replica answers, and
    a follower may not have applied the latest writes yet (seen a few times in
    a hundred right after a node restarted). Such a read ends a little short;
    reading again gets the rest. A write that is really missing still fails
    the test, after `eventually`'s deadline.
    """

    def probe() -> list[Envelope] | None:
        history = pg.history(session_id)
        return history if (history[-1].sequence or 0) >= sequence else None

    return eventually(probe, f"a read of {session_id} up to sequence {sequence}")


def replay_through(pg: Plantangenet, session_id: str, sequence: int) -> SessionState:
    """`pg.replay()`, repeated until it reaches `sequence` (see `history_through`)."""

    def probe() -> SessionState | None:
        state = pg.replay(session_id)
        return state if state.sequence >= sequence else None

    return eventually(probe, f"a replay of {session_id} up to sequence {sequence}")


def replicas_agree(cluster: EmbeddedCluster, pg: Plantangenet) -> list[ReplicaState]:
    """Wait until every node's replica of CLU holds what the stream holds; return them."""

    def probe() -> list[ReplicaState] | None:
        expected = stream_holds(pg)
        states = [cluster.stream_state(i, STREAM) for i in range(cluster.size)]
        same = all((s["messages"], s["first_seq"], s["last_seq"]) == expected for s in states)
        return states if same else None

    return eventually(probe, "every replica of CLU to catch up")


def move(k: int) -> MoveCursor:
    return MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=float(k), end=k + 1.0)


def started_session(pg: Plantangenet, session_id: str) -> SessionHandle:
    handle = pg.session(session_id)
    handle.start({"purpose": "cluster test"})
    handle.attach("bot", kind="bot", name="Bot")
    handle.add_cursor("bot", "c", ["x"], 0.0, 1.0)
    return handle


@dataclasses.dataclass
class Load:
    """Sends commands to a session, `window` at a time, until every one is acknowledged.

    A command that fails with a retryable error is recorded in `failures`
    and sent again, unchanged (same command id), after a short pause.
    Any other error fails the test.
    """

    handle: SessionHandle
    window: int = 10
    acked: dict[str, CommandResult] = dataclasses.field(default_factory=dict)
    failures: list[tuple[str, Exception]] = dataclasses.field(default_factory=list)

    def run(self, commands: Sequence[MoveCursor]) -> None:
        deadline = time.monotonic() + PHASE_DEADLINE
        pending = collections.deque(commands)
        while pending:
            batch = [pending.popleft() for _ in range(min(self.window, len(pending)))]
            submitted = [(command, self.handle.submit(command)) for command in batch]
            retry: list[MoveCursor] = []
            for command, future in submitted:
                try:
                    result = future.result(timeout=max(deadline - time.monotonic(), 0.1))
                except RETRYABLE as exc:
                    self.failures.append((command.command_id, exc))
                    retry.append(command)
                else:
                    assert result.command_id == command.command_id
                    self.acked[command.command_id] = result
            if retry:
                if time.monotonic() > deadline:
                    last = self.failures[-1][1]
                    raise AssertionError(
                        f"{len(retry) + len(pending)} commands not acknowledged within "
                        f"{PHASE_DEADLINE:g} s; last error: {last!r}"
                    )
                pending.extendleft(reversed(retry))
                time.sleep(0.05)

    def failure_kinds(self) -> collections.Counter[str]:
        """How often each kind of error was met: its type and the start of its message."""
        return collections.Counter(
            f"{type(exc).__name__}: {str(exc).split(';')[0][:70]}" for _, exc in self.failures
        )


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    cluster = EmbeddedCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(module_cluster: EmbeddedCluster) -> Iterator[EmbeddedCluster]:
    """The module's cluster; nodes a test stopped or killed are restarted afterwards."""
    yield module_cluster
    for i, node in enumerate(module_cluster.nodes):
        if not node.is_running:
            module_cluster.restart_node(i)


@pytest.fixture
def open_runtime(cluster: EmbeddedCluster) -> Iterator[Callable[[JournalConfig], Plantangenet]]:
    """Open runtimes on the cluster (all three URLs); closed after the test."""
    opened: list[Plantangenet] = []

    def open_(config: JournalConfig) -> Plantangenet:
        pg = Plantangenet.open(nats_url=cluster.url, journal=config)
        opened.append(pg)
        # open() returns once the meta leader has created the stream; its replicas
        # elect a leader and answer direct gets a moment later. Until then the
        # first command fails ("no responders" while rehydrating).
        stream_leader(cluster)
        eventually(lambda: pg.run(pg.journal.last_sequence("nobody")) == 0 or None, "CLU reads")
        return pg

    yield open_
    for pg in opened:
        pg.close()


# -- the cluster itself --------------------------------------------------------------------


def test_the_cluster_has_three_named_nodes_that_agree_on_a_meta_leader(
    cluster: EmbeddedCluster,
) -> None:
    assert cluster.size == 3
    assert all(node.is_running for node in cluster.nodes)
    assert cluster.url == ",".join(cluster.urls)
    assert cluster.urls == [f"nats://127.0.0.1:{p.client}" for p in cluster.ports]
    every_port = [port for p in cluster.ports for port in (p.client, p.cluster, p.http)]
    assert len(set(every_port)) == 9
    for i, node in enumerate(cluster.nodes):
        assert node.store_dir == cluster.base_dir / f"node-{i}"
        assert (node.store_dir / "jetstream").is_dir()
    # "-n node-<i>" overrides EmbeddedNats' own "-n plantangenet-<port>".
    leaders = {cluster.meta_leader(i) for i in range(3)}
    assert len(leaders) == 1
    leader = leaders.pop()
    assert leader is not None
    meta = cluster.jsz(cluster.node_index(leader))["meta_cluster"]  # its peers: all but itself
    names = {meta["leader"], *(peer["name"] for peer in meta["replicas"])}
    assert names == {"node-0", "node-1", "node-2"}
    assert meta["cluster_size"] == 3
    assert all(cluster.healthz(i, meta_only=True) == (True, "ok") for i in range(3))
    with pytest.raises(KeyError, match="NO_SUCH_STREAM"):
        cluster.stream_state(0, "NO_SUCH_STREAM")


def test_a_temporary_cluster_cleans_up_after_itself() -> None:
    with EmbeddedCluster(size=3) as cluster:
        base = cluster.base_dir
        pids = [node.pid for node in cluster.nodes]
        assert base.is_dir()
        assert all(pid is not None for pid in pids)
    assert not base.exists()
    assert not any(node.is_running for node in cluster.nodes)
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_unusable_clusters_fail_loudly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least two nodes"):
        EmbeddedCluster(size=1)  # nats-server: "JetStream cluster requires configured routes"
    with pytest.raises(EmbeddedServerError, match="never started"):
        _ = EmbeddedCluster().url
    not_a_binary = tmp_path / "nats-server"
    not_a_binary.write_text("")
    cluster = EmbeddedCluster(tmp_path / "base", binary=not_a_binary)
    with pytest.raises(EmbeddedServerError, match="not executable"):
        cluster.start()
    assert not any(node.is_running for node in cluster.nodes)


# -- sessions on an R3 stream --------------------------------------------------------------


def test_a_session_on_an_r3_stream_replays_to_the_actor_state(
    cluster: EmbeddedCluster, open_runtime: Callable[[JournalConfig], Plantangenet]
) -> None:
    pg = open_runtime(R3)
    info = pg.run(pg.journal.js.stream_info(STREAM), timeout=10)
    assert info.config.num_replicas == 3
    assert info.cluster is not None
    assert len(info.cluster.replicas) == 2  # the leader's two followers

    handle = started_session(pg, "r3-basic")
    for k in range(20):
        handle.move_cursor("bot", "c", ["x"], float(k), k + 0.5)
    handle.change_metadata({"phase": "done"})

    state = handle.state
    assert state.event_count == 3 + 20 + 1
    assert state.cursors["c"].start == 19.0
    assert replay_through(pg, "r3-basic", state.sequence) == state
    # Each node keeps its own, complete replica.
    replicas = replicas_agree(cluster, pg)
    assert {r["last_seq"] for r in replicas} == {stream_holds(pg)[2]}
    assert stream_holds(pg)[2] >= state.sequence


VICTIMS = [
    pytest.param("follower", "stop", id="stop-follower"),
    pytest.param("stream-leader", "stop", id="stop-stream-leader"),
    pytest.param("client-node", "stop", id="stop-client-node"),
    pytest.param("stream-leader", "kill", id="kill-stream-leader"),
]


@pytest.mark.parametrize(("role", "how"), VICTIMS)
def test_losing_a_node_under_load_loses_no_acknowledged_command(
    cluster: EmbeddedCluster,
    open_runtime: Callable[[JournalConfig], Plantangenet],
    role: str,
    how: str,
) -> None:
    """300 MoveCursor commands; a node goes away after the first 100 are acknowledged.

    * ``follower``: a node that neither leads CLU nor holds the client's
      connection. The session must not even notice.
    * ``stream-leader``: the node leading CLU; stopped gracefully it hands
      leadership over, killed the others must elect a new leader first.
    * ``client-node``: the node the runtime is connected to (it may also
      lead CLU); the client reconnects to another node.
    """
    pg = open_runtime(R3_FAILOVER)
    session_id = f"failover-{how}-{role}"
    handle = started_session(pg, session_id)
    leader, client = stream_leader(cluster), client_node(cluster, pg)
    meta_leader = cluster.meta_leader(0)
    victim = {
        "stream-leader": leader,
        "client-node": client,
        "follower": next(i for i in range(3) if i not in {leader, client}),
    }[role]
    stop = cluster.kill_node if how == "kill" else cluster.stop_node

    commands = [move(k) for k in range(300)]
    load = Load(handle)
    load.run(commands[:100])
    # The node goes away while the next 100 are in flight...
    stopper = threading.Thread(target=stop, args=(victim,))
    stopper.start()
    load.run(commands[100:200])
    stopper.join()
    # ...and the last 100 are sent while it is down: the session goes on.
    assert not cluster.nodes[victim].is_running
    load.run(commands[200:])
    assert not cluster.nodes[victim].is_running
    if role == "follower":
        assert load.failures == []

    # Every acknowledged command is in the log exactly once, where its ack said.
    assert set(load.acked) == {c.command_id for c in commands}
    # Reads create a consumer, which needs the meta leader: after a crash of
    # that node they may fail for a while longer than appends.
    last_acked = max(result.sequence for result in load.acked.values())
    history = history_through(pg, session_id, last_acked)
    per_command = collections.Counter(e.causation_id for e in history)
    assert max(per_command.values()) == 1
    by_command = {e.causation_id: e for e in history}
    missing = {c: r.sequence for c, r in load.acked.items() if c not in by_command}
    assert not missing, (
        f"{len(missing)} acknowledged commands are not in the log (acknowledged at "
        f"{sorted(missing.values())[:10]}; the history has {len(history)} events up to "
        f"{history[-1].sequence}; the stream holds {stream_holds(pg)})"
    )
    for command in commands:
        event = by_command[command.command_id]
        assert isinstance(event.event, CursorMoved)
        assert event.sequence == load.acked[command.command_id].sequence
    assert len(history) == 3 + len(commands)
    sequences = [e.sequence or 0 for e in history]
    assert sequences == sorted(set(sequences))
    assert replay_through(pg, session_id, handle.state.sequence) == handle.state

    # The node comes back and its replica catches up with the others.
    cluster.restart_node(victim)
    load.run([move(k) for k in range(300, 310)])
    replicas = replicas_agree(cluster, pg)
    assert len({(r["messages"], r["last_seq"]) for r in replicas}) == 1
    assert replay_through(pg, session_id, handle.state.sequence) == handle.state
    print(
        f"{how} {role} node-{victim} (stream leader node-{leader}, client on node-{client}, "
        f"meta leader {meta_leader}): "
        f"{len(load.failures)} failed attempts {dict(load.failure_kinds())}, "
        f"{sum(r.duplicate for r in load.acked.values())} answered as duplicates"
    )


def test_a_killed_follower_recovers_its_replica_from_the_others(
    cluster: EmbeddedCluster, open_runtime: Callable[[JournalConfig], Plantangenet]
) -> None:
    pg = open_runtime(R3_FAILOVER)
    handle = started_session(pg, "killed-follower")
    leader, client = stream_leader(cluster), client_node(cluster, pg)
    victim = next(i for i in range(3) if i not in {leader, client})
    before = cluster.stream_state(victim, STREAM)
    cluster.kill_node(victim)
    load = Load(handle)
    load.run([move(k) for k in range(50)])
    assert load.failures == []
    with pytest.raises(EmbeddedServerError, match="does not answer"):
        cluster.jsz(victim)
    cluster.restart_node(victim)
    replicas = replicas_agree(cluster, pg)
    assert replicas[victim]["last_seq"] >= before["last_seq"] + 50


def test_status_names_the_stream_leader_and_its_followers_lag(
    cluster: EmbeddedCluster, open_runtime: Callable[[JournalConfig], Plantangenet]
) -> None:
    pg = open_runtime(R3)
    started_session(pg, "r3-status")
    leader = stream_leader(cluster)

    def status() -> dict[str, Any]:
        report: dict[str, Any] = pg.run(gather_status(pg.journal, url=cluster.url), timeout=20)
        return report

    def all_current() -> dict[str, Any] | None:
        report = status()
        followers = report["stream"]["followers"]
        healthy = len(followers) == 2 and all(f["current"] and not f["lag"] for f in followers)
        return report if healthy and not report["problems"] else None

    report = eventually(all_current, "two current followers")
    stream = report["stream"]
    assert (stream["replicas"], cluster.node_index(stream["leader"])) == (3, leader)
    assert report["server"]["version"] and report["jetstream"]["streams"] >= 1
    text = format_status(report)
    assert f"leader {stream['leader']}" in text and "lag 0" in text

    # A follower gone: status names it.
    follower = stream["followers"][0]["name"]
    cluster.stop_node(cluster.node_index(follower))

    def noticed() -> dict[str, Any] | None:
        report = status()
        return report if any(f"replica {follower} " in p for p in report["problems"]) else None

    report = eventually(noticed, f"status naming {follower}", timeout=40)
    assert f"follower {follower}: " in format_status(report)

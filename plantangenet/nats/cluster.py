"""Run a three-node JetStream cluster of real ``nats-server`` processes on loopback.

[`EmbeddedCluster`][plantangenet.nats.cluster.EmbeddedCluster] starts `size`
[`EmbeddedNats`][plantangenet.nats.embedded.EmbeddedNats] nodes that route to each
other, waits until JetStream has elected its meta leader, and stops them
again. Each node has its own store directory, client port, cluster (route)
port and HTTP monitoring port, so single nodes can be stopped, killed and
restarted to test fail-over, and each node's own view of a stream replica can
be read from its monitoring endpoint.

Example:
    ```py
    from plantangenet import JournalConfig, Plantangenet
    from plantangenet.nats.cluster import EmbeddedCluster

    with EmbeddedCluster() as cluster:
        config = JournalConfig(stream="CLU", subject_prefix="clu.events", replicas=3)
        with Plantangenet.open(nats_url=cluster.url, journal=config) as pg:
            ...
    ```

"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self, cast

from plantangenet.errors import EmbeddedServerError
from plantangenet.nats.cluster_nodes import ClusterPorts as ClusterPorts
from plantangenet.nats.cluster_nodes import ReplicaState as ReplicaState
from plantangenet.nats.cluster_nodes import _format_host, _poll
from plantangenet.nats.embedded import EmbeddedNats, free_port

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["ClusterPorts", "EmbeddedCluster", "ReplicaState"]

logger = logging.getLogger(__name__)

#: What nats-server logs when one of its ports is taken.
_PORT_IN_USE: Final = "address already in use"
#: How often `start()` picks new ports when one was taken in the meantime.
_PORT_ATTEMPTS: Final = 3
_HTTP_TIMEOUT: Final = 5.0
_TAIL_LINES: Final = 10


class EmbeddedCluster:
    """A JetStream cluster of `size` ``nats-server`` child processes.

    Node `i` is named ``node-<i>`` (its JetStream server name), keeps its store
    in ``<base_dir>/node-<i>`` and listens on `host` with three ports of its
    own (see [`ports`][plantangenet.nats.cluster.EmbeddedCluster.ports]). Every node
    has routes to all the others and the cluster is named `name`.

    Nothing is started by the constructor: call
    [`start()`][plantangenet.nats.cluster.EmbeddedCluster.start] or use the instance
    as a context manager, which calls
    [`stop()`][plantangenet.nats.cluster.EmbeddedCluster.stop] on exit.

    Ports are picked with [`free_port()`][plantangenet.nats.embedded.free_port] by
    each `start()` and kept by the node methods (`stop_node()`,
    `kill_node()`, `restart_node()`), so a node comes back where the others
    route to. Should a port be taken between picking and binding, `start()`
    picks new ones and tries again (up to three times in all).

    Args:
        base_dir: the directory that holds the nodes' stores. It is created if
            missing and never removed, so a cluster can be stopped and started
            again with its data. If `None`, a temporary directory is created by
            `start()` and removed by `stop()`.
        size: the number of nodes: at least 2 (nats-server refuses a JetStream
            cluster without routes; use `EmbeddedNats` for a single server),
            and at least 3 for R3 streams and for surviving the loss of a node
        name: the cluster name (``--cluster_name``)
        host: the address every port listens on
        startup_timeout: seconds `start()` waits for each node to accept
            clients and then, again, for the meta leader to be elected;
            `restart_node()` waits as long for the node to rejoin
        binary: the ``nats-server`` binary; if `None`, it is located by
            [`find_nats_server_binary()`][plantangenet.nats.embedded.find_nats_server_binary]

    Raises:
        ValueError: if `size` is less than 2.

    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        size: int = 3,
        name: str = "plantangenet",
        host: str = "127.0.0.1",
        startup_timeout: float = 30.0,
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        if size < 2:
            msg = f"a JetStream cluster needs at least two nodes, not {size}"
            raise ValueError(msg)
        self._size = size
        self._name = name
        self._host = host
        self._startup_timeout = startup_timeout
        self._binary = binary
        self._owns_base = base_dir is None
        self._base_dir: Path | None = Path(base_dir).absolute() if base_dir is not None else None
        self._ports: list[ClusterPorts] = []
        #: The nodes, node `i` at index `i`; empty until `start()` is called.
        self.nodes: list[EmbeddedNats] = []

    def __repr__(self) -> str:
        running = sum(node.is_running for node in self.nodes)
        return f"<EmbeddedCluster {self._name!r} {running}/{self._size} nodes running>"

    # -- Properties ------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of nodes."""
        return self._size

    @property
    def name(self) -> str:
        """The cluster name."""
        return self._name

    @property
    def host(self) -> str:
        """The address the nodes listen on."""
        return self._host

    @property
    def base_dir(self) -> Path:
        """The directory holding the nodes' stores (absolute).

        Raises:
            EmbeddedServerError: if it is temporary and `start()` has not
                created it yet.

        """
        if self._base_dir is None:
            msg = "no base directory yet: start() creates the temporary one"
            raise EmbeddedServerError(msg)
        return self._base_dir

    @property
    def ports(self) -> list[ClusterPorts]:
        """The ports of each node, node `i` at index `i`.

        Raises:
            EmbeddedServerError: if the cluster was never started.

        """
        self._require_started()
        return list(self._ports)

    @property
    def urls(self) -> list[str]:
        """The client URL of each node, for example ``nats://127.0.0.1:4222``.

        Raises:
            EmbeddedServerError: if the cluster was never started.

        """
        self._require_started()
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """All client URLs, comma-separated: usable as ``NATS_URL`` or ``nats_url``.

        Raises:
            EmbeddedServerError: if the cluster was never started.

        """
        return ",".join(self.urls)

    def monitor_url(self, i: int) -> str:
        """The base URL of node `i`'s HTTP monitoring, for example ``http://127.0.0.1:8222``.

        Raises:
            EmbeddedServerError: if the cluster was never started.
            IndexError: if there is no node `i`.

        """
        self._require_started()
        return f"http://{_format_host(self._host)}:{self._ports[i].http}"

    def node_index(self, server_name: str) -> int:
        """The index of the node whose server name is `server_name` (``node-<i>``).

        Raises:
            ValueError: if no node has that name.

        """
        prefix, _, number = server_name.partition("-")
        if prefix == "node" and number.isdecimal() and int(number) < self._size:
            return int(number)
        msg = f"no node of this cluster is named {server_name!r}"
        raise ValueError(msg)

    # -- Lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        """Start every node and wait until JetStream has a meta leader.

        The nodes are started concurrently. Then each node's ``/jsz`` is
        polled until every node names the same meta leader in a meta group of
        `size` peers, and each node's ``/healthz?js-meta-only=true`` answers
        ``ok``: from then on the cluster accepts JetStream API requests
        (creating streams and consumers) on any node. Started again on a
        `base_dir` with data, the nodes take a few seconds longer to agree.

        Returns:
            this instance, so that ``cluster = EmbeddedCluster().start()`` works

        Raises:
            EmbeddedServerError: if a node is already running, if a node
                fails to start (the message has the end of its log), or if
                no meta leader is agreed on within `startup_timeout` seconds
                (the message has what each node reported). Every node that
                was started is stopped again, and a temporary base directory
                is removed.

        """
        if any(node.is_running for node in self.nodes):
            msg = f"{self!r} is already running"
            raise EmbeddedServerError(msg)
        created_base = self._prepare_base()
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                self._build_nodes()
                try:
                    self._start_nodes(range(self._size))
                except EmbeddedServerError as exc:
                    self._stop_nodes(range(self._size))
                    if _PORT_IN_USE not in str(exc) or attempt == _PORT_ATTEMPTS:
                        raise
                    logger.info("a cluster port was taken, picking new ones: %s", exc)
                else:
                    break
            self.wait_for_meta_leader(self._startup_timeout)
        except BaseException:
            self._stop_nodes(range(len(self.nodes)))
            if created_base:
                self._remove_base()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node gracefully (concurrently) and remove a temporary base directory.

        Each node gets ``SIGTERM`` and `timeout` seconds before it is killed
        (see [`EmbeddedNats.stop()`][plantangenet.nats.embedded.EmbeddedNats.stop]).
        A given `base_dir` is kept. Stopping a stopped cluster does nothing.

        Args:
            timeout: seconds each node has to exit gracefully

        """
        self._stop_nodes(range(len(self.nodes)), timeout)
        if self._owns_base:
            self._remove_base()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- Single nodes ----------------------------------------------------------

    def stop_node(self, i: int, timeout: float = 10.0) -> None:
        """Stop node `i` gracefully (``SIGTERM``), keeping its ports and store.

        Args:
            i: the node's index
            timeout: seconds to wait for a graceful exit before killing it

        """
        self._node(i).stop(timeout)

    def kill_node(self, i: int) -> None:
        """Kill node `i` with ``SIGKILL``, as a crash would; its store is kept.

        Args:
            i: the node's index

        """
        self._node(i).kill()

    def restart_node(self, i: int, timeout: float = 10.0) -> None:
        """Start node `i` again, with the same ports and store, and wait until it rejoined.

        A running node is first stopped gracefully. The call returns once the
        node accepts clients and names the same meta leader as the other
        running nodes; its stream replicas may still be catching up (poll
        [`stream_state()`][plantangenet.nats.cluster.EmbeddedCluster.stream_state]
        to wait for that).

        Args:
            i: the node's index
            timeout: seconds to wait for a running node's graceful exit

        Raises:
            EmbeddedServerError: if the cluster was stopped and its temporary
                base directory removed, if the node does not start, or if it
                does not agree on a meta leader within `startup_timeout` seconds.

        """
        node = self._node(i)
        if not node.store_dir.is_dir():
            msg = f"cannot restart node {i}: its store {node.store_dir} was removed by stop()"
            raise EmbeddedServerError(msg)
        node.restart(timeout)
        self.wait_for_meta_leader(self._startup_timeout)

    # -- Monitoring ------------------------------------------------------------

    def jsz(self, i: int) -> dict[str, Any]:
        """Node `i`'s ``/jsz?streams=true``: JetStream as that node sees it.

        It holds the meta group (``meta_cluster``, with its ``leader``) and,
        under ``account_details[*].stream_detail``, each stream replica the
        node keeps, with its state and the stream's ``cluster`` (leader and
        replicas) as known to this node.

        Raises:
            EmbeddedServerError: if the node does not answer (it is stopped,
                for example) or answers with something that is not JSON.

        """
        status, body = self._get(i, "/jsz?streams=true")
        if status != 200:
            msg = f"node {i} answered /jsz with HTTP {status}: {body}"
            raise EmbeddedServerError(msg)
        return body

    def healthz(self, i: int, *, meta_only: bool = False) -> tuple[bool, str]:
        """Node `i`'s ``/healthz``: whether it is healthy, and its status or error text.

        A node is healthy when JetStream is enabled and its meta group and
        every stream and consumer replica it holds are current. With
        `meta_only`, only the meta group is checked
        (``/healthz?js-meta-only=true``): a replica still catching up does not
        count.

        Raises:
            EmbeddedServerError: if the node does not answer.

        """
        status, body = self._get(i, "/healthz?js-meta-only=true" if meta_only else "/healthz")
        return status == 200, str(body.get("error") or body.get("status") or body)

    def meta_leader(self, i: int) -> str | None:
        """The server name of the meta leader as node `i` knows it, or `None` if none.

        Raises:
            EmbeddedServerError: if the node does not answer.

        """
        meta = self.jsz(i).get("meta_cluster") or {}
        leader = meta.get("leader")
        return str(leader) if leader else None

    def stream_detail(self, i: int, stream: str) -> dict[str, Any]:
        """Node `i`'s ``/jsz`` entry for its replica of `stream`.

        Raises:
            EmbeddedServerError: if the node does not answer.
            KeyError: if the node holds no replica of `stream` (yet).

        """
        for account in self.jsz(i).get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    return cast(dict[str, Any], detail)
        msg = f"node {i} holds no replica of stream {stream!r}"
        raise KeyError(msg)

    def stream_state(self, i: int, stream: str) -> ReplicaState:
        """The state of node `i`'s own replica of `stream`, from its ``/jsz``.

        Each node reports what its replica holds, so comparing the nodes shows
        whether a replica lags behind (after a restart, for example).

        Raises:
            EmbeddedServerError: if the node does not answer.
            KeyError: if the node holds no replica of `stream` (yet).

        """
        state = self.stream_detail(i, stream).get("state") or {}
        return ReplicaState(
            messages=int(state.get("messages", 0)),
            first_seq=int(state.get("first_seq", 0)),
            last_seq=int(state.get("last_seq", 0)),
            bytes=int(state.get("bytes", 0)),
        )

    def stream_leader(self, stream: str) -> int | None:
        """The index of the node leading `stream`, or `None` if there is none right now.

        Asked of the running nodes in turn; the first one that holds a
        replica answers.

        Raises:
            KeyError: if no running node holds a replica of `stream`.

        """
        for i in self._running():
            with contextlib.suppress(KeyError, EmbeddedServerError):
                leader = (self.stream_detail(i, stream).get("cluster") or {}).get("leader")
                return self.node_index(str(leader)) if leader else None
        msg = f"no running node holds a replica of stream {stream!r}"
        raise KeyError(msg)

    def wait_for_meta_leader(self, timeout: float = 30.0) -> str:
        """Wait until every running node names the same meta leader and its meta group is healthy.

        Each running node's ``/jsz`` must name the same leader in a meta group
        of `size` peers (so a node that has not joined yet is not
        overlooked), and its ``/healthz?js-meta-only=true`` must answer ``ok``.
        Stream replicas are not waited for.

        Args:
            timeout: seconds to wait

        Returns:
            the leader's server name (``node-<i>``)

        Raises:
            EmbeddedServerError: if that does not happen within `timeout`
                seconds; the message has what each node reported.

        """
        last: dict[int, str] = {}

        def agreed() -> str | None:
            leaders: set[str | None] = set()
            for i in self._running():
                try:
                    meta = self.jsz(i).get("meta_cluster") or {}
                    healthy, why = self.healthz(i, meta_only=True)
                except EmbeddedServerError as exc:
                    last[i] = str(exc)
                    return None
                leader = meta.get("leader") or None
                last[i] = f"meta leader {leader}, {meta.get('cluster_size')} peers, {why}"
                if not healthy or meta.get("cluster_size") != self._size:
                    return None
                leaders.add(leader)
            return leaders.pop() if len(leaders) == 1 else None

        leader = _poll(agreed, timeout)
        if leader is None:
            report = "; ".join(f"node-{i}: {what}" for i, what in sorted(last.items()))
            tails = "\n".join(
                f"--- node-{i} ({node.log_path}):\n{node.log_tail(_TAIL_LINES)}"
                for i, node in enumerate(self.nodes)
            )
            msg = (
                f"cluster {self._name!r} elected no meta leader within {timeout:g} s "
                f"({report}); last log lines:\n{tails}"
            )
            raise EmbeddedServerError(msg)
        return leader

    # -- Internals -------------------------------------------------------------

    def _require_started(self) -> None:
        if not self.nodes:
            msg = "the cluster was never started: call start()"
            raise EmbeddedServerError(msg)

    def _node(self, i: int) -> EmbeddedNats:
        self._require_started()
        return self.nodes[i]

    def _running(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.is_running]

    def _prepare_base(self) -> bool:
        """Make sure the base directory exists; return whether it was created."""
        if self._owns_base:
            self._base_dir = Path(tempfile.mkdtemp(prefix="plantangenet-cluster-")).absolute()
            return True
        base = self.base_dir
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create the cluster's base directory {base}: {exc}"
            raise EmbeddedServerError(msg) from exc
        return False

    def _remove_base(self) -> None:
        if self._owns_base and self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)

    def _pick_ports(self) -> list[ClusterPorts]:
        taken: set[int] = set()
        picked: list[int] = []
        while len(picked) < 3 * self._size:
            port = free_port(self._host)
            if port not in taken:
                taken.add(port)
                picked.append(port)
        return [ClusterPorts(*picked[3 * i : 3 * i + 3]) for i in range(self._size)]

    def _build_nodes(self) -> None:
        self._ports = ports = self._pick_ports()
        host = _format_host(self._host)
        base = self.base_dir
        self.nodes = []
        for i, own in enumerate(ports):
            routes = ",".join(
                f"nats://{host}:{other.cluster}" for j, other in enumerate(ports) if j != i
            )
            args = [
                "--cluster_name",
                self._name,
                "--cluster",
                f"nats://{host}:{own.cluster}",
                # Overrides the "-n plantangenet-<port>" EmbeddedNats passes (last one wins).
                "-n",
                f"node-{i}",
                "-m",
                str(own.http),
            ]
            if routes:
                args += ["--routes", routes]
            self.nodes.append(
                EmbeddedNats(
                    base / f"node-{i}",
                    host=self._host,
                    port=own.client,
                    binary=self._binary,
                    startup_timeout=self._startup_timeout,
                    extra_args=args,
                )
            )

    def _start_nodes(self, indexes: range) -> None:
        """Start the nodes concurrently; raise the first failure after all have finished."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(indexes) or 1) as pool:
            futures = [pool.submit(self.nodes[i].start) for i in indexes]
        for future in futures:
            future.result()

    def _stop_nodes(self, indexes: range, timeout: float = 10.0) -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(indexes) or 1) as pool:
            futures = [pool.submit(self.nodes[i].stop, timeout) for i in indexes]
        for future in futures:
            future.result()

    def _get(self, i: int, path: str) -> tuple[int, dict[str, Any]]:
        """GET `path` from node `i`'s monitoring port: HTTP status and JSON body."""
        url = self.monitor_url(i) + path
        try:
            with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT) as response:
                status, raw = int(response.status), response.read()
        except urllib.error.HTTPError as exc:  # /healthz answers 503 with a JSON body
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            msg = f"node {i} does not answer {url}: {exc}"
            raise EmbeddedServerError(msg) from exc
        try:
            body = json.loads(raw)
        except ValueError:
            msg = f"node {i} answered {url} with something that is not JSON: {raw[:200]!r}"
            raise EmbeddedServerError(msg) from None
        if not isinstance(body, dict):
            msg = f"node {i} answered {url} with {body!r}, not a JSON object"
            raise EmbeddedServerError(msg)
        return status, body

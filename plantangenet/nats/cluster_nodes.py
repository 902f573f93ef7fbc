"""A cluster node's ports and a stream replica's state, and polling a node until it answers.

The values :class:`~plantangenet.nats.cluster.EmbeddedCluster` describes its nodes with
(:class:`ClusterPorts`, :class:`ReplicaState`); both are importable from
:mod:`plantangenet.nats.cluster` too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Final, TypedDict, TypeVar

_POLL_INTERVAL: Final = 0.05


_T = TypeVar("_T")


class ReplicaState(TypedDict):
    """A stream replica's state as one node reports it (see `EmbeddedCluster.stream_state`)."""

    #: Number of messages the replica holds.
    messages: int
    #: Sequence of its first message (``last_seq + 1`` when it holds none).
    first_seq: int
    #: Sequence of its last message (0 for a stream that never had one).
    last_seq: int
    #: Bytes the messages take up in the store.
    bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterPorts:
    """The TCP ports of one node, all on the cluster's host."""

    #: Port for NATS clients.
    client: int
    #: Port other nodes route to (``--cluster``).
    cluster: int
    #: HTTP monitoring port (``-m``): ``/varz``, ``/jsz``, ``/healthz``...
    http: int


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _poll(probe: Callable[[], _T | None], timeout: float) -> _T | None:
    """Call `probe` until it returns something other than `None`, for up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None or time.monotonic() >= deadline:
            return result
        time.sleep(_POLL_INTERVAL)

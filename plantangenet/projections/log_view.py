"""What the read models kept in KV buckets need of the log: an interface, not the journal.

The user projections' checkpoints (:mod:`plantangenet.projections.user`) and the audit
read model (:mod:`plantangenet.projections.audit_model`) read a session's events and keep
their results in a KV bucket of the same JetStream. They take a
:class:`~plantangenet.log.journal.Journal`, but name only what they use of it here, so the
projections do not import the log layer (which itself folds with projections).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any, Literal, Protocol, overload

from plantangenet.events.codec import EventCodec
from plantangenet.events.envelope import CheckedEvent, Envelope


class LogSettings(Protocol):
    """The parts of a :class:`~plantangenet.log.journal.JournalConfig` a read model reads."""

    @property
    def stream(self) -> str: ...

    @property
    def replicas(self) -> int | None: ...

    @property
    def leader_reads(self) -> bool: ...


class LogPage(Protocol):
    """A :class:`~plantangenet.log.journal.HistoryPage`: ``(stream sequence, payload)`` pairs."""

    @property
    def messages(self) -> tuple[tuple[int, bytes], ...]: ...


class KeptLog(Protocol):
    """A log whose stream also keeps read models: a :class:`~plantangenet.log.journal.Journal`."""

    @property
    def nc(self) -> Any: ...

    @property
    def js(self) -> Any: ...

    @property
    def config(self) -> LogSettings: ...

    @property
    def codec(self) -> EventCodec: ...

    async def sessions(self) -> dict[str, int]: ...

    async def last_sequence(self, session_id: str) -> int: ...

    def read(
        self,
        session_id: str,
        *,
        from_sequence: int = 1,
        to_sequence: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> AsyncGenerator[Envelope, None]: ...

    @overload
    def read_event_batches(
        self,
        session_id: str,
        *,
        from_sequence: int = 1,
        to_sequence: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        checked: Literal[False] = False,
    ) -> AsyncGenerator[list[Envelope], None]: ...

    @overload
    def read_event_batches(
        self,
        session_id: str,
        *,
        from_sequence: int = 1,
        to_sequence: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        checked: bool,
    ) -> AsyncGenerator[list[Envelope | CheckedEvent], None]: ...

    async def page(
        self,
        session_id: str,
        from_sequence: int = 1,
        *,
        max_events: int = ...,
        max_bytes: int = ...,
    ) -> LogPage: ...

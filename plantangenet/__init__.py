"""Plantangenet: event-sourced sessions for agents, on NATS JetStream.

A session is the trust, policy and lifecycle boundary around the agents
attached to it and their cursors. Every session and agent is a pykka actor;
actors decide, then emit immutable events to a JetStream stream, which is the
only source of truth. Rehydration is replaying those events.
"""

from plantangenet.actors import Agent, AgentContext, CommandResult, HookFailure, SessionActor
from plantangenet.commands import (
    AddCursor,
    AttachAgent,
    ChangeMetadata,
    ChangePolicy,
    Command,
    DetachAgent,
    EndSession,
    MoveCursor,
    RemoveCursor,
    StartSession,
)
from plantangenet.decide import decide
from plantangenet.embedded import EmbeddedNats
from plantangenet.errors import (
    ActorStopped,
    AgentAlreadyAttached,
    CodecError,
    CommandRejected,
    ConcurrencyError,
    CursorAlreadyExists,
    DecodeError,
    DuplicateCommand,
    EmbeddedServerError,
    EncodeError,
    InvalidCommand,
    JournalError,
    PayloadTooLarge,
    PlantangenetError,
    SessionAlreadyStarted,
    SessionClosed,
    SessionNotStarted,
    UnknownAgent,
    UnknownCursor,
    UnknownEventType,
    UnknownEventVersion,
    UnknownSession,
)
from plantangenet.events import (
    CODEC,
    EVENTS,
    AgentAttached,
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    Envelope,
    Event,
    EventCodec,
    EventRegistry,
    PolicyChanged,
    SessionEnded,
    SessionMetadataChanged,
    SessionStarted,
    event_type,
)
from plantangenet.handle import SessionHandle, Subscription
from plantangenet.journal import AppendResult, Journal, JournalConfig
from plantangenet.loop import EventLoopThread
from plantangenet.projections import AgentView, CursorView, PolicyView, SessionState, evolve, fold
from plantangenet.projections.agent import AgentState
from plantangenet.replay import replay
from plantangenet.runtime import Plantangenet

__version__ = "0.1.0"

__all__ = [
    "CODEC",
    "EVENTS",
    "ActorStopped",
    "AddCursor",
    "Agent",
    "AgentAlreadyAttached",
    "AgentAttached",
    "AgentContext",
    "AgentDetached",
    "AgentState",
    "AgentView",
    "AppendResult",
    "AttachAgent",
    "ChangeMetadata",
    "ChangePolicy",
    "CodecError",
    "Command",
    "CommandRejected",
    "CommandResult",
    "ConcurrencyError",
    "CursorAdded",
    "CursorAlreadyExists",
    "CursorMoved",
    "CursorRemoved",
    "CursorView",
    "DecodeError",
    "DetachAgent",
    "DuplicateCommand",
    "EmbeddedNats",
    "EmbeddedServerError",
    "EncodeError",
    "EndSession",
    "Envelope",
    "Event",
    "EventCodec",
    "EventLoopThread",
    "EventRegistry",
    "HookFailure",
    "InvalidCommand",
    "Journal",
    "JournalConfig",
    "JournalError",
    "MoveCursor",
    "PayloadTooLarge",
    "Plantangenet",
    "PlantangenetError",
    "PolicyChanged",
    "PolicyView",
    "RemoveCursor",
    "SessionActor",
    "SessionAlreadyStarted",
    "SessionClosed",
    "SessionEnded",
    "SessionHandle",
    "SessionMetadataChanged",
    "SessionNotStarted",
    "SessionStarted",
    "SessionState",
    "StartSession",
    "Subscription",
    "UnknownAgent",
    "UnknownCursor",
    "UnknownEventType",
    "UnknownEventVersion",
    "UnknownSession",
    "__version__",
    "decide",
    "event_type",
    "evolve",
    "fold",
    "replay",
]

"""Events: immutable facts, their envelope, registry, upcasters and codec.

Holds the events, the envelope, the field conversions, the policy and disclosure values events
carry (``policy_values``), the msgpack codec and the ``slots`` builders it decodes with.
May import errors only.
"""

from plantangenet.events.base import EVENTS, Event, EventRegistry, Upcaster, event_type
from plantangenet.events.codec import CODEC, EventCodec
from plantangenet.events.envelope import (
    OPERATOR,
    Authorization,
    CheckedEvent,
    Envelope,
    new_id,
    utc_now,
)
from plantangenet.events.fields import MetadataValue
from plantangenet.events.session import (
    SESSION_EVENTS,
    AccessDenied,
    AgentAttached,
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    IdentityBound,
    PolicyChanged,
    RoleGranted,
    RoleRevoked,
    SessionEnded,
    SessionMetadataChanged,
    SessionStarted,
)
from plantangenet.events.trust import (
    TRUST_EVENTS,
    AgentBound,
    MessageQuarantined,
    OwnerAdded,
    OwnerRemoved,
    RefusalsSuppressed,
)

__all__ = [
    "CODEC",
    "EVENTS",
    "OPERATOR",
    "SESSION_EVENTS",
    "TRUST_EVENTS",
    "AccessDenied",
    "AgentAttached",
    "AgentBound",
    "AgentDetached",
    "Authorization",
    "CheckedEvent",
    "CursorAdded",
    "CursorMoved",
    "CursorRemoved",
    "Envelope",
    "Event",
    "EventCodec",
    "EventRegistry",
    "IdentityBound",
    "MessageQuarantined",
    "MetadataValue",
    "OwnerAdded",
    "OwnerRemoved",
    "PolicyChanged",
    "RefusalsSuppressed",
    "RoleGranted",
    "RoleRevoked",
    "SessionEnded",
    "SessionMetadataChanged",
    "SessionStarted",
    "Upcaster",
    "event_type",
    "new_id",
    "utc_now",
]

"""What the wire's keys mean: the texts the AsyncAPI document says them with.

The code holds the keys (the request envelope's, the stored envelope's, the headers,
the fields' rules); these texts say what each one is. :mod:`plantangenet.cli.asyncapi`
checks that the code still has every key described here, and stops on one that is not.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from plantangenet.domain.decide import ID_PATTERN, PRINCIPAL_PATTERN
from plantangenet.domain.policy import _ROLE
from plantangenet.events.dust import DustDeposited
from plantangenet.events.envelope import OPERATOR, Envelope
from plantangenet.log.journal_acks import _msg_ids
from plantangenet.wire.access import REQUEST_INFO_HEADER

#: The request map's keys: the command field each one sets, and what it is.
_REQUEST_KEYS: dict[str, tuple[str | None, str]] = {
    "v": (None, "Protocol version: must be {version}; any other is refused (`invalid_command`)."),
    "id": (
        "command_id",
        "The command id: 1-128 printable ASCII characters, no spaces. It is the idempotency "
        "key of the sending principal: the same id again with the same content is a retry "
        "(answered with the first outcome, `duplicate: true`); with other content it is "
        "refused (`idempotency_conflict`), nothing written. Content is {content}; "
        "{not_content} is not.",
    ),
    "by": (
        "issued_by",
        "The agent the command is sent as (an agent bound to the sender); nil: the owner "
        "form (owners only; the policy does not restrict it).",
    ),
    "corr": (
        "correlation_id",
        "Correlation id: nil or 1-128 printable ASCII characters; defaults to the command id.",
    ),
    "ctx": (
        "context",
        "Extra attributes policy conditions may test; they never override the session's own "
        "(`hour`, `weekday`, `principal`, `identity.*`, `agent.*`, `command.*`, and the "
        "command's `resolution`, `start`, `end`, `axes`).",
    ),
    "args": (None, "The command's own fields (nil: none)."),
}


#: The stored envelope's keys (see ``plantangenet.events.codec``): what each one is.
_ENVELOPE_TEXT: dict[str, str] = {
    "f": "Envelope format: {format} is written; format 2 (written before revisions were "
    "recorded) is still read: it has no `n` (readers number its events); so is format 1 "
    "(written before principals were recorded): it has neither `u` nor `k` nor `n` "
    "(principal unknown, no fingerprint).",
    "t": "The event's stable type name (see `EventType`).",
    "v": "The event's schema version as stored; an older version is upcast when read "
    "(see the `event.*` schemas).",
    "id": "Event id, unique.",
    "s": "Session id.",
    "a": "The agent the command was sent as (the request's `by`); nil for the owner form. "
    "The agent an event is *about* is in the event's fields.",
    "c": "Causation id: the id of the command that caused the event (the request's `id`).",
    "r": "Correlation id: the request's `corr`, or the command id when it had none.",
    "at": "When the command was decided: an integer count of **microseconds** since the "
    "Unix epoch (1970-01-01T00:00:00Z), UTC. Every event of one command has the same `at`.",
    "p": "The hash chain: the SHA-256 digest (32 bytes) of the previous event of the same "
    "session exactly as stored, i.e. of the complete msgpack payload of that message (all "
    "its keys, `p` included); empty (0 bytes) on the session's first event. A message of the "
    "session's subject that is not an event of the session (a quarantined stray) is not a "
    "link: the event after it links to the event before it. `plantangenet verify SESSION` "
    "recomputes the chain.",
    "z": "On a command's first event: the authorization that let it through (the action, the "
    "resources, the id of the statement that allowed each resource or nil when none was "
    "needed, the policy version); nil on its other events and on a recorded refusal.",
    "u": "The principal that sent the command, as the NATS server vouched for it: "
    "`<user>@<account>`, or `{operator}` for the process that runs the session (and the "
    "service's own account); at most {max_principal} characters. Absent in format 1.",
    "k": "On a command's first event: the {fingerprint_bytes}-byte fingerprint of the "
    "command's content (what makes a reused command id a retry or a conflict); empty on its "
    "other events. Absent in format 1.",
    "n": "The revision: the event's position within its session (1 for its first event, "
    "then 2, 3, ... with no gap), the same in every copy of the session (a fork), where "
    "stream sequences differ. Stamped by the session's single writer; nil when the writer "
    "did not number it. Absent in formats 1 and 2: a reader counts those events in order.",
    "d": "The event's fields: the `event.<t>.v<v>` schema (see `StoredEvent`).",
}


#: The component schema of each shared request key.
_REQUEST_COMPONENTS = {
    "v": "ProtocolVersion",
    "id": "CommandId",
    "by": "IssuedBy",
    "corr": "CorrelationId",
    "ctx": "RequestContext",
}


#: Headers of a command request that the service reads (set by the NATS server).
_REQUEST_HEADERS: dict[str, str] = {
    REQUEST_INFO_HEADER: "Set by the NATS server on a request that crossed the service "
    "import of a bot's account (the import shares it): the service reads the sender's user "
    "and account from it. A header of that name sent by the bot is replaced by the server.",
}


#: Headers of an event republished on the live subject (set by JetStream's republish).
_LIVE_HEADERS: dict[str, str] = {
    "Nats-Stream": "The stream the event is stored in.",
    "Nats-Subject": "The subject the event is stored on (`<events prefix>.<session_id>`).",
    "Nats-Sequence": "The event's stream sequence (decimal).",
    "Nats-Time-Stamp": "When the stream stored it (RFC 3339).",
    "Nats-Last-Sequence": "The stream sequence of the session's event before it (decimal; "
    "`0` for the first). A follower that has delivered events up to sequence N and gets an "
    "event whose `Nats-Last-Sequence` is greater than N missed some: it reads them with "
    "`history` from N + 1 (live delivery is at most once).",
}


#: Headers of an append to the events subject (written by the journal, read by JetStream).
_APPEND_HEADERS: dict[str, str] = {
    "Nats-Msg-Id": "The message id JetStream deduplicates on: {msg_id} (operator), "
    "{remote_msg_id} (a remote principal's command); the index counts the command's events.",
    "Nats-Expected-Last-Subject-Sequence": "The session's last sequence the writer decided "
    "on (optimistic concurrency: a stale writer's append is refused, nothing stored).",
    "Nats-Batch-Id": "On each message of an atomic batch (a command with several events).",
    "Nats-Batch-Sequence": "The message's place in its atomic batch, from 1.",
    "Nats-Batch-Commit": "`1` on the last message of an atomic batch: store them all or none.",
}


#: Extra words on a command field, where the field's name says what the code checks.
_FIELD_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "agent_id": (ID_PATTERN, "An agent id."),
    "cursor_id": (ID_PATTERN, "A cursor id."),
    "kind": (
        ID_PATTERN,
        "What the agent is, e.g. `bot`, `client`, `bridge`: any id (not a fixed set). It is "
        "recorded and shown to policy conditions as `agent.kind`; an agent attaching itself "
        "states its own kind.",
    ),
    "role": (_ROLE, "A role name."),
    "bound_to": (
        PRINCIPAL_PATTERN,
        "A principal (`<user>@<account>`); only an owner may name one other than itself.",
    ),
    "owner": (PRINCIPAL_PATTERN, "A principal (`<user>@<account>`)."),
}


#: The content type of every payload.
CONTENT_TYPE = "application/x-msgpack"


def _message_ids() -> dict[str, str]:
    """The ``Nats-Msg-Id`` forms the journal writes, as patterns (from the journal itself)."""
    event = DustDeposited("<account>", 1)
    forms = {}
    for key, principal in (("msg_id", OPERATOR), ("remote_msg_id", "<principal>")):
        envelope = Envelope(event, "s", "e", "<command_id>", "r", _EPOCH, principal=principal)
        (msg_id,) = _msg_ids("<session_id>", [envelope])
        forms[key] = f"`{msg_id.replace(':0', ':<index>')}`"
    return forms


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

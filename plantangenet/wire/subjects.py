"""The service's NATS subjects and wire names, shared by the NATS accounts and the protocol.

The NATS accounts (:mod:`plantangenet.wire.access`) grant the command subjects and lanes,
the metrics (:mod:`plantangenet.wire.metrics`) bound their labels by the wire names, and the
wire protocol (:mod:`plantangenet.wire.protocol`) maps each name to its command: the names
sit here, below all three, so none of them imports another for a constant.
"""

from __future__ import annotations

#: Default prefix of command subjects: ``plantangenet.cmd.<session_id>.<command>``.
DEFAULT_COMMAND_PREFIX = "plantangenet.cmd"
#: Ingress lanes of the session service (see ``plantangenet.wire.protocol.lane_of`` and
#: ``plantangenet.wire.access``).
DEFAULT_LANES = 8
#: Wire names of the commands (``plantangenet.wire.protocol.COMMANDS`` maps each to its class).
COMMAND_NAMES = frozenset(
    {
        "start",
        "change_metadata",
        "attach",
        "detach",
        "add_cursor",
        "move_cursor",
        "remove_cursor",
        "change_policy",
        "bind_identity",
        "grant_role",
        "revoke_role",
        "end",
        "register_compositor",
        "query_cursor",
        "set_prices",
        "deposit",
        "grant",
        "add_owner",
        "remove_owner",
        "bind_agent",
        "propose_chem",
        "accept_chem",
        "refuse_chem",
        "revoke_chem",
        "query_chem",
        "disclose_chem",
    }
)
#: Wire names that read instead of write: a session's state, and a page of its history.
QUERIES = frozenset({"state", "history"})
#: Wire name of several commands in one request (``<prefix>.cmd.<session_id>.batch``).
BATCH = "batch"

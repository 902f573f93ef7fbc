"""The domain: pure decisions over a session's state, no I/O.

Holds the commands, ``decide``, ``authorize`` and ``policy`` (a command against the policy),
``disclosure`` (levels and shaping), ``dust`` (prices and charges), ``chem`` (one side of a
chem) and ``query_plan`` (planning a data query and shaping what a compositor returned; the
``Compositor`` protocol).
May import projections, events and errors; nothing from log, nats, wire, actors, data,
timetravel or cli.
"""

"""The log: the only code that talks to JetStream streams, and reading it into state.

Holds the ``journal`` (appends, reads, seeks, tails), the atomic batch ``frames``, the
``ack_inbox`` and the ``deliveries`` (direct subscriptions) its appends and reads get their
messages from, the asyncio ``loop`` thread that owns the connection, ``replay`` and
``session_replay`` (the log folded into a session's state), ``tail_replay`` (the same,
observing only the last commands' events: an actor's rehydration), ``positions`` (revisions,
sequences, times, and the session at one), ``verify`` (the hash chain) and
``correlations`` (the cross-session correlation index).
May import domain, projections, events and errors; no actors, nothing above them.
"""

"""NATS itself: the embedded ``nats-server``, clusters of them, one server per store.

Holds ``embedded`` (a server on a free port, with ``local``: its binary, port, log and disk),
``cluster`` (a JetStream cluster of them, with ``cluster_nodes``), ``store`` (one server per
store directory, whichever process opens it) and ``config`` (nats-server configuration text).
May import domain, projections, events and errors; it is independent of the log.
"""

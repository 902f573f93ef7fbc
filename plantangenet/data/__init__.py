"""Data: the compositors a session coordinates with, the queries that ask them, chems.

Holds ``compositors`` (the built-in synthetic and recorded ones, loading others by name),
``disclose`` (running a planned query) and ``chems`` (agreements negotiated across two
sessions' actors).
May import actors and everything below them; not the runtime, wire, timetravel or cli.
"""

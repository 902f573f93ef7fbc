"""Time travel: the session at any position, why, forks, the explorer, bot replay.

Holds ``history`` (the story of a session, seeking by time), ``why`` (the events behind a piece
of state), ``state_diff``, ``fork`` (a new session from a past one), the explorer and its
filters, ``botreplay`` (an in-process agent against a recorded session) and ``replay_serve``
(a remote bot against a fork of one).
May import wire, the runtime and everything below them; not cli.
"""

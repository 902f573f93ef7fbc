"""The oldest ``nats-server`` the journal works with, checked when it opens its stream.

A server too old for what the journal asks of it does not always say so: one before
2.12 ignores the stream's ``allow_atomic`` and stores a batch's messages one by one (a
command's events would no longer be all or nothing), and 2.12 to 2.14 refuse an atomic
batch that carries ``Nats-Msg-Id`` (err_code 10177) only when the first one is sent. So
the journal refuses such a server up front, naming both versions.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

from plantangenet.errors import JournalError

#: The oldest server version (major, minor) the journal works with: its atomic batches
#: take ``Nats-Msg-Id``, and a full store refuses appends as the journal names them.
OLDEST_SERVER = (2, 15)


def check_server_version(nc: NATS) -> None:
    """Raise :class:`JournalError` if the server ``nc`` (a connected nats-py client) is
    connected to is older than :data:`OLDEST_SERVER`.

    A version that cannot be read (a build of its own) is let through: the server's
    answers will tell.
    """
    try:
        version = nc.connected_server_version
        found = (version.major, version.minor)
    except (AttributeError, ValueError):
        return
    if version.dev == "unknown":  # not connected now: nothing to tell
        return
    if found < OLDEST_SERVER:
        oldest = ".".join(map(str, OLDEST_SERVER))
        url = nc.connected_url
        raise JournalError(
            f"the NATS server{f' at {url.geturl()}' if url else ''} runs nats-server "
            f"{version.major}.{version.minor}.{version.patch}; plantangenet needs {oldest} or "
            "later (a command's events are one atomic batch carrying Nats-Msg-Id, which "
            "older servers refuse or store one by one)"
        )

"""Connecting to NATS: one place for the options every connection of the library uses,
a refused login or an unreachable server failing clearly (never a retry for ever), and
URLs written into messages without their passwords."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import nats
import nats.errors

from plantangenet.errors import JournalError

log = logging.getLogger("plantangenet.runtime")

#: Seconds a first connection may take before it fails (nats-py retries a server that
#: refuses connections for as long as its reconnect settings allow: for ever here).
CONNECT_WAIT = 20.0


class DeniedSubjects:
    """The subjects the server refused a connection (its permissions violations, as
    nats-py hands them to ``error_cb``, subject lower-cased): a request that timed out
    can tell whether the server never carried it. The last 256 are kept."""

    _VIOLATION = re.compile(r'permissions violation for (?:publish to|subscription to) "([^"]*)"')

    def __init__(self) -> None:
        self._denied: dict[str, str] = {}

    def note(self, error: BaseException) -> None:
        """Keep ``error`` if it is a permissions violation naming a subject."""
        found = self._VIOLATION.search(str(error))
        if found is not None:
            if len(self._denied) >= 256:
                self._denied.clear()
            self._denied[found[1]] = str(error)

    def denial(self, subject: str) -> str | None:
        """The server's error refusing ``subject``, if it sent one."""
        return self._denied.get(subject.lower())


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(://[^:/@,]+):[^@/,]*@", r"\1:***@", url)


async def connect(
    url: str,
    nats_options: dict[str, Any],
    name: str | None = None,
    wait: float | None = None,
    denied: DeniedSubjects | None = None,
) -> Any:
    """A ``nats.aio.client.Client`` connected to ``url`` (comma-separated servers).

    It reconnects for ever once connected. A refused login fails at once, and a first
    connection that no server accepts within ``wait`` seconds (default
    :data:`CONNECT_WAIT`) fails with a ``JournalError`` naming the URL (its password
    redacted). ``denied``, if given, notes the permissions violations the server sends.
    """
    wait = CONNECT_WAIT if wait is None else wait
    options: dict[str, Any] = {
        "name": "plantangenet",
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
        **nats_options,
    }
    if name is not None:
        options["name"] = name
    refused: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    user_error_cb = options.pop("error_cb", None)

    async def error_cb(error: BaseException) -> None:
        # nats-py keeps retrying a refused login; fail fast instead.
        if "authorization" in str(error).lower() and not refused.done():
            refused.set_result(error)
        if denied is not None:
            denied.note(error)
        if user_error_cb is not None:
            await user_error_cb(error)
        else:  # one line per problem (nats-py's default logs a traceback)
            log.warning("nats: %s", error or type(error).__name__)

    connecting = asyncio.ensure_future(
        nats.connect(servers=[u.strip() for u in url.split(",")], error_cb=error_cb, **options)
    )
    try:
        racing: set[asyncio.Future[Any]] = {connecting, refused}
        await asyncio.wait(racing, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            if refused.done():
                raise JournalError(f"NATS at {redact(url)} refused the login: {refused.result()}")
            raise JournalError(
                f"cannot connect to NATS at {redact(url)}: no server accepted a connection "
                f"within {wait:g} s"
            )
        return connecting.result()
    except (OSError, nats.errors.Error) as exc:
        raise JournalError(f"cannot connect to NATS at {redact(url)}: {exc}") from exc

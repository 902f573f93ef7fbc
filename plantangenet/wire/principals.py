"""Who sent a request, as the NATS server says: the principal of a request.

With accounts (see :mod:`plantangenet.wire.access`) the server adds a request-info header
naming the sending account and user; :func:`principal_from_headers` reads it (and
nothing a client could have written itself).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Final

#: The header nats-server sets on a request that crossed a (shared) service import.
REQUEST_INFO_HEADER: Final = "Nats-Request-Info"


#: A principal part (account or user) in :func:`principal_from_request_info`: printable
#: ASCII without space or '@' (so ``user@account`` parses back unambiguously).
_PRINCIPAL_PART: Final = re.compile(r"[!-?A-~]{1,256}")


#: Longer request-info values are refused unparsed (the server's are a few hundred bytes).
_MAX_REQUEST_INFO: Final = 16 * 1024


def principal_from_request_info(value: str) -> str | None:
    """Who sent a request, from its ``Nats-Request-Info`` header value.

    Returns ``"<user>@<account>"``, or ``"@<account>"`` when the value names
    no user (an import without ``share: true``, or a publish by the account's
    JetStream itself), and ``None`` when the value is missing, empty, too long,
    not a JSON object, or has no usable ``"acc"``. Account and user must be
    printable ASCII without space or ``@``; anything else gives ``None``.
    Never raises, whatever ``value`` is.

    Trust it only on a subscription in the service account, and read the
    header by its exact name (or use :func:`principal_from_headers`): the
    server replaces that header on every request crossing an import, so a bot
    cannot forge it; a user of the service account itself could, and its
    requests cross no import and normally carry no such header (``None``).
    Authorize by the account: it is the bot (one bot per account); the user
    is missing from what the bot's own JetStream publishes into the import.
    """
    if not isinstance(value, str) or not value or len(value) > _MAX_REQUEST_INFO:
        return None
    try:
        info = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(info, dict):
        return None
    account = info.get("acc")
    user = info.get("user")
    if not isinstance(account, str) or not _PRINCIPAL_PART.fullmatch(account):
        return None
    if user is None or user == "":
        return f"@{account}"
    if not isinstance(user, str) or not _PRINCIPAL_PART.fullmatch(user):
        return None
    return f"{user}@{account}"


def principal_from_headers(headers: Mapping[str, str] | None) -> str | None:
    """:func:`principal_from_request_info` of ``msg.headers`` (nats-py's dict, or ``None``).

    Reads :data:`REQUEST_INFO_HEADER` by its exact name, which is the one the
    server replaces. A bot may still send the same name in another case
    (``nats-request-info``): the server passes that through as a header of its
    own, which a case-insensitive lookup could pick instead of the server's.
    Such a request gets ``None`` (no principal) rather than a guess.
    """
    try:
        if not headers:
            return None
        value = headers.get(REQUEST_INFO_HEADER)
        folded = REQUEST_INFO_HEADER.casefold()
        variants = [k for k in headers if isinstance(k, str) and k.casefold() == folded]
    except Exception:  # not a mapping of strings after all
        return None
    if variants != [REQUEST_INFO_HEADER] or not isinstance(value, str):
        return None
    known = _PRINCIPALS.get(value)  # a connection's requests carry the same value
    if known is None:
        known = principal_from_request_info(value) or ""
        if len(_PRINCIPALS) >= 4096:
            _PRINCIPALS.clear()
        _PRINCIPALS[value] = known
    return known or None


#: Recent ``Nats-Request-Info`` values and the principals they name ("" for none).
_PRINCIPALS: dict[str, str] = {}

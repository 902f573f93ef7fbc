"""Checks on an access configuration: sizes, limits, names and subject prefixes.

What :mod:`plantangenet.wire.access` validates before writing a ``nats-server`` config:
a bad value is an :class:`~plantangenet.wire.access.InvalidAccessConfig` naming it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Final

from plantangenet.nats.config import InvalidAccessConfig

#: Session ids, as everywhere in plantangenet.
_SESSION: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


#: User, account and stream names: one subject token, no wildcards or separators.
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


#: Passwords: printable ASCII without space, quote or backslash (so no escaping is
#: needed). A bcrypt hash (``$2a$...``, from ``nats server passwd``) qualifies.
_PASSWORD: Final = re.compile(r"[!#-\[\]-~]{1,256}")


#: A subject prefix: dot-separated tokens of letters, digits, '_' and '-'.
_PREFIX: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


#: First subject tokens the server uses for replies: a prefix must not start with them.
_REPLY_TOKENS: Final = ("_INBOX", "_R_")


@dataclasses.dataclass(frozen=True, slots=True)
class BotAccess:
    """A bot's credentials, the sessions it may command and follow, and its account.

    :param user: the NATS user name (letters, digits, ``_`` and ``-``).
    :param password: its password (printable ASCII without space, ``"`` or
        ``\\``), or a bcrypt hash of it.
    :param sessions: the session ids the bot may command and follow.
    :param account: the bot's account; ``None``: ``bot-<user>``. No other bot
        may have the same account.
    :param max_consumers: JetStream limits of the bot's account (consumers per
        stream, streams, file and memory storage in bytes); ``None``: the
        ``bot_max_*`` defaults of :func:`server_config`.
    :param lane: the service's ingress lane the bot's requests arrive on (``None``:
        its place among the bots, modulo the lanes).
    """

    user: str
    password: str
    sessions: tuple[str, ...]
    account: str | None = None
    max_consumers: int | None = None
    max_streams: int | None = None
    max_storage: int | None = None
    max_memory: int | None = None
    lane: int | None = None


#: Limits: counts must be positive (nats-server reads 0 as "unlimited"), bytes may be 0
#: ("none of this storage"); -1 ("unlimited") is refused.
_MAX_LIMIT: Final = 2**62


_SIZE: Final = re.compile(r"(\d{1,19})\s*(?:([KMGT])(?:i?B)?|B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``"268435456"``, ``"256M"``, ``"256MiB"``, ``"1G"``... (K/M/G/T: powers of 1024).

    :raises InvalidAccessConfig: not a size.
    """
    match = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidAccessConfig(f"not a size: {text!r}; use bytes, or a number with K, M, G or T")
    number, unit = int(match.group(1)), (match.group(2) or "").upper()
    return number << (10 * ("KMGT".index(unit) + 1) if unit else 0)


def _check(value: object, pattern: re.Pattern[str], label: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shown = "<hidden>" if "password" in label and isinstance(value, str) else repr(value)
        raise InvalidAccessConfig(f"{label} is not allowed: {shown}; {_RULES[pattern.pattern]}")
    return value


_RULES: Final = {
    _SESSION.pattern: "use 1-128 letters, digits, '_' or '-'",
    _NAME.pattern: "use 1-64 letters, digits, '_' or '-'",
    _PASSWORD.pattern: "use 1-256 printable ASCII characters without space, '\"' or '\\'",
    _PREFIX.pattern: "use dot-separated tokens of letters, digits, '_' or '-'",
}


def _pick(own: int | None, default: int) -> int:
    return default if own is None else own


def _limit(value: object, minimum: int, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= _MAX_LIMIT:
        raise InvalidAccessConfig(
            f"{label} is not allowed: {value!r}; use a whole number from {minimum} to {_MAX_LIMIT}"
        )
    return value


def _check_bot(bot: BotAccess) -> tuple[str, ...]:
    if not isinstance(bot, BotAccess):
        raise InvalidAccessConfig(f"bots must be BotAccess instances, got {bot!r}")
    _check(bot.user, _NAME, "user name")
    _check(bot.password, _PASSWORD, f"password of user {bot.user!r}")
    if isinstance(bot.sessions, str) or not isinstance(bot.sessions, Iterable):
        raise InvalidAccessConfig(
            f"sessions of bot {bot.user!r} must be a tuple of session ids, got {bot.sessions!r}"
        )
    sessions = tuple(bot.sessions)
    if not sessions:
        raise InvalidAccessConfig(f"bot {bot.user!r} has no sessions")
    for session in sessions:
        _check(session, _SESSION, f"session id of bot {bot.user!r}")
    if len(set(sessions)) != len(sessions):
        raise InvalidAccessConfig(f"bot {bot.user!r} lists a session twice: {sessions!r}")
    return sessions


def _check_prefixes(**prefixes: str) -> None:
    """Each prefix is well formed, avoids reply subjects, and overlaps no other one."""
    for key, prefix in prefixes.items():
        label = key.removesuffix("_prefix")
        _check(prefix, _PREFIX, f"{label} subject prefix")
        if prefix.split(".")[0].startswith(_REPLY_TOKENS):
            raise InvalidAccessConfig(f"subject prefix {prefix!r} collides with reply subjects")
    items = list(prefixes.items())
    for i, (key_a, a) in enumerate(items):
        for key_b, b in items[i + 1 :]:
            tokens_a, tokens_b = a.split("."), b.split(".")
            shortest = min(len(tokens_a), len(tokens_b))
            if tokens_a[:shortest] == tokens_b[:shortest]:
                raise InvalidAccessConfig(
                    f"{key_a.replace('_', ' ')} {a!r} and {key_b.replace('_', ' ')} {b!r} "
                    "overlap; none may be another or start with it"
                )

"""The ``nats-server`` configuration of a deployment: one account, a service user, bots.

The service (the plantangenet runtime) may do anything inside the account. A
bot may only command and read the sessions it is given:

*   publish requests to ``<command prefix>.<session>.*``;
*   receive replies on its own inbox, ``_INBOX_<user>.>`` (so it must connect
    with ``nats.connect(..., inbox_prefix=inbox_prefix(user))``) and nowhere
    else, so it cannot read other bots' replies;
*   read its sessions' events the way :class:`plantangenet.journal.Journal`
    does: create (ordered, push) consumers filtered on one session's subject
    (``$JS.API.CONSUMER.CREATE.<stream>.<name>.<event prefix>.<session>``),
    direct-get a session's last message
    (``$JS.API.DIRECT.GET.<stream>.<event prefix>.<session>``), and answer
    the consumers' flow control (``$JS.FC.<stream>.>``) and acks (``$JS.ACK.<stream>.>``).

Publishing to the event subjects is denied to bots explicitly, and so is
subscribing to event and command subjects; no bot gets the wider JetStream
API (stream info, message get, consumer listing or deletion...).

>>> conf = server_config(
...     service_user="service",
...     service_password="s3cret",
...     bots=[BotAccess("alice", "alice-pw", ("A",))],
... )
>>> '"plantangenet.cmd.A.*"' in conf
True
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from plantangenet.errors import PlantangenetError
from plantangenet.journal import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX
from plantangenet.protocol import DEFAULT_COMMAND_PREFIX

__all__ = [
    "BotAccess",
    "InvalidAccessConfig",
    "bot_permissions",
    "inbox_prefix",
    "server_config",
    "write_config",
]

#: Session ids, as everywhere in plantangenet.
_SESSION: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: User, account and stream names: one subject token, no wildcards or separators.
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Passwords: printable ASCII without space, quote or backslash (so no escaping is
#: needed). A bcrypt hash (``$2a$...``, from ``nats server passwd``) qualifies.
_PASSWORD: Final = re.compile(r"[!#-\[\]-~]{1,256}")
#: A subject prefix: dot-separated tokens of letters, digits, '_' and '-'.
_PREFIX: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
#: The name of the system account defined with ``system_account=True``.
SYSTEM_ACCOUNT: Final = "SYS"


class InvalidAccessConfig(PlantangenetError):
    """An argument of :func:`server_config` is not safe to put in a server config."""

    code = "invalid_access_config"


@dataclasses.dataclass(frozen=True, slots=True)
class BotAccess:
    """A bot's credentials and the sessions it may command and read.

    :param user: the NATS user name (letters, digits, ``_`` and ``-``).
    :param password: its password (printable ASCII without space, ``"`` or
        ``\\``), or a bcrypt hash of it.
    :param sessions: the session ids the bot may command and read.
    """

    user: str
    password: str
    sessions: tuple[str, ...]


def inbox_prefix(user: str) -> str:
    """The inbox prefix ``user`` must connect with: ``_INBOX_<user>``."""
    return "_INBOX_" + _check(user, _NAME, "user name")


def bot_permissions(
    bot: BotAccess,
    *,
    stream: str = DEFAULT_STREAM,
    event_prefix: str = DEFAULT_SUBJECT_PREFIX,
    command_prefix: str = DEFAULT_COMMAND_PREFIX,
) -> dict[str, dict[str, list[str]]]:
    """The ``permissions`` of ``bot``: ``{"publish"/"subscribe": {"allow"/"deny": [...]}}``."""
    sessions = _check_bot(bot)
    _check(stream, _NAME, "stream name")
    _check_prefixes(event_prefix, command_prefix)
    publish = [f"{command_prefix}.{session}.*" for session in sessions]
    # A named consumer is created on a subject that ends with its filter subject, and
    # the server refuses a request whose config filters on anything else (err 10131)
    # or on several subjects (err 10137): this is what confines a bot's reads.
    publish += [f"$JS.API.CONSUMER.CREATE.{stream}.*.{event_prefix}.{s}" for s in sessions]
    # Last message of a subject; a direct get by sequence ($JS.API.DIRECT.GET.<stream>)
    # would reach every session, so only the by-subject form is allowed.
    publish += [f"$JS.API.DIRECT.GET.{stream}.{event_prefix}.{s}" for s in sessions]
    # Flow control replies of push consumers: $JS.FC.<stream>.<consumer>.<token>.
    # The server asks for it after about 0.8 MB in flight; unanswered, a replay stalls.
    publish.append(f"$JS.FC.{stream}.>")
    # Acks of the reader's consumers: the journal acks every quarter of its read window
    # (AckAll) so that a replay keeps a bounded number of events in flight.
    publish.append(f"$JS.ACK.{stream}.>")
    return {
        "publish": {"allow": publish, "deny": [f"{event_prefix}.>"]},
        "subscribe": {
            "allow": [f"{inbox_prefix(bot.user)}.>"],
            "deny": [f"{event_prefix}.>", f"{command_prefix}.>"],
        },
    }


def server_config(
    *,
    service_user: str,
    service_password: str,
    bots: Sequence[BotAccess],
    account: str = "PLANTANGENET",
    stream: str = DEFAULT_STREAM,
    event_prefix: str = DEFAULT_SUBJECT_PREFIX,
    command_prefix: str = DEFAULT_COMMAND_PREFIX,
    store_dir: str | os.PathLike[str] | None = None,
    system_account: bool = False,
) -> str:
    """The text of a ``nats-server`` config file (``nats-server -c <file>``).

    It enables JetStream and defines ``account`` with JetStream enabled,
    holding the service user (allowed everything) and one user per bot (see
    the module docstring for what a bot may do).

    ``store_dir`` puts the JetStream store in the config (made absolute, as
    the server would resolve a relative one against its working directory).
    Leave it ``None`` when the server gets ``-sd`` on its command line, as
    :class:`~plantangenet.embedded.EmbeddedNats` always does: nats-server
    refuses to start when both are given, even with the same directory.

    With ``system_account=True`` a ``SYS`` account is added and made the
    server's system account, with one user, ``<service_user>-sys``, sharing
    the service password (for monitoring tools such as ``nats server report``).

    Listen address, port, TLS and clustering are left to the command line (or
    to a config that includes this one).

    :raises InvalidAccessConfig: a name, password, session id or prefix is not
        safe, a user name is used twice, or a bot has no sessions.
    """
    _check(service_user, _NAME, "service user name")
    _check(service_password, _PASSWORD, f"password of user {service_user!r}")
    _check(account, _NAME, "account name")
    _check(stream, _NAME, "stream name")
    _check_prefixes(event_prefix, command_prefix)
    if isinstance(bots, BotAccess):
        raise InvalidAccessConfig("bots must be a sequence of BotAccess, not a single one")
    system_user = f"{service_user}-sys"
    if system_account:
        _check(system_user, _NAME, "system user name")
        if account == SYSTEM_ACCOUNT:
            raise InvalidAccessConfig(f"the account cannot be named {SYSTEM_ACCOUNT!r}")
    seen = {service_user} | ({system_user} if system_account else set())
    users: list[dict[str, Any]] = [
        {
            "user": service_user,
            "password": service_password,
            "permissions": {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}},
        }
    ]
    for bot in bots:
        permissions = bot_permissions(
            bot, stream=stream, event_prefix=event_prefix, command_prefix=command_prefix
        )
        if bot.user in seen:
            raise InvalidAccessConfig(f"user name {bot.user!r} is used more than once")
        seen.add(bot.user)
        users.append({"user": bot.user, "password": bot.password, "permissions": permissions})

    lines = ["# nats-server configuration written by plantangenet.access", ""]
    if store_dir is None:
        lines.append("jetstream {}")
    else:
        store = _quote(str(Path(store_dir).absolute()), "store_dir")
        lines += ["jetstream {", f"  store_dir: {store}", "}"]
    lines += ["", "accounts {", f"  {account} {{", "    jetstream: enabled", "    users: ["]
    for user in users:
        lines += _user_lines(user, indent="      ")
    lines += ["    ]", "  }"]
    if system_account:
        lines += [
            f"  {SYSTEM_ACCOUNT} {{",
            "    users: [",
            f"      {{user: {_quote(system_user)}, password: {_quote(service_password)}}}",
            "    ]",
            "  }",
        ]
    lines.append("}")
    if system_account:
        lines += ["", f"system_account: {SYSTEM_ACCOUNT}"]
    return "\n".join(lines) + "\n"


def write_config(path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Write :func:`server_config` (``kwargs``) to ``path``, readable by its owner only.

    The file holds passwords, so it is created with mode ``0o600``; an
    existing file is replaced. Returns the path.
    """
    text = server_config(**kwargs)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# -- internals ------------------------------------------------------------------------


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


def _check_prefixes(event_prefix: str, command_prefix: str) -> None:
    _check(event_prefix, _PREFIX, "event subject prefix")
    _check(command_prefix, _PREFIX, "command subject prefix")
    for prefix in (event_prefix, command_prefix):
        if prefix.split(".")[0].startswith("_INBOX"):
            raise InvalidAccessConfig(f"subject prefix {prefix!r} collides with reply inboxes")
    events, commands = event_prefix.split("."), command_prefix.split(".")
    shortest = min(len(events), len(commands))
    if events[:shortest] == commands[:shortest]:
        raise InvalidAccessConfig(
            f"event prefix {event_prefix!r} and command prefix {command_prefix!r} overlap; "
            "neither may be the other or start with it"
        )


def _quote(value: str, label: str = "value") -> str:
    if any(c in value for c in '"\\\n\r') or not value.isprintable():
        raise InvalidAccessConfig(f"{label} cannot be quoted in a server config: {value!r}")
    return f'"{value}"'


def _user_lines(user: dict[str, Any], indent: str) -> list[str]:
    lines = [f"{indent}{{", f"{indent}  user: {_quote(user['user'])}"]
    lines.append(f"{indent}  password: {_quote(user['password'])}")
    lines.append(f"{indent}  permissions: {{")
    for direction in ("publish", "subscribe"):
        lines.append(f"{indent}    {direction}: {{")
        for kind, subjects in user["permissions"][direction].items():
            quoted = ", ".join(_quote(s) for s in subjects)
            lines.append(f"{indent}      {kind}: [{quoted}]")
        lines.append(f"{indent}    }}")
    lines += [f"{indent}  }}", f"{indent}}}"]
    return lines

"""The ``nats-server`` configuration of a deployment: identity from accounts.

Every bot gets a NATS *account* of its own; the service (the plantangenet
runtime) has another one, which alone holds the event stream. Accounts are
separate subject spaces: nothing a bot publishes or subscribes to reaches the
service account except through what that account *exports* and the bot's
account *imports*. The config written by :func:`server_config` looks like::

    accounts {
      "PLANTANGENET" {                       # the service account (``account=``)
        jetstream: enabled                   # the event stream lives here
        users: [{user: <service user>, ..., permissions: allow everything}]
        exports: [
          {service: "<command prefix>.*.*.*.*", account_token_position: <n>,
           accounts: [<every bot account>]}
          {stream: "<live prefix>.*", accounts: [<every bot account>]}
        ]
      }
      "bot-alice" {                          # one account per bot
        jetstream: {max_mem: ..., max_file: ..., max_streams: ..., max_consumers: ...}
        users: [{user: "alice", ..., permissions: {...}}]
        imports: [                           # two per session of the bot
          {service: {account: "PLANTANGENET",
                     subject: "<command prefix>.<lane>.bot-alice.A.*"},
           to: "<command prefix>.A.*", share: true}
          {stream: {account: "PLANTANGENET", subject: "<live prefix>.A"}}
        ]
      }
      SYS {...}                              # with system_account=True
    }

What this gives, and why:

*   **Commands.** A bot's request on ``<command prefix>.<session>.<name>``,
    for one of its sessions, crosses the service import into the service
    account, where the service answers it. There it arrives on
    ``<command prefix>.<lane>.<account>.<session>.<name>``: the import maps it
    onto the bot's *ingress lane* (``lane``, bot *i* on lane *i* mod ``lanes``)
    and its account, whose token nats-server checks against the importing
    account (``account_token_position``), so no bot arrives as another. The
    service reads each lane on a connection of its own, so a bot that floods
    its lane delays the bots of other lanes only as much as the CPU they share
    (``plantangenet serve --lanes`` must equal ``nats-config --lanes``).
    The server replaces the bot's reply subject with one of its own
    (``_R_.<x>.<y>``, mapped back to the bot's inbox) and, because the import
    is written with ``share: true``, adds the header ``Nats-Request-Info``
    (:data:`REQUEST_INFO_HEADER`): JSON naming the bot's account (``"acc"``)
    and user (``"user"``). A header of
    that name sent by the bot is replaced (one in another case, such as
    ``nats-request-info``, is passed through beside it), so the service learns
    who asks from the server, not from the payload: see
    :func:`principal_from_headers` and :func:`principal_from_request_info`.
    For a session the bot does not have, the bot's account has no import: the
    request goes nowhere (no responders). The bot's own JetStream may publish
    into its sessions' command subjects too (a stream that republishes there):
    such messages name the account (``"kind": "JetStream"``), no user, and have
    no reply subject.
*   **Live events.** The service's stream republishes each stored event on
    ``<live prefix>.<session>``; the stream export and the bot's per-session
    imports deliver those of its sessions, and only those, to the bot.
*   **No JetStream of the service.** A bot's ``$JS.API.*`` requests reach its
    own account's JetStream, never the service's: it cannot see, create or
    update consumers on the service's stream (whose 1,000-consumer limit it
    could otherwise fill), aim push deliveries at other subjects, read other
    sessions, or publish events (``<event prefix>.*`` in the bot's account is
    another subject space that the service's stream does not listen to).
*   **Its own JetStream, bounded.** A bot may use JetStream in its own account
    (e.g. to keep its sessions' live events in a stream of its own), within
    per-account limits: ``max_mem``/``max_file`` bytes, ``max_streams`` and
    ``max_consumers`` (nats-server applies the consumer limit *per stream*).
    On a single server these limits are *reserved*: the sum over all bot
    accounts must fit in the server's JetStream ``max_memory_store`` (75 % of
    RAM by default) and ``max_file_store`` (its disk), or the server refuses to
    enable JetStream for the accounts past the total.

The bot *user*'s permissions inside its account are defence in depth (the
account already confines it) and say what a bot client needs, nothing more:

*   publish: its sessions' command subjects ``<command prefix>.<session>.*``;
    ``$JS.API.>``, ``$JS.ACK.>`` and ``$JS.FC.>`` (its own JetStream API, acks
    and flow control answers of its own consumers). Not ``_INBOX.>``: a bot
    answers no requests. Not the live subjects: those come from the service.
*   subscribe: ``_INBOX.>`` (nats-py's default reply inbox, for command replies
    and its own JetStream API replies; within its own account nobody else can
    see it), ``_INBOX_<user>.>`` (:func:`inbox_prefix`, which older clients
    connect with; no longer required) and its sessions' live subjects
    ``<live prefix>.<session>``.

Each bot has an account of its own: two bots naming the same account are
refused. An account is the unit of identity (internal publishes, e.g. by its
JetStream, carry the account but no user), of reply inboxes (``_INBOX.>`` is
shared inside an account) and of JetStream resources; sharing one would let
bots read each other's replies and streams. The account of a bot is
``bot-<user>`` unless :attr:`BotAccess.account` names it; either way it must
be 1-64 letters, digits, ``_`` or ``-`` (so a derived name needs a user name of
at most 60 characters), and differ (ignoring case) from every other account.

The service export allows one reply per request (nats-server's default
``singleton`` response type), which is what the session service sends.

>>> conf = server_config(
...     service_user="service",
...     service_password="s3cret",
...     bots=[BotAccess("alice", "alice-pw", ("A",))],
... )
>>> 'subject: "plantangenet.cmd.0.bot-alice.A.*"}, to: "plantangenet.cmd.A.*", share: true}' in conf
True
>>> principal_from_request_info('{"acc": "bot-alice", "user": "alice"}')
'alice@bot-alice'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from plantangenet.log.journal import DEFAULT_LIVE_PREFIX, DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX
from plantangenet.nats.config import InvalidAccessConfig as InvalidAccessConfig
from plantangenet.nats.config import _Account, _array, _list, _map, _quote, _User
from plantangenet.nats.embedded import EmbeddedNats
from plantangenet.wire.access_checks import (
    _NAME,
    _PASSWORD,
    _check,
    _check_bot,
    _check_prefixes,
    _limit,
    _pick,
)
from plantangenet.wire.access_checks import BotAccess as BotAccess
from plantangenet.wire.access_checks import parse_size as parse_size
from plantangenet.wire.principals import REQUEST_INFO_HEADER as REQUEST_INFO_HEADER
from plantangenet.wire.principals import principal_from_headers as principal_from_headers
from plantangenet.wire.principals import principal_from_request_info as principal_from_request_info
from plantangenet.wire.subjects import DEFAULT_COMMAND_PREFIX, DEFAULT_LANES

__all__ = [
    "BOT_ACCOUNT_PREFIX",
    "DEFAULT_ACCOUNT",
    "DEFAULT_BOT_MAX_CONSUMERS",
    "DEFAULT_BOT_MAX_MEMORY",
    "DEFAULT_BOT_MAX_STORAGE",
    "DEFAULT_BOT_MAX_STREAMS",
    "REQUEST_INFO_HEADER",
    "SYSTEM_ACCOUNT",
    "BotAccess",
    "InvalidAccessConfig",
    "LockedDownNats",
    "bot_account",
    "bot_limits",
    "bot_permissions",
    "inbox_prefix",
    "parse_size",
    "principal_from_headers",
    "principal_from_request_info",
    "server_config",
    "write_config",
]

#: The service account unless ``server_config(account=...)`` says otherwise.
DEFAULT_ACCOUNT: Final = "PLANTANGENET"
#: A bot's account is ``bot-<user>`` unless :attr:`BotAccess.account` names it.
BOT_ACCOUNT_PREFIX: Final = "bot-"
#: The name of the system account defined with ``system_account=True``.
SYSTEM_ACCOUNT: Final = "SYS"
#: Default JetStream limits of a bot's account (``max_consumers`` is per stream).
DEFAULT_BOT_MAX_CONSUMERS: Final = 100
DEFAULT_BOT_MAX_STREAMS: Final = 10
DEFAULT_BOT_MAX_STORAGE: Final = 256 * 1024 * 1024
DEFAULT_BOT_MAX_MEMORY: Final = 32 * 1024 * 1024


def inbox_prefix(user: str) -> str:
    """``_INBOX_<user>``: an inbox prefix ``user`` may connect with.

    Kept for compatibility: bots used to need it (they shared the service's
    account). In its own account a bot may also use nats-py's default
    ``_INBOX``, which nobody else can see.
    """
    return "_INBOX_" + _check(user, _NAME, "user name")


def bot_account(bot: BotAccess) -> str:
    """The account of ``bot``: :attr:`BotAccess.account`, else ``bot-<user>``."""
    if not isinstance(bot, BotAccess):
        raise InvalidAccessConfig(f"bots must be BotAccess instances, got {bot!r}")
    _check(bot.user, _NAME, "user name")
    if bot.account is None:
        return _check(BOT_ACCOUNT_PREFIX + bot.user, _NAME, f"account name of bot {bot.user!r}")
    return _check(bot.account, _NAME, f"account name of bot {bot.user!r}")


def bot_limits(
    bot: BotAccess,
    *,
    max_consumers: int = DEFAULT_BOT_MAX_CONSUMERS,
    max_streams: int = DEFAULT_BOT_MAX_STREAMS,
    max_storage: int = DEFAULT_BOT_MAX_STORAGE,
    max_memory: int = DEFAULT_BOT_MAX_MEMORY,
) -> dict[str, int]:
    """The ``jetstream`` block of ``bot``'s account: its own limits, else the given ones.

    Keys as in the config: ``max_mem``, ``max_file`` (bytes), ``max_streams``,
    ``max_consumers`` (per stream).
    """
    if not isinstance(bot, BotAccess):
        raise InvalidAccessConfig(f"bots must be BotAccess instances, got {bot!r}")
    who = f"of bot {bot.user!r}"
    return {
        "max_mem": _limit(_pick(bot.max_memory, max_memory), 0, f"max_memory {who}"),
        "max_file": _limit(_pick(bot.max_storage, max_storage), 0, f"max_storage {who}"),
        "max_streams": _limit(_pick(bot.max_streams, max_streams), 1, f"max_streams {who}"),
        "max_consumers": _limit(_pick(bot.max_consumers, max_consumers), 1, f"max_consumers {who}"),
    }


def bot_permissions(
    bot: BotAccess,
    *,
    command_prefix: str = DEFAULT_COMMAND_PREFIX,
    live_prefix: str = DEFAULT_LIVE_PREFIX,
) -> dict[str, dict[str, list[str]]]:
    """The ``permissions`` of ``bot``'s user in its own account:
    ``{"publish"/"subscribe": {"allow": [...]}}`` (see the module docstring)."""
    sessions = _check_bot(bot)
    _check_prefixes(command_prefix=command_prefix, live_prefix=live_prefix)
    publish = [f"{command_prefix}.{session}.*" for session in sessions]
    publish += ["$JS.API.>", "$JS.ACK.>", "$JS.FC.>"]
    subscribe = ["_INBOX.>", f"{inbox_prefix(bot.user)}.>"]
    subscribe += [f"{live_prefix}.{session}" for session in sessions]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def server_config(
    *,
    service_user: str,
    service_password: str,
    bots: Sequence[BotAccess],
    account: str = DEFAULT_ACCOUNT,
    stream: str = DEFAULT_STREAM,
    event_prefix: str = DEFAULT_SUBJECT_PREFIX,
    command_prefix: str = DEFAULT_COMMAND_PREFIX,
    live_prefix: str = DEFAULT_LIVE_PREFIX,
    store_dir: str | os.PathLike[str] | None = None,
    system_account: bool = False,
    bot_max_consumers: int = DEFAULT_BOT_MAX_CONSUMERS,
    bot_max_streams: int = DEFAULT_BOT_MAX_STREAMS,
    bot_max_storage: int = DEFAULT_BOT_MAX_STORAGE,
    bot_max_memory: int = DEFAULT_BOT_MAX_MEMORY,
    lanes: int = DEFAULT_LANES,
) -> str:
    """The text of a ``nats-server`` config file (``nats-server -c <file>``).

    It enables JetStream and defines ``account``, with JetStream enabled and
    the service user (allowed everything), and one account per bot (see the
    module docstring). ``stream`` is only checked: the config no longer names
    the stream, which bots cannot reach. ``event_prefix``, ``command_prefix``
    and ``live_prefix`` must not overlap (none may be another or start with it).

    ``bot_max_consumers`` (per stream), ``bot_max_streams``,
    ``bot_max_storage`` and ``bot_max_memory`` (bytes) are the JetStream
    limits of bot accounts whose :class:`BotAccess` leaves them ``None``.

    ``store_dir`` puts the JetStream store in the config (made absolute, as
    the server would resolve a relative one against its working directory).
    Leave it ``None`` when the server gets ``-sd`` on its command line, as
    :class:`~plantangenet.nats.embedded.EmbeddedNats` always does: nats-server
    refuses to start when both are given, even with the same directory.

    With ``system_account=True`` a ``SYS`` account is added and made the
    server's system account, with one user, ``<service_user>-sys``, sharing
    the service password (for monitoring tools such as ``nats server report``).

    Listen address, port, TLS and clustering are left to the command line (or
    to a config that includes this one).

    :raises InvalidAccessConfig: a name, password, session id, prefix or limit
        is not safe, a user or account name is used twice, or a bot has no
        sessions.
    """
    _check(service_user, _NAME, "service user name")
    _check(service_password, _PASSWORD, f"password of user {service_user!r}")
    _check(account, _NAME, "account name")
    _check(stream, _NAME, "stream name")
    _check_prefixes(
        event_prefix=event_prefix, command_prefix=command_prefix, live_prefix=live_prefix
    )
    defaults = {
        "max_consumers": _limit(bot_max_consumers, 1, "bot_max_consumers"),
        "max_streams": _limit(bot_max_streams, 1, "bot_max_streams"),
        "max_storage": _limit(bot_max_storage, 0, "bot_max_storage"),
        "max_memory": _limit(bot_max_memory, 0, "bot_max_memory"),
    }
    if isinstance(bots, BotAccess | str | bytes):
        raise InvalidAccessConfig("bots must be a sequence of BotAccess, not a single one")
    system_user = f"{service_user}-sys"
    if system_account:
        _check(system_user, _NAME, "system user name")
    users = {service_user} | ({system_user} if system_account else set())
    accounts = {account.casefold(): f"the service account {account!r}"}
    if system_account:
        owner = accounts.setdefault(SYSTEM_ACCOUNT.casefold(), "the system account")
        if owner != "the system account":
            raise InvalidAccessConfig(f"the account cannot be named {SYSTEM_ACCOUNT!r}")

    if type(lanes) is not int or not 1 <= lanes <= 1024:
        raise InvalidAccessConfig(f"lanes: 1 to 1024 ingress lanes, got {lanes!r}")
    blocks: list[_Account] = []
    for index, bot in enumerate(bots):
        permissions = bot_permissions(bot, command_prefix=command_prefix, live_prefix=live_prefix)
        name = bot_account(bot)
        limits = bot_limits(bot, **defaults)
        if bot.user in users:
            raise InvalidAccessConfig(f"user name {bot.user!r} is used more than once")
        users.add(bot.user)
        owner = accounts.setdefault(name.casefold(), f"bot {bot.user!r}")
        if owner != f"bot {bot.user!r}":
            raise InvalidAccessConfig(
                f"account {name!r} of bot {bot.user!r} is already {owner}'s; "
                "each bot needs an account of its own"
            )
        lane = index % lanes if bot.lane is None else bot.lane
        if type(lane) is not int or not 0 <= lane < lanes:
            raise InvalidAccessConfig(f"lane of bot {bot.user!r}: 0 to {lanes - 1}, got {lane!r}")
        imports = []
        for session in bot.sessions:
            service = {
                "account": account,
                "subject": f"{command_prefix}.{lane}.{name}.{session}.*",
            }
            local = _quote(f"{command_prefix}.{session}.*")
            imports.append(f"{{service: {_map(service)}, to: {local}, share: true}}")
            live = {"account": account, "subject": f"{live_prefix}.{session}"}
            imports.append(f"{{stream: {_map(live)}}}")
        blocks.append(
            _Account(
                name=name,
                jetstream=_map(limits),
                users=[_User(bot.user, bot.password, permissions)],
                lines=_list("imports", imports),
            )
        )

    everything = {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    exports: list[str] = []
    if blocks:  # an export without "accounts" would be public: write none without bots
        names = [block.name for block in blocks]
        # The server checks that the account token of a request's subject is the
        # importing account's own name: a bot cannot arrive as another.
        position = len(command_prefix.split(".")) + 2
        exports += [
            f"{{service: {_quote(f'{command_prefix}.*.*.*.*')}, "
            f"account_token_position: {position}, accounts: {_array(names)}}}",
            f"{{stream: {_quote(f'{live_prefix}.*')}, accounts: {_array(names)}}}",
        ]
    service_block = _Account(
        name=account,
        jetstream="enabled",
        users=[_User(service_user, service_password, everything)],
        lines=_list("exports", exports),
    )

    lines = ["# nats-server configuration written by plantangenet.wire.access", ""]
    if store_dir is None:
        lines.append("jetstream {}")
    else:
        store = _quote(str(Path(store_dir).absolute()), "store_dir")
        lines += ["jetstream {", f"  store_dir: {store}", "}"]
    lines += ["", "accounts {"]
    for block in (service_block, *blocks):
        lines += block.render("  ")
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


class LockedDownNats:
    """A local ``nats-server`` running the deployment :func:`server_config` writes.

    For trying the locked-down setup on one machine, and for tests and benchmarks:
    the config is written (mode 0600) into ``root``, the server's store is
    ``root/store``, and the URLs carry each user's credentials::

        with LockedDownNats(root, "svc-pw", [BotAccess("alice", "pw", ("A",))]) as nats:
            service = Plantangenet.open(nats_url=nats.service_url)
            bot = await BotClient.connect(nats.bot_url("alice"), agent_id="alice")

    :param root: a directory of its own (created if missing).
    :param service_password: the service user's password.
    :param bots: the bots and their sessions.
    :param service_user: the service user's name.
    :param config: more :func:`server_config` options (prefixes, limits...).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        service_password: str,
        bots: Sequence[BotAccess],
        *,
        service_user: str = "plantangenet",
        **config: Any,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.service_user = service_user
        self.service_password = service_password
        self.bots = {bot.user: bot for bot in bots}
        self.config_path = write_config(
            self.root / "nats.conf",
            service_user=service_user,
            service_password=service_password,
            bots=list(bots),
            **config,
        )
        self.server = EmbeddedNats(self.root / "store", extra_args=["-c", str(self.config_path)])

    def start(self) -> LockedDownNats:
        """Start the server (returns self)."""
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop the server (its store stays)."""
        self.server.stop()

    def __enter__(self) -> LockedDownNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _url(self, user: str, password: str) -> str:
        return f"nats://{user}:{password}@{self.server.host}:{self.server.port}"

    @property
    def url(self) -> str:
        """The server's URL without credentials."""
        return self.server.url

    @property
    def service_url(self) -> str:
        """The URL the service (``plantangenet serve``, the operator's tools) connects with."""
        return self._url(self.service_user, self.service_password)

    def bot_url(self, user: str) -> str:
        """The URL bot ``user`` connects with."""
        return self._url(user, self.bots[user].password)


# -- internals ------------------------------------------------------------------------

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

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from plantangenet.embedded import EmbeddedNats
from plantangenet.errors import PlantangenetError
from plantangenet.journal import DEFAULT_LIVE_PREFIX, DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX
from plantangenet.subjects import DEFAULT_COMMAND_PREFIX, DEFAULT_LANES

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
#: The header nats-server sets on a request that crossed a (shared) service import.
REQUEST_INFO_HEADER: Final = "Nats-Request-Info"
#: Default JetStream limits of a bot's account (``max_consumers`` is per stream).
DEFAULT_BOT_MAX_CONSUMERS: Final = 100
DEFAULT_BOT_MAX_STREAMS: Final = 10
DEFAULT_BOT_MAX_STORAGE: Final = 256 * 1024 * 1024
DEFAULT_BOT_MAX_MEMORY: Final = 32 * 1024 * 1024

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
#: Limits: counts must be positive (nats-server reads 0 as "unlimited"), bytes may be 0
#: ("none of this storage"); -1 ("unlimited") is refused.
_MAX_LIMIT: Final = 2**62
#: A principal part (account or user) in :func:`principal_from_request_info`: printable
#: ASCII without space or '@' (so ``user@account`` parses back unambiguously).
_PRINCIPAL_PART: Final = re.compile(r"[!-?A-~]{1,256}")
#: Longer request-info values are refused unparsed (the server's are a few hundred bytes).
_MAX_REQUEST_INFO: Final = 16 * 1024
_SIZE: Final = re.compile(r"(\d{1,19})\s*(?:([KMGT])(?:i?B)?|B)?", re.IGNORECASE)


class InvalidAccessConfig(PlantangenetError):
    """An argument of :func:`server_config` is not safe to put in a server config."""

    code = "invalid_access_config"


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
    :class:`~plantangenet.embedded.EmbeddedNats` always does: nats-server
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

    lines = ["# nats-server configuration written by plantangenet.access", ""]
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


def parse_size(text: str) -> int:
    """Bytes from ``"268435456"``, ``"256M"``, ``"256MiB"``, ``"1G"``... (K/M/G/T: powers of 1024).

    :raises InvalidAccessConfig: not a size.
    """
    match = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidAccessConfig(f"not a size: {text!r}; use bytes, or a number with K, M, G or T")
    number, unit = int(match.group(1)), (match.group(2) or "").upper()
    return number << (10 * ("KMGT".index(unit) + 1) if unit else 0)


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


def _quote(value: str, label: str = "value") -> str:
    if any(c in value for c in '"\\\n\r') or not value.isprintable():
        raise InvalidAccessConfig(f"{label} cannot be quoted in a server config: {value!r}")
    return f'"{value}"'


def _scalar(value: str | int) -> str:
    return str(value) if isinstance(value, int) else _quote(value)


def _map(items: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in items.items()) + "}"


def _array(values: Iterable[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"


def _list(key: str, entries: list[str]) -> list[str]:
    """``key: [...]`` with one entry a line (indented by the caller), or nothing."""
    if not entries:
        return []
    return [f"{key}: [", *(f"  {entry}" for entry in entries), "]"]


@dataclasses.dataclass(frozen=True, slots=True)
class _User:
    user: str
    password: str
    permissions: dict[str, dict[str, list[str]]]

    def render(self, indent: str) -> list[str]:
        lines = [f"{indent}{{", f"{indent}  user: {_quote(self.user)}"]
        lines.append(f"{indent}  password: {_quote(self.password)}")
        lines.append(f"{indent}  permissions: {{")
        for direction, rules in self.permissions.items():
            parts = ", ".join(f"{kind}: {_array(subjects)}" for kind, subjects in rules.items())
            lines.append(f"{indent}    {direction}: {{{parts}}}")
        lines += [f"{indent}  }}", f"{indent}}}"]
        return lines


@dataclasses.dataclass(frozen=True, slots=True)
class _Account:
    name: str
    jetstream: str
    users: list[_User]
    lines: list[str]

    def render(self, indent: str) -> list[str]:
        inner = indent + "  "
        lines = [
            f"{indent}{_quote(self.name)} {{",
            f"{inner}jetstream: {self.jetstream}",
            f"{inner}users: [",
        ]
        for user in self.users:
            lines += user.render(inner + "  ")
        lines.append(f"{inner}]")
        lines += [inner + line for line in self.lines]
        lines.append(f"{indent}}}")
        return lines

"""The ``plantangenet`` command line.

``plantangenet demo`` runs a short scripted session on the embedded server;
``plantangenet sessions`` lists the sessions in the log; ``plantangenet
history SESSION_ID`` lists a session's events; ``plantangenet audit
SESSION_ID`` shows who did or tried what and which statement decided;
``plantangenet verify SESSION_ID`` checks the hash chain; ``state``, ``diff``,
``why`` and ``fork`` travel in a session's history (see docs/time-travel.md). Every command takes
``--json`` for machine output and ``--nats-url`` (or ``NATS_URL``) to use an
external server or cluster instead of the embedded one.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from plantangenet.cli import output
from plantangenet.cli.collector import SERVE_YOUNG_THRESHOLD
from plantangenet.cli.demo import cmd_demo
from plantangenet.cli.reading import cmd_audit, cmd_history, cmd_sessions
from plantangenet.cli.reports import cmd_cursors, cmd_ledger, cmd_quarantine, cmd_verify
from plantangenet.cli.serving import cmd_nats_config, cmd_serve, cmd_status
from plantangenet.cli.travel import cmd_diff, cmd_explore, cmd_fork, cmd_state, cmd_why
from plantangenet.errors import (
    PlantangenetError,
)
from plantangenet.log.journal import (
    DEFAULT_LIVE_PREFIX,
    DEFAULT_STREAM,
    DEFAULT_SUBJECT_PREFIX,
    LIMIT_ENV,
    MONITOR_URL_ENV,
    TIMEOUT_ENV,
    InvalidJournalConfig,
    parse_limit,
    parse_seconds,
)
from plantangenet.projections.audit_model import (
    GROUP_BY,
)
from plantangenet.runtime import default_store_dir
from plantangenet.wire.ownership import DEFAULT_LEASE_TTL, DEFAULT_PARTITIONS
from plantangenet.wire.protocol import DEFAULT_COMMAND_PREFIX, DEFAULT_LANES


def _seconds(name: str) -> Callable[[str], float]:
    """An argparse type: the ``name`` timeout of :func:`parse_seconds` (bad values: exit 2)."""

    def parse(text: str) -> float:
        try:
            return parse_seconds(name, text)
        except InvalidJournalConfig as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name}: ")) from None

    return parse


def _limit(name: str) -> Callable[[str], int]:
    """An argparse type: the ``name`` limit of :func:`parse_limit` (bad values: exit 2)."""

    def parse(text: str) -> int:
        try:
            return parse_limit(name, text)
        except InvalidJournalConfig as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name}: ")) from None

    return parse


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``) (bad values: exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, got {value}")
        return value

    return parse


def _duration(more_than: float = 0.0, *, zero: str = "") -> Callable[[str], float]:
    """An argparse type: seconds, more than ``more_than``; ``zero`` says what 0 means
    where 0 is allowed too (bad values: exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if zero and value == 0:
            return value
        if not value > more_than or value == float("inf"):  # (nan is not > anything)
            raise argparse.ArgumentTypeError(
                f"must be more than {more_than:g} seconds{f' (or 0: {zero})' if zero else ''}, "
                f"got {text}"
            )
        return value

    return parse


_count = _whole(0)


def _finite(text: str) -> float:
    """An argparse type: a finite number (bad values: exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


# -- entry point ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--nats-url",
        default=os.environ.get("NATS_URL"),
        help="NATS server/cluster URL (default: $NATS_URL, else an embedded nats-server)",
    )
    common.add_argument(
        "--store-dir",
        default=None,
        help=f"embedded server store (default: $PLANTANGENET_STORE_DIR or {default_store_dir()})",
    )
    common.add_argument(
        "--stream",
        default=os.environ.get("PLANTANGENET_STREAM") or DEFAULT_STREAM,
        help="JetStream stream name",
    )
    common.add_argument(
        "--subject-prefix",
        default=os.environ.get("PLANTANGENET_SUBJECT_PREFIX") or DEFAULT_SUBJECT_PREFIX,
        help="subject prefix of sessions",
    )
    common.add_argument(
        "--live-prefix",
        default=os.environ.get("PLANTANGENET_LIVE_PREFIX") or DEFAULT_LIVE_PREFIX,
        help="where the stream republishes each stored event for live readers "
        f"(default: $PLANTANGENET_LIVE_PREFIX or {DEFAULT_LIVE_PREFIX})",
    )
    # The stream's limits, for every command that may create the stream (any that opens
    # the log): set on a new stream, and on an existing one where they differ.
    unset = "else as the stream has it; none for a new stream"
    common.add_argument(
        "--max-bytes",
        type=_limit("max_bytes"),
        metavar="SIZE",
        help="the most bytes the stream holds: bytes, or e.g. 512M, 10G; -1: no limit "
        f"(default: ${LIMIT_ENV['max_bytes']}, {unset}). A full stream refuses appends",
    )
    common.add_argument(
        "--max-msgs",
        type=_limit("max_msgs"),
        metavar="N",
        help="the most events the stream holds, all sessions together; -1: no limit "
        f"(default: ${LIMIT_ENV['max_msgs']}, {unset})",
    )
    common.add_argument(
        "--replicas",
        type=_limit("replicas"),
        metavar="N",
        help=f"stream replicas, 1 to 5; 3 on a cluster (default: ${LIMIT_ENV['replicas']}, "
        "else as the stream has it; 1 for a new stream)",
    )
    common.add_argument(
        "--monitor-url",
        default=os.environ.get(MONITOR_URL_ENV) or None,
        metavar="URL",
        help="the server's HTTP monitoring, e.g. http://127.0.0.1:8222: a late append asks "
        f"its /healthz whether the store can write (default: ${MONITOR_URL_ENV}; the "
        "embedded server's own)",
    )
    common.add_argument(
        "--ack-timeout",
        type=_seconds("ack_timeout"),
        metavar="SECONDS",
        help="how long an append may take in all, its retries included "
        f"(default: ${TIMEOUT_ENV['ack_timeout']}, else 10)",
    )
    common.add_argument(
        "--attempt-timeout",
        type=_seconds("attempt_timeout"),
        metavar="SECONDS",
        help="how long one attempt of an append waits before it is sent again under the same "
        f"message ids (default: ${TIMEOUT_ENV['attempt_timeout']}, else 1)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")

    parser = argparse.ArgumentParser(prog="plantangenet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", parents=[common], help="run a scripted session and rehydrate it")
    demo.add_argument("--session-id", default=None, help="session id (default: demo-<time>)")
    demo.set_defaults(run=cmd_demo)
    status = sub.add_parser(
        "status",
        parents=[common],
        help="the server, its store and the stream: usage, limits, leader, lag, problems",
    )
    status.set_defaults(run=cmd_status)
    sessions = sub.add_parser("sessions", parents=[common], help="list sessions in the log")
    sessions.set_defaults(run=cmd_sessions)
    history = sub.add_parser("history", parents=[common], help="list a session's events")
    history.add_argument("session_id")
    history.add_argument(
        "--from", dest="from_position", help="first event: revision N, or stream sequence seq:N"
    )
    history.add_argument(
        "--to", dest="to_position", help="last event: revision N, or stream sequence seq:N"
    )
    history.add_argument(
        "--type",
        dest="types",
        action="append",
        metavar="TYPE",
        help="only events of this type, e.g. CursorMoved (repeatable)",
    )
    history.add_argument("--agent", help="only events issued by or about this agent")
    history.add_argument("--since", help="only events at or after this ISO time (UTC if no offset)")
    history.add_argument("--until", help="only events at or before this ISO time")
    history.set_defaults(run=cmd_history)
    position_help = (
        "a revision N (the session's Nth event), a stream sequence seq:N, "
        "an event id (32 hex) or an ISO time (UTC if no offset)"
    )
    state = sub.add_parser("state", parents=[common], help="a session's state, now or back then")
    state.add_argument("session_id")
    state.add_argument("--at", metavar="POSITION", help=f"{position_help} (default: now)")
    state.set_defaults(run=cmd_state)
    differ = sub.add_parser("diff", parents=[common], help="what changed between two positions")
    differ.add_argument("session_id")
    differ.add_argument("a", metavar="A", help=position_help)
    differ.add_argument("b", metavar="B", help=position_help)
    differ.add_argument(
        "--against",
        metavar="OTHER_SESSION",
        help="B is a position of OTHER_SESSION (e.g. a fork against its origin); "
        "the session ids and agents' attach sequences do not count as differences",
    )
    differ.set_defaults(run=cmd_diff)
    explain = sub.add_parser(
        "why", parents=[common], help="the command and request chain behind an event"
    )
    explain.add_argument("session_id")
    explain.add_argument("event", metavar="EVENT", help=position_help)
    explain.add_argument(
        "--across",
        action="store_true",
        help="also list the events of other sessions sharing the correlation id, from the "
        "correlation index (a key-value bucket next to the stream, caught up first)",
    )
    explain.add_argument(
        "--no-index",
        action="store_true",
        help="like --across, but read every other session instead of the index (writes nothing)",
    )
    explain.set_defaults(run=cmd_why)
    forking = sub.add_parser(
        "fork", parents=[common], help="a new session with another's history up to a position"
    )
    forking.add_argument("session_id")
    forking.add_argument("--at", metavar="POSITION", help=f"{position_help} (default: now)")
    forking.add_argument("--as", dest="new_id", metavar="NEW_ID", required=True)
    forking.set_defaults(run=cmd_fork)
    explore = sub.add_parser(
        "explore", parents=[common], help="step through a session's history in the terminal"
    )
    explore.add_argument("session_id")
    explore.add_argument("--at", metavar="POSITION", help=f"open on this event ({position_help})")
    explore.set_defaults(run=cmd_explore)
    audit = sub.add_parser("audit", parents=[common], help="who did or tried what, and why")
    audit.add_argument("session_id")
    audit.add_argument("--agent", help="only this agent's decisions")
    audit.add_argument("--action", help="action pattern, e.g. 'cursor.*'")
    audit.add_argument("--resource", help="resource pattern, e.g. 'axis.ocean.*'")
    audit.add_argument("--outcome", choices=["allowed", "denied"])
    audit.add_argument("--since", help="ISO time (UTC if no offset)")
    audit.add_argument("--until", help="ISO time (UTC if no offset)")
    audit.add_argument(
        "--group-by", choices=GROUP_BY, help="count the decisions per agent, action, ... instead"
    )
    audit.add_argument(
        "--rebuild",
        action="store_true",
        help="discard the session's audit read model and build it again from the log",
    )
    audit.set_defaults(run=cmd_audit)
    serve = sub.add_parser("serve", parents=[common], help="serve sessions to bots over NATS")
    serve.add_argument(
        "--idle-timeout",
        type=_duration(),
        default=300.0,
        help="stop session actors idle this long (s)",
    )
    serve.add_argument("--command-prefix", default=DEFAULT_COMMAND_PREFIX)
    serve.add_argument(
        "--per-principal",
        type=_whole(1),
        default=16,
        help="requests of one principal handled at once (the rest wait their turn)",
    )
    serve.add_argument(
        "--first-window",
        type=_whole(1),
        default=2,
        help="requests of a principal handled at once until some were served (then one more "
        "per request served, up to --per-principal)",
    )
    serve.add_argument(
        "--queued-per-principal",
        type=_count,
        default=256,
        help="requests of one principal waiting at most (more: too_many_requests)",
    )
    serve.add_argument(
        "--lanes",
        type=_whole(1, 1024),
        default=DEFAULT_LANES,
        help="ingress lanes (connections bots' requests arrive on); as nats-config --lanes",
    )
    serve.add_argument(
        "--partitions",
        type=_whole(0, 4096),
        default=DEFAULT_PARTITIONS,
        help="partitions sessions hash into, each owned by one serve process of the stream "
        f"at a time (default {DEFAULT_PARTITIONS}; 0: any process serves any session)",
    )
    serve.add_argument(
        "--lease-ttl",
        type=_duration(0.1),
        default=DEFAULT_LEASE_TTL,
        metavar="SECONDS",
        help="a dead process's partitions are taken over this long after its last renewal "
        f"(default {DEFAULT_LEASE_TTL})",
    )
    serve.add_argument(
        "--compositor",
        action="append",
        default=[],
        metavar="SPEC",
        help="provide a compositor: 'synthetic', 'recorded' or 'module:attribute' (repeatable)",
    )
    serve.add_argument(
        "--compositor-timeout",
        type=_duration(zero="no limit"),
        default=None,
        metavar="SECONDS",
        help="a compositor answering later answers compositor_failed, recording nothing "
        "(default 5; 0: no limit)",
    )
    serve.add_argument(
        "--metrics-port",
        type=_whole(0, 65535),
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://ADDRESS:PORT/metrics (0: any free port; "
        "default: none)",
    )
    serve.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address the metrics listen on (default: 127.0.0.1; 0.0.0.0: every interface)",
    )
    serve.add_argument(
        "--gc-young",
        type=_count,
        default=SERVE_YOUNG_THRESHOLD,
        metavar="N",
        help="collect Python's young generation every N net allocations (default "
        f"{SERVE_YOUNG_THRESHOLD}; Python's own is 700; 0: keep Python's); what startup "
        "allocated is frozen either way",
    )
    serve.add_argument(
        "--log-level",
        default="warning",
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
        help="log messages of this level and above, to stderr (default: warning)",
    )
    serve.set_defaults(run=cmd_serve)
    from plantangenet.wire import access as nats_access

    access = sub.add_parser(
        "nats-config",
        help="write nats-server accounts: one per bot, which reaches only its own sessions",
    )
    access.add_argument("--service-user", default="plantangenet")
    access.add_argument(
        "--service-password",
        default=os.environ.get("PLANTANGENET_SERVICE_PASSWORD"),
        required=os.environ.get("PLANTANGENET_SERVICE_PASSWORD") is None,
        help="(default: $PLANTANGENET_SERVICE_PASSWORD)",
    )
    access.add_argument(
        "--service-account", default=nats_access.DEFAULT_ACCOUNT, help="the service's account"
    )
    access.add_argument(
        "--bot",
        action="append",
        default=[],
        metavar="USER:PASSWORD:SESSIONS",
        help="a bot and the comma-separated sessions it may command and follow (repeatable); "
        "its account is bot-USER",
    )
    access.add_argument("--stream", default=DEFAULT_STREAM)
    access.add_argument("--subject-prefix", default=DEFAULT_SUBJECT_PREFIX)
    access.add_argument("--command-prefix", default=DEFAULT_COMMAND_PREFIX)
    access.add_argument(
        "--lanes",
        type=_whole(1, 1024),
        default=DEFAULT_LANES,
        help="ingress lanes of the service (as serve --lanes): bot i arrives on lane i mod N",
    )
    access.add_argument(
        "--live-prefix", default=DEFAULT_LIVE_PREFIX, help="where the stream republishes events"
    )
    access.add_argument(
        "--bot-max-consumers",
        type=int,
        metavar="N",
        help="JetStream consumers per stream in a bot's account "
        f"(default: {nats_access.DEFAULT_BOT_MAX_CONSUMERS})",
    )
    access.add_argument(
        "--bot-max-streams",
        type=int,
        metavar="N",
        help="JetStream streams in a bot's account "
        f"(default: {nats_access.DEFAULT_BOT_MAX_STREAMS})",
    )
    access.add_argument(
        "--bot-max-storage",
        metavar="SIZE",
        help="file storage of a bot's account: bytes, or e.g. 256M, 1G (default: 256M)",
    )
    access.add_argument(
        "--bot-max-memory",
        metavar="SIZE",
        help="memory storage of a bot's account: bytes, or e.g. 32M (default: 32M)",
    )
    access.add_argument(
        "--system-account",
        action="store_true",
        help="add a SYS account with user SERVICE_USER-sys (for monitoring tools)",
    )
    access.add_argument("--out", help="write to this file (mode 0600) instead of stdout")
    access.set_defaults(run=cmd_nats_config)
    cursors = sub.add_parser(
        "cursors", parents=[common], help="a session's cursors, or those covering an axis"
    )
    cursors.add_argument("session_id")
    cursors.add_argument("--axis", help="only cursors watching this axis (or a parent axis)")
    cursors.add_argument("--time", type=_finite, help="... at this time (needs --axis)")
    cursors.set_defaults(run=cmd_cursors)
    ledger = sub.add_parser(
        "ledger", parents=[common], help="a session's dust balances and movements"
    )
    ledger.add_argument("session_id")
    ledger.add_argument("--account", help="only this account's movements")
    ledger.set_defaults(run=cmd_ledger)
    check = sub.add_parser("verify", parents=[common], help="check a session's hash chain")
    check.add_argument("session_id")
    check.set_defaults(run=cmd_verify)
    quarantine = sub.add_parser(
        "quarantine",
        parents=[common],
        help="skip a message that is not an event of the session (it stays in the log)",
    )
    quarantine.add_argument("session_id")
    quarantine.add_argument("sequence", type=int, help="its stream sequence (verify names it)")
    quarantine.add_argument("--reason", default="", help="recorded with the quarantine")
    quarantine.set_defaults(run=cmd_quarantine)
    from plantangenet.cli import replaying

    replaying.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args, out or sys.stdout)
    except PlantangenetError as exc:
        output.error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `plantangenet history X | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return status

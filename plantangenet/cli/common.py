"""What every command shares: opening the runtime, times, positions, JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from plantangenet.cli.output import progress_on_stderr
from plantangenet.errors import (
    PlantangenetError,
    UnknownSession,
)
from plantangenet.events.envelope import CheckedEvent, Envelope
from plantangenet.log.journal import (
    LIMIT_ENV,
    TIMEOUT_ENV,
    JournalConfig,
    stream_limits_from_env,
    timeouts_from_env,
)
from plantangenet.log.session_replay import fold_events
from plantangenet.projections.session import SessionState
from plantangenet.projections.views import plain
from plantangenet.runtime import Plantangenet
from plantangenet.timetravel.history import (
    Position,
    parse_position,
)


def state_summary(state: SessionState) -> dict[str, Any]:
    """The session projection as JSON-friendly data."""
    return plain(state)  # type: ignore[no-any-return]


def open_runtime(args: argparse.Namespace) -> Plantangenet:
    # The stream's limits: the options given, else the environment's, else the stream's own.
    limits = stream_limits_from_env()
    for name in LIMIT_ENV:
        given = getattr(args, name, None)
        if given is not None:
            limits[name] = given
    # The append timeouts: likewise, the options given, else the environment's.
    timeouts = timeouts_from_env()
    for name in TIMEOUT_ENV:
        given = getattr(args, name, None)
        if given is not None:
            timeouts[name] = given
    journal = JournalConfig(
        stream=args.stream,
        subject_prefix=args.subject_prefix,
        # Opening the journal gives the stream this live republish: the prefix its
        # bots follow (any other would leave them to see events late).
        live_prefix=args.live_prefix,
        max_bytes=limits.get("max_bytes"),
        max_msgs=limits.get("max_msgs"),
        replicas=limits.get("replicas"),
        monitor_url=getattr(args, "monitor_url", None),
    )
    return Plantangenet.open(
        nats_url=args.nats_url,
        store_dir=args.store_dir,
        journal=journal.with_timeouts(timeouts),
        **(
            {"compositor_timeout": args.compositor_timeout or None}
            if getattr(args, "compositor_timeout", None) is not None
            else {}
        ),
    )


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PlantangenetError(f"not an ISO time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def optional_position(text: str | None) -> Position | None:
    return None if text is None else parse_position(text)


def dump_json(data: Any, out: TextIO) -> None:
    json.dump(data, out)
    out.write("\n")


def fold_projection(
    args: argparse.Namespace,
    fold: Callable[[Envelope], None],
    checked: Callable[[CheckedEvent], None] | None = None,
) -> None:
    """Fold the session's whole history into ``fold`` (and ``checked``: see
    :func:`~plantangenet.log.session_replay.fold_events`); ``UnknownSession`` if it has none."""
    with open_runtime(args) as pg, progress_on_stderr() as progress:
        count = pg.run(
            fold_events(pg.journal, args.session_id, fold, checked=checked, progress=progress)
        )
    if count == 0:
        raise UnknownSession(f"no events for session {args.session_id!r}")

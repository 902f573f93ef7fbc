"""``status``, ``serve`` and ``nats-config``: the server side."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from typing import Any, TextIO

from prometheus_client import GCCollector

from plantangenet.cli.collector import settle_collector
from plantangenet.cli.common import (
    open_runtime,
)
from plantangenet.cli.status import format_status, gather_status
from plantangenet.data.compositors import load_compositor
from plantangenet.errors import (
    InvalidCommand,
    PlantangenetError,
)
from plantangenet.wire.access import BotAccess, server_config, write_config
from plantangenet.wire.service import SessionService


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    with open_runtime(args) as pg:
        store = pg.store
        status = pg.run(
            gather_status(
                pg.journal, url=pg.url, store_dir=store.store_dir if store is not None else None
            ),
            timeout=30,
        )
    if args.json:
        json.dump(status, out)
        out.write("\n")
    else:
        out.write(format_status(status))
    return 1 if status["problems"] else 0


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        with open_runtime(args) as pg:
            for spec in args.compositor:
                try:
                    pg.add_compositor(load_compositor(spec))
                except (ImportError, AttributeError, ValueError, TypeError) as exc:
                    raise PlantangenetError(f"--compositor {spec}: {exc}") from None
            service = SessionService(
                pg,
                idle_timeout=args.idle_timeout,
                command_prefix=args.command_prefix,
                lanes=args.lanes,
                per_principal=args.per_principal,
                first_window=args.first_window,
                queued_per_principal=args.queued_per_principal,
                partitions=args.partitions,
                lease_ttl=args.lease_ttl,
            )
            pg.run(service.start())
            out.write(f"plantangenet serve: listening on {pg.url} ({args.command_prefix}.*.*)\n")
            registration = service.registration
            out.write(
                f"plantangenet serve: registered as NATS service {registration.name} "
                f"{registration.version} (id {registration.id}; $SRV.PING/INFO/STATS)\n"
            )
            if args.metrics_port is not None:
                # The process's collections beside the service's counters (one per process).
                GCCollector(registry=service.metrics.registry)
                try:
                    port = service.metrics.serve(args.metrics_port, args.metrics_address)
                except OSError as exc:
                    pg.run(service.stop())
                    raise PlantangenetError(
                        f"--metrics-port {args.metrics_port}: cannot listen on "
                        f"{args.metrics_address}: {exc}"
                    ) from None
                out.write(
                    f"plantangenet serve: metrics on http://{args.metrics_address}:{port}/metrics\n"
                )
            collector = settle_collector(args.gc_young)
            out.write(f"plantangenet serve: garbage collector: {collector.describe()}\n")
            out.flush()
            try:
                while not stop.wait(0.2):
                    pass
                out.write("plantangenet serve: shutting down, finishing requests in flight\n")
                out.flush()
                pg.run(service.stop())
            finally:
                service.metrics.close()
            conflicts = int(service.metrics.conflicts._value.get())
            out.write(
                f"plantangenet serve: stopped after {service.handled} requests "
                f"({conflicts} conflicts, {service.forwarded} passed on to their owners)\n"
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def cmd_nats_config(args: argparse.Namespace, out: TextIO) -> int:
    from plantangenet.wire.access import parse_size

    bots = []
    for spec in args.bot:
        user, _, rest = spec.partition(":")
        password, _, sessions = rest.rpartition(":")
        if not user or not password or not sessions:
            raise InvalidCommand(f"--bot expects USER:PASSWORD:SESSION[,SESSION...], got {user}:…")
        bots.append(BotAccess(user, password, tuple(sessions.split(","))))
    options: dict[str, Any] = {
        "service_user": args.service_user,
        "service_password": args.service_password,
        "bots": bots,
        "account": args.service_account,
        "stream": args.stream,
        "event_prefix": args.subject_prefix,
        "command_prefix": args.command_prefix,
        "live_prefix": args.live_prefix,
        "lanes": args.lanes,
        "system_account": args.system_account,
    }
    if args.bot_max_consumers is not None:
        options["bot_max_consumers"] = args.bot_max_consumers
    if args.bot_max_streams is not None:
        options["bot_max_streams"] = args.bot_max_streams
    if args.bot_max_storage is not None:
        options["bot_max_storage"] = parse_size(args.bot_max_storage)
    if args.bot_max_memory is not None:
        options["bot_max_memory"] = parse_size(args.bot_max_memory)
    if args.out:
        path = write_config(args.out, **options)
        out.write(f"wrote {path} ({len(bots)} bots); start: nats-server -c {path} -sd STORE\n")
    else:
        out.write(server_config(**options))
    return 0

"""``plantangenet status``: the server, its store and the stream, on one screen.

What an operator asks first when appends fail or lag: which server, how full its
JetStream store is (and the disk under it, for an embedded store), the stream's
size against its limits, its replicas, leader and their lag, and whether the server
says its store cannot write (a full disk: see :func:`plantangenet.log.journal.store_problem`).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors

from plantangenet.log.journal import Journal, store_problem
from plantangenet.nats.embedded import LOW_SPACE_BYTES, store_space

__all__ = ["format_status", "gather_status"]

#: Share of a limit from which status calls it nearly reached.
NEARLY = 0.9


async def _monitor_json(monitor_url: str, path: str) -> dict[str, Any] | None:
    """GET ``path`` from the server's HTTP monitoring as JSON (``None``: no answer)."""

    def get() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(monitor_url.rstrip("/") + path, timeout=2) as answer:
                body = answer.read()
        except urllib.error.HTTPError as exc:
            body = exc.read(65536)
        except (OSError, ValueError):
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    return await asyncio.to_thread(get)


def _limit(value: int | None) -> int | None:
    """A JetStream limit, ``None`` for none (-1 or 0)."""
    return value if value is not None and value > 0 else None


async def gather_status(
    journal: Journal, *, url: str, store_dir: Path | None = None
) -> dict[str, Any]:
    """Everything ``plantangenet status`` shows, as plain data (its ``--json``)."""
    nc = journal.nc
    info: dict[str, Any] = dict(getattr(nc, "_server_info", None) or {})
    monitor = journal.monitor_url
    problems: list[str] = []
    server: dict[str, Any] = {
        "url": url,
        "name": info.get("server_name"),
        "version": info.get("version"),
        "monitor_url": monitor,
        "health": None,
    }
    jsz: dict[str, Any] | None = None
    if monitor is not None:
        health = await _monitor_json(monitor, "/healthz")
        if health is None:
            server["health"] = "no answer"
        else:
            server["health"] = health.get("error") or health.get("status")
        problem = await store_problem(monitor)
        if problem is not None:
            problems.append(
                f"the server cannot write its store: {problem}; free space, then restart "
                "nats-server"
            )
        elif health is not None and health.get("status") != "ok":
            problems.append(f"the server is unhealthy: {server['health']}")
        jsz = await _monitor_json(monitor, "/jsz")

    jetstream: dict[str, Any] = {}
    try:
        account = await journal.js.account_info()
        jetstream = {
            "storage_used": account.storage,
            "storage_limit": _limit(account.limits.max_storage),
            "streams": account.streams,
            "consumers": account.consumers,
        }
    except nats.errors.Error as exc:
        problems.append(f"no JetStream account info: {exc or type(exc).__name__}")
    if jsz is not None:
        config = jsz.get("config") or {}
        jetstream["server_storage_used"] = jsz.get("storage")
        jetstream["server_storage_limit"] = _limit(config.get("max_storage"))
        jetstream["store_dir"] = config.get("store_dir")
    for used_key, limit_key, what in (
        ("storage_used", "storage_limit", "the account's JetStream storage"),
        ("server_storage_used", "server_storage_limit", "the server's JetStream store"),
    ):
        used, limit = jetstream.get(used_key), jetstream.get(limit_key)
        if isinstance(used, int) and isinstance(limit, int) and used >= NEARLY * limit:
            problems.append(f"{what} is nearly full: {_size(used)} of {_size(limit)}")

    disk: dict[str, Any] | None = None
    if store_dir is not None and store_dir.is_dir():
        used, free = await asyncio.to_thread(store_space, store_dir)
        disk = {"store_dir": str(store_dir), "used": used, "free": free}
        if free < LOW_SPACE_BYTES:
            problems.append(
                f"the store's filesystem has {_size(free)} free: give it at least "
                f"{_size(LOW_SPACE_BYTES - free)} more"
            )

    stream: dict[str, Any] | None = None
    name = journal.config.stream
    try:
        si = await journal.js.stream_info(name)
    except nats.js.errors.NotFoundError:
        problems.append(f"stream {name} does not exist")
    except nats.errors.Error as exc:
        problems.append(f"no info on stream {name}: {exc or type(exc).__name__}")
    else:
        config, state = si.config, si.state
        stream = {
            "name": name,
            "messages": state.messages,
            "bytes": state.bytes,
            "first_seq": state.first_seq,
            "last_seq": state.last_seq,
            "consumers": state.consumer_count,
            "max_bytes": _limit(config.max_bytes),
            "max_msgs": _limit(config.max_msgs),
            "discard": str(getattr(config.discard, "value", config.discard)),
            "replicas": config.num_replicas or 1,
            "leader": None,
            "followers": [],
        }
        for used, limit, what in (
            (state.bytes, stream["max_bytes"], "bytes"),
            (state.messages, stream["max_msgs"], "messages"),
        ):
            if limit is not None and used >= NEARLY * limit:
                problems.append(f"stream {name} is nearly full: {used:,} of {limit:,} {what}")
        cluster = si.cluster
        if cluster is not None:
            stream["leader"] = cluster.leader
            for peer in cluster.replicas or []:
                follower = {
                    "name": peer.name,
                    "current": peer.current,
                    "offline": bool(peer.offline),
                    "lag": peer.lag or 0,
                    "active_s": peer.active,
                }
                stream["followers"].append(follower)
                if peer.offline or not peer.current:
                    state_of = "offline" if peer.offline else f"behind by {peer.lag or 0}"
                    problems.append(f"replica {peer.name} of stream {name} is {state_of}")
            if not cluster.leader:
                problems.append(f"stream {name} has no leader")
    return {
        "server": server,
        "jetstream": jetstream,
        "disk": disk,
        "stream": stream,
        "problems": problems,
    }


def _size(n: int | None) -> str:
    if n is None:
        return "no limit"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _count(n: int | None) -> str:
    return "no limit" if n is None else f"{n:,}"


def format_status(status: dict[str, Any]) -> str:
    """The one screen ``plantangenet status`` prints."""
    server, js = status["server"], status["jetstream"]
    lines = [
        f"server     {server['url']}  {server['name'] or '?'}  "
        f"nats-server {server['version'] or '?'}",
        f"health     {server['health'] or 'not known (no monitoring URL)'}"
        + (f"  ({server['monitor_url']})" if server["monitor_url"] else ""),
    ]
    if js:
        line = f"jetstream  account {_size(js.get('storage_used'))} of "
        line += f"{_size(js.get('storage_limit'))}"
        if js.get("server_storage_limit") is not None or js.get("server_storage_used") is not None:
            line += f"; server store {_size(js.get('server_storage_used'))} of "
            line += f"{_size(js.get('server_storage_limit'))}"
        line += f"; {js.get('streams', '?')} streams, {js.get('consumers', '?')} consumers"
        lines.append(line)
        if js.get("store_dir"):
            lines.append(f"store      {js['store_dir']}")
    disk = status["disk"]
    if disk is not None:
        lines.append(
            f"disk       {disk['store_dir']}: store takes {_size(disk['used'])}, "
            f"{_size(disk['free'])} free"
        )
    stream = status["stream"]
    if stream is not None:
        lines.append(
            f"stream     {stream['name']}: {stream['messages']:,} events "
            f"(sequences {stream['first_seq']}..{stream['last_seq']}), {_size(stream['bytes'])}; "
            f"max_bytes {_size(stream['max_bytes'])}, max_msgs {_count(stream['max_msgs'])}, "
            f"discard {stream['discard']}"
        )
        lines.append(
            f"replicas   {stream['replicas']}; leader {stream['leader'] or '?'}; "
            f"{stream['consumers']} consumers"
        )
        for peer in stream["followers"]:
            state = "offline" if peer["offline"] else "current" if peer["current"] else "behind"
            lines.append(f"  follower {peer['name']}: {state}, lag {peer['lag']}")
    problems = status["problems"]
    if problems:
        lines.append("problems:")
        lines.extend(f"  - {p}" for p in problems)
    else:
        lines.append("no problems found")
    return "\n".join(lines) + "\n"

"""Operating the service: NATS services framework ($SRV.*), Prometheus metrics, logging."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats
from prometheus_client.parser import text_string_to_metric_families

from plantangenet import EmbeddedNats, JournalConfig, Plantangenet
from plantangenet.errors import PlantangenetError
from plantangenet.events import AgentAttached, Envelope, SessionStarted, new_id, utc_now
from plantangenet.wire.access import BotAccess, server_config
from plantangenet.wire.client import BotClient
from plantangenet.wire.service import SERVICE_NAME, SessionService
from tests.conftest import AsyncJournal, with_client

ROOT = Path(__file__).resolve().parent.parent


async def srv(url: str, subject: str, timeout: float = 5.0, **connect: Any) -> dict[str, Any]:
    nc = await nats.connect(url, **connect)
    try:
        reply = await nc.request(subject, b"", timeout=timeout)
        answer: dict[str, Any] = json.loads(reply.data)
        return answer
    finally:
        await nc.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_srv_ping_info_and_stats_find_the_service_and_count_its_endpoints(
    nats_server: EmbeddedNats, journal_config: JournalConfig, service: SessionService
) -> None:
    registration = service.registration
    ping = asyncio.run(srv(nats_server.url, f"$SRV.PING.{SERVICE_NAME}"))
    assert ping["type"] == "io.nats.micro.v1.ping_response"
    assert (ping["name"], ping["id"]) == (SERVICE_NAME, registration.id)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", ping["version"])

    async def body(bot: BotClient) -> None:
        await bot.open("ops", {})
        await bot.open("ops", {})  # its start is refused (started already): an error reply

    with_client(nats_server.url, journal_config, body)

    subject = f"$SRV.INFO.{SERVICE_NAME}.{registration.id}"
    info = asyncio.run(srv(nats_server.url, subject))
    assert info["type"] == "io.nats.micro.v1.info_response"
    endpoints = {e["name"]: e for e in info["endpoints"]}
    assert endpoints["commands"]["subject"] == "plantangenet.cmd.*.*"
    assert endpoints["lane-0"]["subject"] == "plantangenet.cmd.0.*.*.*"
    assert len(endpoints) == 1 + service.lanes
    assert {e["queue_group"] for e in endpoints.values()} == {service.queue}

    stats = asyncio.run(srv(nats_server.url, f"$SRV.STATS.{SERVICE_NAME}.{registration.id}"))
    assert stats["type"] == "io.nats.micro.v1.stats_response"
    commands = next(e for e in stats["endpoints"] if e["name"] == "commands")
    assert commands["num_requests"] == service.handled == 4  # start, state, start, state
    assert commands["num_errors"] == service.failed == 1
    assert commands["last_error"].startswith("session_already_started")
    assert commands["processing_time"] > 0 and commands["average_processing_time"] > 0
    assert "started" in stats and stats["id"] == registration.id
    # nats.micro's own client-side parsers read all three answers.
    assert ServicePing.from_dict(ping).id == registration.id
    assert len(ServiceInfo.from_dict(info).endpoints) == 1 + service.lanes
    assert ServiceStats.from_dict(stats).endpoints[0].num_requests == 4


def test_the_journal_reports_append_latency_and_the_consumers_it_holds(
    journal: AsyncJournal,
) -> None:
    j = journal.journal
    seconds: list[float] = []
    j.append_observer = seconds.append

    def event(payload: object, command_id: str) -> Envelope:
        return Envelope(payload, "s1", new_id(), command_id, command_id, utc_now())  # type: ignore[arg-type]

    journal.run(j.append("s1", [event(SessionStarted("s1", {}), "c0")], expected_sequence=0))
    with pytest.raises(PlantangenetError):  # a conflict is timed too
        journal.run(
            j.append("s1", [event(AgentAttached("a", "bot", ""), "c1")], expected_sequence=0)
        )
    assert len(seconds) == 2 and all(0 < s < 10 for s in seconds)

    async def scenario() -> tuple[int, int]:
        tail = j.tail("s1", from_sequence=1)
        await anext(tail)
        during = j.consumers_in_use
        await tail.aclose()
        return during, j.consumers_in_use

    assert j.consumers_in_use == 0
    assert journal.run(scenario()) == (1, 0)


def test_stats_count_errors_and_the_metrics_endpoint_serves_the_counters(
    nats_server: EmbeddedNats, journal_config: JournalConfig, service: SessionService
) -> None:
    async def body(bot: BotClient) -> None:
        await bot.open("metered", {})
        await bot.attach("metered", "a1")
        with pytest.raises(PlantangenetError) as refused:
            await bot.attach("metered", "a1")  # attached already: refused
        assert refused.value.code

    with_client(nats_server.url, journal_config, body)
    port = service.metrics.serve(0)
    try:
        samples = scrape(port)
    finally:
        service.metrics.close()

    def value(metric: str, **labels: str) -> float:
        return samples.get((metric, tuple(sorted(labels.items()))), 0.0)

    assert value("plantangenet_requests_total", name="attach") == 2
    assert value("plantangenet_commands_total", command="AttachAgent") == 2
    refusals = {k[1]: v for k, v in samples.items() if k[0] == "plantangenet_refusals_total"}
    assert sum(refusals.values()) == service.failed >= 1
    assert value("plantangenet_append_seconds_count") >= 2  # start and the first attach
    assert value("plantangenet_append_seconds_bucket", le="+Inf") >= 2
    assert value("plantangenet_sessions_owned") == 1
    assert value("plantangenet_sessions_open") >= 1
    assert ("plantangenet_consumers_in_use", ()) in samples
    assert ("plantangenet_conflicts_total", ()) in samples
    assert value("plantangenet_requests_in_flight") == 0

    stats = service.registration.stats()
    commands = next(e for e in stats["endpoints"] if e["name"] == "commands")
    assert commands["num_errors"] == service.failed >= 1
    assert commands["last_error"]


def test_bots_of_a_locked_down_deployment_cannot_reach_srv(tmp_path: Path) -> None:
    bots = [BotAccess("alice", "alice-pw", ("A",)), BotAccess("mallory", "mallory-pw", ("M",))]
    conf = server_config(service_user="service", service_password="svc-pw", bots=bots)
    # mallory's user may publish and subscribe to anything in its own account: the
    # account, not the user's permissions, is what keeps $SRV out of reach.
    head, sep, tail = conf.partition('user: "mallory"')
    for direction in ("publish", "subscribe"):
        tail = re.sub(
            rf"{direction}: \{{allow: \[[^\]]*\]\}}",
            f'{direction}: {{allow: [">"]}}',
            tail,
            count=1,
        )
    path = tmp_path / "nats.conf"
    path.write_text(head + sep + tail)
    server = EmbeddedNats(tmp_path / "store", extra_args=["-c", str(path)]).start()
    base = f"{server.host}:{server.port}"

    def url_of(bot: str) -> str:
        return f"nats://{bot}:{bot}-pw@{base}"

    try:
        pg = Plantangenet.open(nats_url=f"nats://service:svc-pw@{base}", journal=JournalConfig())
        try:
            svc = SessionService(pg, lanes=2)
            pg.run(svc.start())
            try:
                subject = f"$SRV.PING.{SERVICE_NAME}"
                operator = asyncio.run(srv(f"nats://service:svc-pw@{base}", subject))
                assert operator["id"] == svc.registration.id
                for verb in ("PING", "INFO", "STATS"):
                    # alice may not publish there (the server refuses, nobody answers);
                    # mallory may, but in its own account, where no service listens.
                    with pytest.raises(nats.errors.TimeoutError):
                        asyncio.run(srv(url_of("alice"), f"$SRV.{verb}", 1.0))
                    with pytest.raises(nats.errors.NoRespondersError):
                        asyncio.run(srv(url_of("mallory"), f"$SRV.{verb}", 1.0))
            finally:
                pg.run(svc.stop(timeout=10))
        finally:
            pg.close()
    finally:
        server.stop()


def test_serve_with_metrics_port_and_log_level(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plantangenet",
            "serve",
            "--nats-url",
            nats_server.url,
            "--stream",
            journal_config.stream,
            "--subject-prefix",
            journal_config.subject_prefix,
            "--lanes",
            "1",
            "--metrics-port",
            "0",
            "--log-level",
            "INFO",
            "--gc-young",
            "5000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        lines = [process.stdout.readline() for _ in range(4)]
        assert "listening" in lines[0], lines
        assert "registered as NATS service plantangenet" in lines[1], lines
        found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", lines[2])
        assert found, lines
        collector = re.search(
            r"garbage collector: young generation collected every 5,000 "
            r"allocations .*; ([\d,]+) startup objects frozen",
            lines[3],
        )
        assert collector and int(collector.group(1).replace(",", "")) > 10_000, lines
        with_client(nats_server.url, journal_config, lambda bot: bot.open("served", {}))
        samples = scrape(int(found.group(1)))
        assert samples[("plantangenet_requests_total", (("name", "start"),))] >= 1
        assert samples[("python_gc_collections_total", (("generation", "0"),))] >= 0
        process.terminate()
        _, err = process.communicate(timeout=30)
        assert "INFO plantangenet.wire.service: serving" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

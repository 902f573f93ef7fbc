"""The append benchmark still runs (tiny sizes; nothing about speed is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, timeout: float = 180) -> str:
    """Run ``bench/<script>`` with ``args``; its output (the run must succeed)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_bench_append_runs_both_library_paths_and_checks_what_they_stored() -> None:
    out = run_bench(
        "bench_append.py",
        *("--commands", "300", "--repeats", "1", "--window", "100", "--batch", "30"),
        "--no-raw-batched",
    )
    assert "submit_many/raw" in out
    assert "library (submit) / raw publish_async" in out
    # The CPU split by thread (Linux /proc): the actor threads are measured while alive.
    assert "submit: " in out and "actors " in out, out


def test_bench_batch_runs_all_sides_and_checks_what_was_stored() -> None:
    out = run_bench("bench_batch.py", "--commands", "60", "--batch", "25", "--repeats", "1")
    assert "batched / single:" in out and "batched / raw publish_async:" in out


def test_bench_flood_runs_and_reports_what_the_session_recorded() -> None:
    out = run_bench("bench_flood.py", "--flood", "300", "--quiet", "30", "--repeats", "1")
    assert "p99 ratio" in out and "library" in out and "raw echo" in out
    assert "summaries" in out or "+ 0 summaries" in out


def test_bench_service_compares_a_locked_down_deployment() -> None:
    out = run_bench(
        "bench_service.py",
        *("--no-cluster", "--locked-down", "--commands", "40", "--bots", "1,2"),
        *("--repeats", "1", "--warmup", "1"),
        timeout=300,
    )
    assert "what authentication costs the service" in out
    assert "locked down: service handled" in out


def test_bench_scale_reports_threads_and_checks_what_the_agents_saw() -> None:
    out = run_bench("bench_scale.py", *("--agents", "10,200", "--moves", "100", "--idle", "0.3"))
    assert "threads peak" in out and "replay events/s" in out
    assert "once, in order: True" in out and "teardowns 0" in out


def test_bench_audit_builds_the_read_model_and_answers_from_it() -> None:
    out = run_bench("bench_audit.py", "--events", "300", "--repeats", "1", "--append", "10")
    assert "build / replay" in out and "repeated audit --group-by agent" in out
    assert "(owner)" in out and "after 10 appends" in out

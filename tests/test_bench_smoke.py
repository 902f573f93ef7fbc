"""The append benchmark still runs (tiny sizes; nothing about speed is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_append_runs_both_library_paths_and_checks_what_they_stored() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_append.py"),
            "--commands",
            "300",
            "--repeats",
            "1",
            "--window",
            "100",
            "--batch",
            "30",
            "--no-raw-batched",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submit_many/raw" in done.stdout
    assert "library (submit) / raw publish_async" in done.stdout
    # The CPU split by thread (Linux /proc): the actor threads are measured while alive.
    assert "submit: " in done.stdout and "actors " in done.stdout, done.stdout


def test_bench_batch_runs_all_sides_and_checks_what_was_stored() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_batch.py"),
            "--commands",
            "60",
            "--batch",
            "25",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "batched / single:" in done.stdout and "batched / raw publish_async:" in done.stdout

"""The README's example and commands, and the examples, actually run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from plantangenet import EmbeddedNats, JournalConfig

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_python(code: str, server: EmbeddedNats, config: JournalConfig) -> str:
    env = dict(
        os.environ,
        NATS_URL=server.url,
        PLANTANGENET_STREAM=config.stream,
        PLANTANGENET_SUBJECT_PREFIX=config.subject_prefix,
        PLANTANGENET_LIVE_PREFIX=config.live_prefix,
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_python_example_runs(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has a Python example"
    out = run_python(blocks[0], nats_server, journal_config)
    assert "probe is up (attached)" in out
    assert "refused: agent 'nobody' is not attached" in out
    assert "active" in out.splitlines()[-1] or "active" in out
    # Running it again continues the same session from the log.
    again = run_python(blocks[0], nats_server, journal_config)
    assert "probe is up (rehydrated)" in again


def test_readme_policy_example_runs(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 2
    out = run_python(blocks[1], nats_server, journal_config)
    assert "refused:" in out and "default deny" in out
    assert "('ocean.temp',)" in out


def test_every_readme_python_block_runs_twice_on_the_same_store(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    # A reader tries an example, then tries it again: the second run meets the first's
    # sessions in the log and must still run without an error.
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3
    for block in blocks:
        run_python(block, nats_server, journal_config)
        run_python(block, nats_server, journal_config)


def test_readme_dust_example_runs(nats_server: EmbeddedNats, journal_config: JournalConfig) -> None:
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3
    first = run_python(blocks[2], nats_server, journal_config)
    lines = first.splitlines()
    assert lines[0].startswith("[(0.0, ") and lines[0].count("(") == 4  # 4 buckets
    assert lines[1] == "balance: 1 reconciles: True"
    again = run_python(blocks[2], nats_server, journal_config)
    assert "[(0.0, " in again and "balance: 0" in again
    third = run_python(blocks[2], nats_server, journal_config)
    assert "refused: stu holds 0 dust" in third and "balance: 0 reconciles: True" in third


def test_quickstart_example_runs(nats_server: EmbeddedNats, journal_config: JournalConfig) -> None:
    code = (ROOT / "examples" / "quickstart.py").read_text()
    out = run_python(code, nats_server, journal_config)
    assert "rehydrated == live: True" in out
    assert "alice: goodbye (done for today)" in out


def test_ci_runs_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"<!-- ci:(\w+) -->\n```sh\n(.*?)\n```", readme)
    assert [name for name, _ in commands] == ["demo", "test"]
    demo, test = (cmd for _, cmd in commands)
    assert "plantangenet demo" in demo and "pip install" in demo
    assert "[test]" in test and "pytest" in test
    assert "readme_command demo" in ci and "readme_command test" in ci
    # The README's commands are the first thing after its title and introduction.
    assert readme.index("## Two commands") < readme.index("## What you get")

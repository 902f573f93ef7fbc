"""Short runs of the coverage-guided (atheris) fuzz harnesses in ``fuzz/``.

Each harness runs in a subprocess for a bounded number of inputs or seconds, whichever
comes first, starting from its seed corpus in ``fuzz/corpus/``: the codec on arbitrary
bytes (only ``DecodeError``; decoded envelopes round-trip and fold), the wire protocol's
request parsing and ``decide`` for every command class (only typed errors; accepted
events round-trip, and the live state equals the replayed one). See ``fuzz/README.md``
for longer runs.

atheris ships wheels for Linux x86_64 only (``pyproject.toml`` installs it there): where
it should be installed and is not, the tests fail; elsewhere they skip.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from plantangenet.events import CODEC
from plantangenet.events.codec import ENVELOPE_FORMAT
from plantangenet.wire.protocol import COMMANDS, decode_request

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
#: Where pyproject.toml's environment marker installs atheris (wheels exist there).
ATHERIS_EXPECTED = (
    platform.system() == "Linux"
    and platform.machine() == "x86_64"
    and platform.libc_ver()[0] == "glibc"  # no musllinux wheels
    and sys.version_info < (3, 15)
)
RUNS = 30_000
SECONDS = 15


def require_atheris() -> None:
    if importlib.util.find_spec("atheris") is not None:
        return
    if ATHERIS_EXPECTED:
        pytest.fail(
            "atheris is not installed, though this platform has wheels for it: "
            "pip install -e '.[test]' (or pip install atheris)"
        )
    pytest.skip(f"atheris has no wheel for {platform.system()} {platform.machine()} {sys.version}")


def fuzz(harness: str, corpus: str, tmp_path: Path, runs: int = RUNS) -> str:
    """Run ``harness`` from its seed corpus; its libFuzzer output once it finished cleanly."""
    require_atheris()
    work = tmp_path / "corpus"  # new inputs go to the first directory, not the seeds
    work.mkdir()
    command = [
        sys.executable,
        str(FUZZ / harness),
        f"-runs={runs}",
        f"-max_total_time={SECONDS}",
        "-timeout=20",
        "-seed=1",
        f"-artifact_prefix={tmp_path}/",
        str(work),
        str(FUZZ / "corpus" / corpus),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 60)
    output = done.stdout + done.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert done.returncode == 0 and not crashes, (
        f"{harness} failed (exit {done.returncode}, artifacts {crashes}):\n{output[-6000:]}"
    )
    return output


def check_output(output: str, seeds: int) -> None:
    finished = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert finished and int(finished.group(1)) > 0, output[-3000:]
    assert f"{seeds} files found" in output, output[-3000:]
    # Instrumentation works: the seeds alone reach far more than an uninstrumented run.
    inited = re.search(r"INITED cov: (\d+)", output)
    assert inited and int(inited.group(1)) >= 100, output[-3000:]


def test_codec_harness_runs_clean(tmp_path: Path) -> None:
    output = fuzz("fuzz_codec.py", "codec", tmp_path)
    check_output(output, len(list((FUZZ / "corpus" / "codec").iterdir())))


def test_protocol_harness_runs_clean(tmp_path: Path) -> None:
    output = fuzz("fuzz_protocol.py", "protocol", tmp_path)
    check_output(output, len(list((FUZZ / "corpus" / "protocol").iterdir())))


# -- the seed corpora stay valid (no atheris needed) ----------------------------------------


def test_codec_seeds_are_valid_envelopes_of_every_event_type_in_each_format() -> None:
    seeds = sorted((FUZZ / "corpus" / "codec").iterdir())
    by_format: dict[str, set[str]] = {}
    for path in seeds:  # <type>.f<format>.msgpack
        type_name, _, form = path.name.removesuffix(".msgpack").rpartition(".f")
        envelope = CODEC.decode(path.read_bytes())  # else: rerun fuzz/make_corpus.py
        assert envelope.type_name == type_name
        assert msgpack.unpackb(path.read_bytes())["f"] == int(form)
        by_format.setdefault(form, set()).add(type_name)
    assert set(by_format) == {"1", str(ENVELOPE_FORMAT)}  # the oldest and the current
    assert by_format["1"] == by_format[str(ENVELOPE_FORMAT)] and len(by_format["1"]) >= 20
    typed = [p for p in seeds if _typed(p.read_bytes())]
    assert len(typed) >= 20 and all(p.name.endswith(f".f{ENVELOPE_FORMAT}.msgpack") for p in typed)


def _typed(payload: bytes) -> bool:
    """Whether the codec's typed path takes ``payload`` (else it raises or steps aside)."""
    try:
        return CODEC._decode_typed(payload, None) is not None
    except Exception:
        return False


def test_protocol_seeds_are_valid_requests() -> None:
    seeds = sorted((FUZZ / "corpus" / "protocol").glob("raw-*"))
    assert len(seeds) >= 12
    for path in seeds:
        name, _, payload = path.read_bytes()[1:].partition(b"\0")
        assert path.stem == f"raw-{name.decode()}"
        command = decode_request(name.decode(), payload)  # else: rerun fuzz/make_corpus.py
        assert type(command) is COMMANDS[name.decode()]

"""The audit read model (``plantangenet audit``) equals a full fold of the log.

Whatever happens between two answers: events appended, the runtime restarted,
a catch-up that crashes half-way, the checkpoint lost or damaged, a chunk
damaged. Real nats-server (the fixtures of conftest), never skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet import (
    AddCursor,
    ChangePolicy,
    CommandRejected,
    Journal,
    JournalConfig,
    Plantangenet,
    Statement,
    SyntheticCompositor,
)
from plantangenet.cli import main
from plantangenet.nats.embedded import EmbeddedNats
from plantangenet.projections.audit import Audit, AuditEntry
from plantangenet.projections.audit_model import (
    AUDIT_BUCKET,
    GROUP_BY,
    AuditFilter,
    AuditModel,
    FoldedAudit,
    audit_model,
    query_audit,
    reset_audit_model,
)
from plantangenet.projections.user import _bucket
from plantangenet.projections.views import plain
from tests.conftest import log_options
from tests.test_replay_property import COMMANDS

_ids = itertools.count()
#: Small chunks and frequent checkpoints, so that a few dozen events cross many boundaries.
SMALL: dict[str, Any] = {"chunk_entries": 3, "checkpoint_every": 2}

STEPS = st.one_of(
    st.tuples(st.just("append"), st.lists(COMMANDS, min_size=1, max_size=8)),
    st.tuples(st.just("catch-up"), st.none()),
    st.tuples(st.just("crash"), st.integers(1, 6)),  # a catch-up stopped after n events
    st.tuples(st.just("restart"), st.none()),
    st.tuples(st.just("lose-checkpoint"), st.none()),
    st.tuples(st.just("damage"), st.sampled_from(["head", "last-chunk", "first-chunk"])),
)


def full_fold(pg: Plantangenet, session_id: str) -> list[AuditEntry]:
    return Audit.of(pg.history(session_id)).entries


def model_entries(pg: Plantangenet, session_id: str, **options: Any) -> list[AuditEntry]:
    async def answer(model: AuditModel) -> list[AuditEntry]:
        return await model.all_entries()

    entries: list[AuditEntry] = pg.run(query_audit(pg.journal, session_id, answer, **options))
    return entries


def damage(pg: Plantangenet, session_id: str, what: str) -> None:
    async def go() -> None:
        kv = await _bucket(pg.journal, AUDIT_BUCKET)
        prefix = f"audit.{pg.journal_config.stream}.{session_id}"
        if what == "head":
            await kv.put(f"{prefix}.head", b"\x93not a checkpoint")
            return
        keys = [k for k in await kv.keys() if k.startswith(prefix + ".c")]
        if not keys:
            return
        numbers = sorted(int(k.rsplit(".c", 1)[1]) for k in keys)
        n = numbers[-1] if what == "last-chunk" else numbers[0]
        await kv.put(f"{prefix}.c{n}", b"\x81\xa1f\x01")

    with contextlib.suppress(Exception):  # no bucket yet, no keys yet: nothing to damage
        pg.run(go())


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(STEPS, min_size=1, max_size=12))
def test_read_model_equals_a_full_fold_after_appends_restarts_and_lost_checkpoints(
    make_runtime: Callable[[], Plantangenet], steps: list[tuple[str, Any]]
) -> None:
    session_id = f"am-{next(_ids)}"
    pg = make_runtime()
    pg.add_compositor(SyntheticCompositor())
    session = pg.session(session_id)
    session.start()
    for kind, arg in steps:
        if kind == "append":
            for command in arg:
                with contextlib.suppress(CommandRejected):
                    session.execute(command)
        elif kind == "catch-up":
            assert model_entries(pg, session_id, **SMALL) == full_fold(pg, session_id)
        elif kind == "crash":
            pg.run(audit_model(pg.journal, session_id, stop_after=arg, **SMALL))
        elif kind == "restart":  # another process, which knows only the log and the KV
            pg.close()
            pg = make_runtime()
            pg.add_compositor(SyntheticCompositor())
            session = pg.session(session_id)
        elif kind == "lose-checkpoint":
            pg.run(reset_audit_model(pg.journal, session_id))
        else:
            damage(pg, session_id, arg)
    # Whatever came before, the answer is the fold of the log; asked again, unchanged.
    expected = full_fold(pg, session_id)
    assert model_entries(pg, session_id, **SMALL) == expected
    model = pg.run(audit_model(pg.journal, session_id, **SMALL))
    assert model.folded == 0 and model.entries == len(expected)
    assert model.position == pg.run(pg.journal.last_sequence(session_id))
    pg.close()


def busy_session(pg: Plantangenet, session_id: str) -> None:
    """A session with allowed and denied decisions of several agents."""
    session = pg.session(session_id)
    session.start()
    session.execute(
        ChangePolicy(
            add=(
                Statement("watch", "allow", ("cursor.*",), ("axis.*", "cursor.*"), ("watcher",)),
                Statement("no-air", "deny", ("cursor.*",), ("axis.air.*",)),
            )
        )
    )
    for agent in ("a", "b"):
        session.attach(agent)
    session.grant_role("a", "watcher")
    session.add_cursor("a", "c1", ["ocean.temp"], 0, 1)
    for i in range(5):
        session.move_cursor("a", "c1", ["ocean.temp", "ocean.salt"], i, i + 1)
    session.move_cursor("a", "c1", ["ocean.temp"], 2, 3, issued_by="a")
    for agent, axes in (("a", ["air.wind"]), ("b", ["ocean.temp"]), ("a", ["ocean.salt", "x"])):
        with contextlib.suppress(CommandRejected):
            session.execute(
                AddCursor(
                    agent_id=agent,
                    cursor_id=f"k{len(axes)}",
                    axes=tuple(axes),
                    start=0,
                    end=1,
                    issued_by=agent,
                )
            )
    pg.stop_session(session_id)


def test_group_by_counts_equal_a_counter_over_the_full_fold(runtime: Plantangenet) -> None:
    busy_session(runtime, "g")
    entries = full_fold(runtime, "g")
    assert {e.outcome for e in entries} == {"allowed", "denied"}
    model = runtime.run(audit_model(runtime.journal, "g", chunk_entries=4))
    attribute = {
        "agent": "agent_id",
        "action": "action",
        "resource": "resource",
        "statement": "statement_id",
        "outcome": "outcome",
    }
    for where in (
        AuditFilter(),
        AuditFilter(outcome="denied"),
        AuditFilter(agent="a", resource="axis.*"),
        AuditFilter(action="cursor.*", since=entries[len(entries) // 2].occurred_at),
    ):
        kept = Audit.of(runtime.history("g")).query(
            agent=where.agent,
            action=where.action,
            resource=where.resource,
            outcome=where.outcome,
            since=where.since,
            until=where.until,
        )
        assert runtime.run(model.all_entries(where)) == kept
        for group in GROUP_BY:
            expected = Counter(getattr(e, attribute[group]) for e in kept)
            assert runtime.run(model.counts(group, where)) == expected
            assert runtime.run(FoldedAudit(entries).counts(group, where)) == expected


def test_cli_audit_table_json_and_group_by(runtime: Plantangenet) -> None:
    busy_session(runtime, "cli")
    entries = full_fold(runtime, "cli")
    opts = log_options(runtime)

    def run(*args: str) -> str:
        import io

        out = io.StringIO()
        assert main(["audit", "cli", *opts, *args], out) == 0
        return out.getvalue()

    table = run().splitlines()
    assert table[0].split() == [
        "SEQ",
        "TIME",
        "(UTC)",
        "AGENT",
        "OUTCOME",
        "ACTION",
        "RESOURCE",
        "STATEMENT",
        "POLICY",
        "REASON",
    ]
    assert len(table) == 1 + len(entries)
    for line, entry in zip(table[1:], entries, strict=True):
        assert re.match(r"\s*\d+  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  ", line), line
        assert line.endswith(entry.reason)
        stamp = f"{entry.occurred_at:%H:%M:%S}.{entry.occurred_at.microsecond // 1000:03d}"
        assert stamp in line
    denied = [e for e in entries if e.outcome == "denied"]
    assert any(e.reason in "\n".join(table) for e in denied)

    every = [json.loads(line) for line in run("--json").splitlines()]
    assert every == [plain(e) for e in entries]
    records = [json.loads(line) for line in run("--json", "--outcome", "denied").splitlines()]
    assert [r["sequence"] for r in records] == [e.sequence for e in denied]
    assert all(r["outcome"] == "denied" and r["reason"] for r in records)

    counted = run("--group-by", "agent").splitlines()
    assert counted[0].split() == ["AGENT", "COUNT"]
    by_agent = Counter(e.agent_id or "(owner)" for e in entries)
    assert {line.split()[0]: int(line.split()[1]) for line in counted[1:-1]} == by_agent
    assert counted[-1].split() == ["total", str(len(entries))]

    records = [json.loads(line) for line in run("--group-by", "outcome", "--json").splitlines()]
    assert {r["outcome"]: r["count"] for r in records} == Counter(e.outcome for e in entries)
    # --rebuild answers the same.
    assert run("--rebuild").splitlines() == table


def test_unknown_session_makes_no_read_model(
    nats_server: EmbeddedNats, journal_config: JournalConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    opts = ["--nats-url", nats_server.url, "--stream", journal_config.stream]
    opts += ["--subject-prefix", journal_config.subject_prefix]
    assert main(["audit", "nope", *opts]) == 2
    assert "no events for session 'nope'" in capsys.readouterr().err


def test_a_catch_up_folds_only_what_was_appended_since(runtime: Plantangenet) -> None:
    busy_session(runtime, "inc")
    first = runtime.run(audit_model(runtime.journal, "inc"))
    assert first.rebuilt and first.saved and first.folded == first.position > 0
    session = runtime.session("inc")
    session.move_cursor("a", "c1", ["ocean.temp"], 7, 8)
    again = runtime.run(audit_model(runtime.journal, "inc"))
    assert (again.rebuilt, again.folded, again.entries) == (False, 1, first.entries + 1)
    assert runtime.run(again.all_entries()) == full_fold(runtime, "inc")


def test_a_checkpoint_lists_only_chunks_already_stored(
    runtime: Plantangenet, monkeypatch: Any
) -> None:
    """Closed chunks are stored while the fold goes on; a slow put still lands before
    any head that lists its chunk."""
    import asyncio

    from plantangenet.projections import audit_model as module

    busy_session(runtime, "slow")
    put, save_head = module._put, module._save_head
    stored: set[str] = set()
    heads: list[int] = []

    async def slow_put(kv: Any, key: str, value: bytes) -> None:
        await asyncio.sleep(0.02)
        await put(kv, key, value)
        stored.add(key)

    async def checked_head(*args: Any) -> int:
        metas = args[5]
        assert {
            f"audit.{runtime.journal_config.stream}.slow.c{i}" for i in range(len(metas))
        } <= stored
        heads.append(len(metas))
        revision: int = await save_head(*args)
        return revision

    monkeypatch.setattr(module, "_put", slow_put)
    monkeypatch.setattr(module, "_save_head", checked_head)
    model = runtime.run(audit_model(runtime.journal, "slow", chunk_entries=2, checkpoint_every=5))
    assert model.entries >= 6 and len(heads) >= 2  # (chunks of two entries, heads every 5 events)
    monkeypatch.undo()
    again = runtime.run(audit_model(runtime.journal, "slow", chunk_entries=2))
    assert again.folded == 0 and runtime.run(again.all_entries()) == full_fold(runtime, "slow")


def test_of_two_writers_one_checkpoint_wins_and_the_other_catches_up_from_it(
    runtime: Plantangenet, monkeypatch: Any
) -> None:
    from plantangenet.projections import audit_model as module

    busy_session(runtime, "two")
    save_head = module._save_head
    raced: list[AuditModel] = []
    racing: list[bool] = []

    async def other_writer_first(*args: Any) -> int:
        if not racing:  # another process (its own connection) catches up and saves first
            racing.append(True)
            nc = await runtime.open_connection("other-writer")
            try:
                other = Journal(nc, runtime.journal_config)
                raced.append(await audit_model(other, "two", chunk_entries=4))
            finally:
                await nc.close()
        revision: int = await save_head(*args)
        return revision

    monkeypatch.setattr(module, "_save_head", other_writer_first)
    model = runtime.run(audit_model(runtime.journal, "two", chunk_entries=4))
    expected = full_fold(runtime, "two")
    assert raced[0].saved and raced[0].entries == len(expected)
    # This writer lost its first save, caught up again from the winner's checkpoint.
    assert model.saved and not model.rebuilt and model.position == raced[0].position
    assert runtime.run(model.all_entries()) == expected
    monkeypatch.undo()
    again = runtime.run(audit_model(runtime.journal, "two", chunk_entries=4))
    assert again.folded == 0 and runtime.run(again.all_entries()) == expected


def test_a_checkpoint_of_a_replaced_stream_is_not_used(runtime: Plantangenet) -> None:
    busy_session(runtime, "rep")
    before = runtime.run(audit_model(runtime.journal, "rep"))
    assert before.saved and before.entries == len(full_fold(runtime, "rep"))
    # The stream is deleted and made again; the session gets a longer, other history.
    runtime.run(runtime.journal.js.delete_stream(runtime.journal_config.stream))
    runtime.run(runtime.journal.ensure_stream())
    session = runtime.session("rep")
    session.start()
    session.attach("z")
    session.add_cursor("z", "c", ["x"], 0, 1)
    for i in range(before.position):
        session.move_cursor("z", "c", ["x"], i, i + 1)
    runtime.stop_session("rep")
    assert runtime.run(runtime.journal.last_sequence("rep")) > before.position
    after = runtime.run(audit_model(runtime.journal, "rep"))
    assert after.rebuilt
    assert runtime.run(after.all_entries()) == full_fold(runtime, "rep")


def test_without_a_read_model_audit_folds_the_log_and_says_so(
    runtime: Plantangenet, monkeypatch: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    import plantangenet.cli.reading as cli
    from plantangenet.errors import JournalError

    busy_session(runtime, "fb")
    opts = log_options(runtime)

    def run(*args: str) -> str:
        out = io.StringIO()
        assert main(["audit", "fb", *opts, *args], out) == 0
        return out.getvalue()

    answers = [run(), run("--group-by", "resource"), run("--json", "--agent", "a")]

    async def no_kv(*args: Any, **kwargs: Any) -> None:
        raise JournalError("cannot create KV bucket 'plantangenet-audit': permissions violation")

    monkeypatch.setattr(cli, "query_audit", no_kv)
    capsys.readouterr()
    assert [run(), run("--group-by", "resource"), run("--json", "--agent", "a")] == answers
    assert "audit read model unavailable" in capsys.readouterr().err

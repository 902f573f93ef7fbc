"""The trust boundary on a real log: enforcement, AccessDenied, audit, hash chain."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Iterator

import msgpack
import nats.js.errors
import pytest

from plantangenet import (
    AccessRefused,
    EmbeddedNats,
    InvalidPolicy,
    JournalConfig,
    Plantangenet,
    SessionHandle,
)
from plantangenet.cli import main
from plantangenet.events import AccessDenied
from plantangenet.log.verify import verify
from plantangenet.projections.audit import Audit

CURSORS = {
    "id": "watchers",
    "effect": "allow",
    "roles": ["watcher"],
    "actions": ["cursor.*"],
    "resources": ["axis.ocean.*", "cursor.*"],
}
SECRETS = {
    "id": "no-secrets",
    "effect": "deny",
    "roles": ["watcher"],
    "actions": ["cursor.*"],
    "resources": ["axis.ocean.secret"],
}
ADMIN = {
    "id": "admins",
    "effect": "allow",
    "roles": ["admin"],
    "actions": ["metadata.change", "policy.change", "role.*"],
    "resources": ["*"],
}


@pytest.fixture
def trusted(runtime: Plantangenet) -> SessionHandle:
    session = runtime.session("s1")
    session.start({"owner": "tests"})
    session.bind_identity("ops", "Operations", {"tier": "gold"})
    session.change_policy(replace=[CURSORS, SECRETS, ADMIN])
    session.attach("bot")
    return session


def count(runtime: Plantangenet, session_id: str = "s1") -> int:
    return runtime.sessions().get(session_id, 0)


def test_agent_without_role_is_refused_and_only_access_denied_is_written(
    runtime: Plantangenet, trusted: SessionHandle
) -> None:
    attempts: list[tuple[str, Callable[[], object], str, str]] = [
        (
            "cursor",
            lambda: trusted.add_cursor("bot", "c1", ["ocean.temp"], 0, 1, issued_by="bot"),
            "cursor.add",
            "axis.ocean.temp",
        ),
        (
            "metadata",
            lambda: trusted.change_metadata({"k": "v"}, issued_by="bot"),
            "metadata.change",
            "metadata.k",
        ),
        (
            "policy",
            lambda: trusted.change_policy(add=[{**CURSORS, "id": "x"}], issued_by="bot"),
            "policy.change",
            "policy",
        ),
    ]
    for _, attempt, action, resource in attempts:
        before = runtime.history("s1")
        with pytest.raises(AccessRefused) as refused:
            attempt()
        after = runtime.history("s1")
        assert after[: len(before)] == before
        assert len(after) == len(before) + 1  # the AccessDenied, and nothing else
        denied = after[-1]
        assert isinstance(denied.event, AccessDenied)
        assert denied.sequence == refused.value.sequence
        assert (denied.event.agent_id, denied.event.action, denied.event.resource) == (
            "bot",
            action,
            resource,
        )
        assert denied.event.statement_id is None and denied.event.policy_version == 1
        assert "default deny" in denied.event.reason
    state = trusted.state
    assert state.cursors == {} and "k" not in state.metadata and state.policy.version == 1

    # Granting the role lets the very same commands through.
    trusted.grant_role("bot", "watcher")
    trusted.grant_role("bot", "admin")
    result = trusted.add_cursor("bot", "c1", ["ocean.temp"], 0, 1, issued_by="bot")
    auth = result.events[0].authorization
    assert auth is not None
    assert (auth.action, auth.resources, auth.statements, auth.policy_version) == (
        "cursor.add",
        ("axis.ocean.temp",),
        ("watchers",),
        1,
    )
    trusted.change_metadata({"k": "v"}, issued_by="bot")
    trusted.change_policy(add=[{**CURSORS, "id": "x"}], issued_by="bot")
    assert trusted.state.policy.version == 2


def test_explicit_deny_wins_and_names_its_statement(trusted: SessionHandle) -> None:
    trusted.grant_role("bot", "watcher")
    with pytest.raises(AccessRefused) as refused:
        trusted.add_cursor("bot", "c", ["ocean.temp", "ocean.secret"], 0, 1, issued_by="bot")
    event = refused.value.event
    assert (event.statement_id, event.resource) == ("no-secrets", "axis.ocean.secret")
    assert trusted.state.cursors == {}


def test_unattached_agent_is_refused_and_recorded(
    runtime: Plantangenet, trusted: SessionHandle
) -> None:
    with pytest.raises(AccessRefused, match="not attached"):
        trusted.change_metadata({"k": 1}, issued_by="stranger")
    assert runtime.history("s1")[-1].event.agent_id == "stranger"  # type: ignore[attr-defined]


def test_retried_refused_command_is_refused_again_and_stored_once(
    runtime: Plantangenet, trusted: SessionHandle
) -> None:
    from plantangenet import ChangeMetadata

    command = ChangeMetadata(changed={"k": 1}, issued_by="bot", command_id="same")
    before = count(runtime)
    for _ in range(2):
        with pytest.raises(AccessRefused):
            trusted.execute(command)
    assert count(runtime) == before + 1


def test_malformed_policy_documents_are_rejected_without_an_event(
    runtime: Plantangenet, trusted: SessionHandle
) -> None:
    before = count(runtime)
    for document, field in [
        ({**CURSORS, "effect": "perhaps"}, "effect"),
        ({**CURSORS, "actions": []}, "actions"),
        ({**CURSORS, "resources": ["axis..temp"]}, "resources"),
        ({**CURSORS, "roles": "watcher"}, "roles"),
    ]:
        with pytest.raises(InvalidPolicy, match=field):
            trusted.change_policy(replace=[document])
    with pytest.raises(InvalidPolicy, match="used twice"):
        trusted.change_policy(add=[CURSORS])
    with pytest.raises(InvalidPolicy, match="no-such"):
        trusted.change_policy(remove=["no-such"])
    assert count(runtime) == before
    assert trusted.is_running


def test_conditions_on_identity_and_context(runtime: Plantangenet) -> None:
    session = runtime.session("s2")
    session.start()
    session.bind_identity("ops", "Ops", {"tier": "silver"})
    gold_only = {
        "id": "gold-fine-grain",
        "effect": "allow",
        "actions": ["cursor.add"],
        "resources": ["axis.*"],
        "conditions": [
            {"key": "identity.tier", "op": "eq", "value": "gold"},
            {"key": "resolution", "op": "le", "value": 10},
        ],
    }
    session.change_policy(replace=[gold_only])
    session.attach("bot")
    with pytest.raises(AccessRefused):
        session.add_cursor("bot", "c", ["x"], 0, 1, resolution=5, issued_by="bot")
    session.bind_identity("ops", "Ops", {"tier": "gold"})
    with pytest.raises(AccessRefused):  # resolution condition false
        session.add_cursor("bot", "c", ["x"], 0, 1, resolution=50, issued_by="bot")
    with pytest.raises(AccessRefused):  # the command's own resolution counts, not the context's
        session.add_cursor("bot", "c", ["x"], 0, 1, 50, issued_by="bot", context={"resolution": 5})
    with pytest.raises(AccessRefused):  # no resolution to compare: the allow does not apply
        session.add_cursor("bot", "c", ["x"], 0, 1, issued_by="bot")
    session.add_cursor("bot", "c", ["x"], 0, 1, resolution=5, issued_by="bot")
    # A caller cannot forge the identity through its own context.
    session.bind_identity("ops", "Ops", {"tier": "silver"})
    with pytest.raises(AccessRefused):
        session.add_cursor(
            "bot",
            "d",
            ["x"],
            0,
            1,
            resolution=5,
            issued_by="bot",
            context={"identity.tier": "gold"},
        )


def test_roles_are_revoked_and_dropped_on_detach(trusted: SessionHandle) -> None:
    trusted.grant_role("bot", "watcher")
    trusted.revoke_role("bot", "watcher")
    with pytest.raises(AccessRefused):
        trusted.add_cursor("bot", "c", ["ocean.t"], 0, 1, issued_by="bot")
    trusted.grant_role("bot", "watcher")
    trusted.detach("bot")
    trusted.attach("bot")
    assert trusted.state.roles_of("bot") == ()


def test_audit_built_live_equals_audit_of_the_replay(runtime: Plantangenet) -> None:
    session = runtime.session("s3")
    live = Audit()
    session.on_change(live)
    session.start()
    session.change_policy(replace=[CURSORS, SECRETS, ADMIN])
    session.attach("bot")
    session.attach("boss")
    session.grant_role("boss", "admin")
    for attempt in range(2):
        try:
            session.add_cursor("bot", f"c{attempt}", ["ocean.temp"], 0, 1, issued_by="bot")
        except AccessRefused:
            session.grant_role("bot", "watcher", issued_by="boss")
    session.change_policy(remove=["no-secrets"], issued_by="boss")
    session.move_cursor("bot", "c1", ["ocean.secret"], 0, 2, issued_by="bot")
    replayed = Audit.of(runtime.history("s3"))
    assert replayed.entries == live.entries
    denied = replayed.query(outcome="denied")
    assert [
        (e.agent_id, e.action, e.resource, e.statement_id, e.policy_version) for e in denied
    ] == [("bot", "cursor.add", "axis.ocean.temp", None, 1)]
    bot = replayed.query(agent="bot")
    assert [(e.outcome, e.action, e.statement_id, e.policy_version) for e in bot] == [
        ("denied", "cursor.add", None, 1),
        ("allowed", "cursor.add", "watchers", 1),
        ("allowed", "cursor.move", "watchers", 2),
    ]
    assert [e.statement_id for e in replayed.query(agent="boss")] == ["admins", "admins"]
    assert len(replayed.query(resource="axis.ocean.*")) == 3
    assert replayed.query(action="role.*", agent="boss")[0].resource == "role.watcher"
    first, last = replayed.entries[0].occurred_at, replayed.entries[-1].occurred_at
    assert replayed.query(since=last) == [e for e in replayed.entries if e.occurred_at >= last]
    assert replayed.query(until=first) == [e for e in replayed.entries if e.occurred_at <= first]


# -- tamper evidence ----------------------------------------------------------------


@pytest.fixture
def deletable(nats_server: EmbeddedNats, journal_config: JournalConfig) -> Iterator[Plantangenet]:
    config = dataclasses.replace(journal_config, deny_delete=False)
    pg = Plantangenet.open(nats_url=nats_server.url, journal=config)
    yield pg
    pg.close()


def fill(pg: Plantangenet, session_id: str) -> list[int]:
    session = pg.session(session_id)
    session.start()
    for n in range(6):
        session.attach(f"a{n}")
    # Another session in between, so sequences of s1 are not contiguous.
    other = pg.session("other")
    other.start()
    session.change_metadata({"k": 1})
    return [e.sequence or 0 for e in pg.history(session_id)]


def test_untouched_session_verifies(deletable: Plantangenet) -> None:
    sequences = fill(deletable, "s1")
    result = deletable.run(verify(deletable.journal, "s1"))
    assert result.intact and result.checked == len(sequences) == 8


def test_deleting_a_message_breaks_the_chain_right_after_it(deletable: Plantangenet) -> None:
    sequences = fill(deletable, "s1")
    victim = sequences[3]
    deletable.run(deletable.journal.js.delete_msg(deletable.journal.config.stream, victim))
    result = deletable.run(verify(deletable.journal, "s1"))
    assert not result.intact
    assert (result.broken_at, result.previous_sequence) == (sequences[4], sequences[2])
    assert "removed" in result.problem


def test_republishing_an_altered_event_breaks_the_chain_at_that_event(
    deletable: Plantangenet,
) -> None:
    sequences = fill(deletable, "s1")
    journal = deletable.journal
    original = deletable.run(journal.js.get_msg(journal.config.stream, sequences[2]))
    raw = msgpack.unpackb(original.data, raw=False)
    raw["d"]["name"] = "forged"
    deletable.run(journal.js.publish(journal.subject("s1"), msgpack.packb(raw, use_bin_type=True)))
    result = deletable.run(verify(journal, "s1"))
    assert not result.intact
    assert result.broken_at == max(e.sequence or 0 for e in deletable.history("s1"))
    assert result.previous_sequence == sequences[-1]


def test_deleting_the_first_event_is_detected(deletable: Plantangenet) -> None:
    sequences = fill(deletable, "s1")
    deletable.run(deletable.journal.js.delete_msg(deletable.journal.config.stream, sequences[0]))
    result = deletable.run(verify(deletable.journal, "s1"))
    assert (result.intact, result.broken_at, result.previous_sequence) == (False, sequences[1], 0)


def test_the_default_stream_refuses_message_deletion(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    session.start()
    with pytest.raises(nats.js.errors.APIError):
        runtime.run(runtime.journal.js.delete_msg(runtime.journal.config.stream, 1))


def test_audit_and_verify_commands(
    nats_server: EmbeddedNats, journal_config: JournalConfig, runtime: Plantangenet
) -> None:
    session = runtime.session("s1")
    session.start()
    session.change_policy(replace=[CURSORS])
    session.attach("bot")
    with pytest.raises(AccessRefused):
        session.add_cursor("bot", "c", ["ocean.temp"], 0, 1, issued_by="bot")
    session.grant_role("bot", "watcher")
    session.add_cursor("bot", "c", ["ocean.temp"], 0, 1, issued_by="bot")
    opts = [
        "--nats-url",
        nats_server.url,
        "--stream",
        journal_config.stream,
        "--subject-prefix",
        journal_config.subject_prefix,
    ]

    def run(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        return main([*args, *opts], out=out), out.getvalue()

    status, text = run("audit", "s1", "--agent", "bot", "--json")
    rows = [json.loads(line) for line in text.splitlines()]
    assert status == 0
    assert [(r["outcome"], r["statement_id"], r["policy_version"]) for r in rows] == [
        ("denied", None, 1),
        ("allowed", "watchers", 1),
    ]
    status, text = run("audit", "s1", "--outcome", "denied")
    assert status == 0 and "axis.ocean.temp" in text and len(text.splitlines()) == 2
    status, text = run("audit", "s1", "--resource", "axis.air.*", "--json")
    assert text == ""
    status, text = run("verify", "s1")
    assert status == 0 and "history intact (6 events verified)" in text
    status, text = run("verify", "s1", "--json")
    assert json.loads(text)["intact"] is True

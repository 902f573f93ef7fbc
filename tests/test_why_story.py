"""`why` tells the whole story (grounds, cross-session correlation) and `diff` across sessions.

Against the real nats-server of the test run (fresh stream per test).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest

from plantangenet import (
    ChangeMetadata,
    CommandRejected,
    EmbeddedNats,
    JournalConfig,
    Plantangenet,
    StreamSequence,
)
from plantangenet.cli import main
from plantangenet.log.correlations import CorrelationIndex
from plantangenet.timetravel.fork import fork
from plantangenet.timetravel.history import diff_sessions, state_at, why

EDITORS = {
    "id": "editors-edit",
    "effect": "allow",
    "roles": ["editor"],
    "actions": ["metadata.change"],
    "resources": ["metadata.*"],
}
NO_SECRETS = {
    "id": "no-secrets",
    "effect": "deny",
    "roles": ["editor"],
    "actions": ["metadata.change"],
    "resources": ["metadata.secret"],
}
EVERYONE_LOOKS = {
    "id": "everyone-looks",
    "effect": "allow",
    "actions": ["cursor.*"],
    "resources": ["axis.*", "cursor.*"],
}


def story(
    runtime: Plantangenet, session_id: str = "s", between: Callable[[], object] | None = None
) -> dict[str, int]:
    """A session whose policy and roles change before the commands asked about
    (``between`` called after each step: another session's events in between, say).

    Returns the revisions of the events the tests refer to.
    """
    session = runtime.session(session_id)
    session.start()
    revisions: dict[str, int] = {}

    def last() -> int:
        if between is not None:
            between()
        return runtime.history(session_id)[-1].revision or 0

    session.change_policy(replace=[{**EDITORS, "resources": ["metadata.title"]}])
    revisions["first_policy"] = last()
    session.attach("ann", name="Ann")
    session.attach("bob", name="Bob")
    session.grant_role("ann", "editor")
    revisions["first_grant"] = last()
    session.change_metadata({"title": "first"}, issued_by="ann")
    revisions["early"] = last()
    session.change_policy(replace=[EDITORS])  # editors-edit widened: this sets it now
    revisions["widened"] = last()
    session.change_policy(add=[NO_SECRETS, EVERYONE_LOOKS])  # does not touch editors-edit
    revisions["denial_added"] = last()
    session.revoke_role("ann", "editor")
    session.grant_role("ann", "editor")  # the holding that counts starts here
    revisions["grant"] = last()
    session.change_metadata({"title": "tides"}, issued_by="ann")
    revisions["allowed"] = last()
    with pytest.raises(CommandRejected):
        session.change_metadata({"secret": "x"}, issued_by="ann")
    revisions["denied"] = last()
    with pytest.raises(CommandRejected):
        session.change_metadata({"title": "mine"}, issued_by="bob")
    revisions["default_denied"] = last()
    session.add_cursor("bob", "b1", ["ocean.tide"], 0, 1, issued_by="bob")
    revisions["for_everyone"] = last()
    return revisions


@pytest.mark.parametrize("interleaved", [False, True])
def test_why_names_the_statement_its_policy_change_and_the_role_grant(
    runtime: Plantangenet, interleaved: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``why`` reads most of the log as checked values and fetches the events it shows
    afterwards: interleaved, those events lie between another session's."""
    between = None
    if interleaved:
        other = runtime.session("other")
        other.start()
        other.attach("zed")
        other.add_cursor("zed", "z", ["x"], 0, 1)
        moves = iter(range(1000))

        def between() -> None:
            for _ in range(3):
                n = next(moves)
                other.move_cursor("zed", "z", ["x"], n, n + 1)

    at = story(runtime, between=between)
    journal = runtime.journal
    from plantangenet.timetravel import why as module

    fetch, asked = module._fetched, []

    async def fetched(journal: object, session_id: str, sequences: list[int]) -> object:
        asked.append(sorted(sequences))
        return await fetch(journal, session_id, sequences)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "_fetched", fetched)

    allowed = runtime.run(why(journal, "s", at["allowed"]))
    assert allowed.allowed is True
    (grounds,) = allowed.grounds
    assert (grounds.resource, grounds.effect) == ("metadata.title", "allow")
    assert grounds.statement_id == "editors-edit" and grounds.agent_id == "ann"
    assert grounds.statement is not None and grounds.statement.resources == ("metadata.*",)
    assert grounds.policy_change is not None
    assert grounds.policy_change.type_name == "PolicyChanged"
    assert grounds.policy_change.revision == at["widened"]  # the change that last set it
    assert grounds.roles == ("editor",)
    assert [g.revision for g in grounds.grants] == [at["grant"]]  # after the revoke
    assert grounds.grants[0].type_name == "RoleGranted"
    record = json.loads(json.dumps(allowed.to_dict()))
    assert record["allowed"] is True and record["elsewhere"] is None
    (plain,) = record["grounds"]
    assert plain["statement_id"] == "editors-edit"
    assert plain["policy_change"]["revision"] == at["widened"]
    assert plain["policy_change"]["sequence"] == grounds.policy_change.sequence
    assert plain["policy_change"]["agent_id"] is None  # the owner changed the policy
    assert plain["policy_change"]["occurred_at"]
    assert [g["revision"] for g in plain["grants"]] == [at["grant"]]

    denied = runtime.run(why(journal, "s", at["denied"]))
    assert denied.event.type_name == "AccessDenied" and denied.allowed is False
    (grounds,) = denied.grounds
    assert (grounds.resource, grounds.effect) == ("metadata.secret", "deny")
    assert grounds.statement_id == "no-secrets"
    assert grounds.policy_change is not None
    assert grounds.policy_change.revision == at["denial_added"]
    assert grounds.roles == ("editor",)
    assert [g.revision for g in grounds.grants] == [at["grant"]]

    default = runtime.run(why(journal, "s", at["default_denied"]))
    (grounds,) = default.grounds
    assert grounds.effect == "deny" and grounds.statement_id is None
    assert grounds.agent_id == "bob" and grounds.roles == () and grounds.policy_change is None

    everyone = runtime.run(why(journal, "s", at["for_everyone"]))
    (grounds,) = everyone.grounds
    assert grounds.statement_id == "everyone-looks" and grounds.roles == ()
    assert grounds.policy_change is not None
    assert grounds.policy_change.revision == at["denial_added"]

    owner = runtime.run(why(journal, "s", at["grant"]))  # the owner needs no statement
    assert owner.allowed is True
    assert [(g.statement_id, g.policy_change) for g in owner.grounds] == [(None, None)]

    # The statement as it stood then: before it was widened, the first change had set it.
    early = runtime.run(why(journal, "s", at["early"]))
    (grounds,) = early.grounds
    assert grounds.statement is not None and grounds.statement.resources == ("metadata.title",)
    assert grounds.policy_change is not None
    assert grounds.policy_change.revision == at["first_policy"]
    assert [g.revision for g in grounds.grants] == [at["first_grant"]]
    assert any(asked)  # events seen as checked values were fetched as envelopes


def test_why_follows_a_correlation_id_into_other_sessions(runtime: Plantangenet) -> None:
    for session_id in ("a", "b", "c"):
        runtime.session(session_id).start()
    a, b, c = (runtime.session(s) for s in ("a", "b", "c"))
    first = a.execute(ChangeMetadata(changed={"step": 1}, correlation_id="req-9"))
    there = b.execute(ChangeMetadata(changed={"step": 2}, correlation_id="req-9"))
    c.execute(ChangeMetadata(changed={"step": 3}, correlation_id="req-10"))
    again = b.execute(ChangeMetadata(changed={"step": 4}, correlation_id="req-9"))
    journal = runtime.journal

    alone = runtime.run(why(journal, "a", first.events[0].revision or 0))
    assert alone.searched_elsewhere is False and alone.elsewhere == ()
    answer = runtime.run(why(journal, "a", first.events[0].revision or 0, across=True))
    assert answer.searched_elsewhere is True
    assert answer.chain == first.events
    assert answer.elsewhere == (*there.events, *again.events)
    assert answer.sessions == ("b",)
    record = json.loads(json.dumps(answer.to_dict()))
    assert [(e["session_id"], e["sequence"]) for e in record["elsewhere"]] == [
        ("b", e.sequence) for e in (*there.events, *again.events)
    ]
    back = runtime.run(
        why(journal, "b", StreamSequence(there.events[0].sequence or 0), across=True)
    )
    assert back.elsewhere == first.events


def test_diff_of_a_fork_against_its_origin(runtime: Plantangenet) -> None:
    at = story(runtime, "o")
    journal = runtime.journal
    n = at["denied"]
    fork(runtime, "o", n, "f")
    origin, forked = (runtime.run(state_at(journal, s, n)) for s in ("o", "f"))
    same = diff_sessions(origin, forked)
    assert same.empty, same.describe()
    assert same.session_id is None and same.event_count.before == same.event_count.after == n
    assert same.sequence.before != same.sequence.after  # positions still shown

    runtime.session("f").change_metadata({"title": "forked"}, issued_by="ann")
    runtime.session("f").detach("bob", "left")
    now = runtime.replay("f")
    change = diff_sessions(runtime.replay("o"), now)
    assert not change.empty
    assert change.metadata.changed["title"].after == "forked"
    assert "bob" in change.agents.removed and "b1" in change.cursors.removed
    again = diff_sessions(origin, runtime.run(state_at(journal, "f", n)))
    assert again.empty  # the fork's past did not change


def cli(server: EmbeddedNats, config: JournalConfig, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(
        [
            *args,
            "--nats-url",
            server.url,
            "--stream",
            config.stream,
            "--subject-prefix",
            config.subject_prefix,
        ],
        out=out,
    )
    return status, out.getvalue()


def test_cli_why_story_and_diff_against(
    runtime: Plantangenet, nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    def run(*args: str) -> tuple[int, str]:
        return cli(nats_server, journal_config, *args)

    at = story(runtime, "k")
    runtime.session("k").execute(ChangeMetadata(changed={"n": 1}, correlation_id="req-k"))
    runtime.session("m").start()
    runtime.session("m").execute(ChangeMetadata(changed={"n": 2}, correlation_id="req-k"))
    asked = len(runtime.history("k"))

    status, text = run("why", "k", str(at["allowed"]))
    assert status == 0
    assert "metadata.title: allowed by statement editors-edit" in text
    assert f"statement set by PolicyChanged revision {at['widened']}," in text
    assert f"role editor of agent ann granted by RoleGranted revision {at['grant']}," in text
    assert "elsewhere" not in text
    status, text = run("why", "k", str(at["denied"]))
    assert "metadata.secret: denied by statement no-secrets" in text
    assert f"statement set by PolicyChanged revision {at['denial_added']}," in text
    status, text = run("why", "k", str(at["default_denied"]))
    assert "default deny: no statement allowed it (roles held: none)" in text
    status, text = run("why", "k", str(asked), "--across")
    assert status == 0
    assert "elsewhere: 1 event(s) of the same correlation in 1 other session(s)" in text
    assert "m rev 2 " in text
    assert run("why", "k", str(asked), "--no-index") == (0, text)  # the same, read without it
    status, text = run("why", "k", str(at["allowed"]), "--json")
    answer = json.loads(text)
    assert answer["grounds"][0]["grants"][0]["revision"] == at["grant"]

    assert run("fork", "k", "--at", "5", "--as", "k2")[0] == 0
    status, text = run("diff", "k", "5", "5", "--against", "k2")
    assert status == 0 and text.startswith("session k at revision 5 -> session k2 at revision 5")
    assert "no differences" in text
    status, text = run("diff", "k", str(asked), "5", "--against", "k2")
    assert "- cursor b1: bob ocean.tide [0, 1]" in text and "- metadata title: 'tides'" in text
    assert "~ policy version: 3 -> 1" in text and "no differences" not in text
    assert "agent" not in text  # the same agents, attached at other sequences
    status, text = run("diff", "k", "5", "5", "--against", "k2", "--json")
    assert json.loads(text)["session_id"] is None
    assert run("diff", "k", "5", "99", "--against", "k2")[0] == 2


def test_the_correlation_index_catches_up_from_its_checkpoint(runtime: Plantangenet) -> None:
    journal = runtime.journal
    for session_id in ("a", "b"):
        runtime.session(session_id).start()
    a, b = runtime.session("a"), runtime.session("b")
    one = a.execute(ChangeMetadata(changed={"step": 1}, correlation_id="req-1"))
    two = b.execute(ChangeMetadata(changed={"step": 2}, correlation_id="req-1"))
    b.execute(ChangeMetadata(changed={"step": 3}, correlation_id="req-2"))
    index = CorrelationIndex(journal, chunk=2)  # several chunks: keys, then the checkpoint
    assert runtime.run(index.checkpoint()) == 0
    where = runtime.run(index.lookup("req-1"))
    assert where == [(e.session_id, e.sequence) for e in (*one.events, *two.events)]
    end = runtime.run(journal.last_sequence("*"))
    assert runtime.run(index.checkpoint()) == end
    assert runtime.run(index.lookup("nobody")) == []

    three = a.execute(ChangeMetadata(changed={"step": 4}, correlation_id="req-1"))
    other = CorrelationIndex(journal)  # another process: the same bucket
    assert runtime.run(other.lookup("req-1", catch_up=False)) == where  # as of the checkpoint
    assert runtime.run(other.catch_up()) == three.events[-1].sequence
    found = runtime.run(index.events("req-1", exclude=("a",), catch_up=False))
    assert found == two.events

    # A catch-up that stopped between a chunk's keys and its checkpoint only redoes work.
    kv = runtime.run(index._bucket())
    runtime.run(kv.delete("checkpoint"))
    assert runtime.run(index.checkpoint()) == 0
    runtime.run(index.catch_up())
    again = runtime.run(index.lookup("req-1", catch_up=False))
    assert again == [(e.session_id, e.sequence) for e in (*one.events, *two.events, *three.events)]

    # why --across from the index agrees with reading every other session.
    revision = one.events[0].revision or 0
    scanned = runtime.run(why(journal, "a", revision, across=True))
    indexed = runtime.run(why(journal, "a", revision, across=True, index=index))
    assert indexed.elsewhere == scanned.elsewhere == two.events


def test_why_asks_again_when_a_lagging_replica_answers_a_page_without_the_event(
    runtime: Plantangenet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The events ``why`` shows are fetched by direct gets, which any replica answers: one
    that lags the leader is asked again; an event that never comes is named."""
    from plantangenet.errors import UnknownPosition
    from plantangenet.log.journal_acks import HistoryPage

    at = story(runtime)
    journal = runtime.journal
    expected = runtime.run(why(journal, "s", at["allowed"])).to_dict()
    page = journal.page
    calls = {"lagging": 0}

    async def lagging(*args: object, **kwargs: object) -> HistoryPage:
        calls["lagging"] += 1
        if calls["lagging"] == 1:
            return HistoryPage((), 0, True)  # a replica a few events behind
        return await page(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(journal, "page", lagging)
    assert runtime.run(why(journal, "s", at["allowed"])).to_dict() == expected
    assert calls["lagging"] >= 2

    async def never(*args: object, **kwargs: object) -> HistoryPage:
        return HistoryPage((), 0, True)

    monkeypatch.setattr(journal, "page", never)
    with pytest.raises(UnknownPosition, match="no event at sequence"):
        runtime.run(why(journal, "s", at["allowed"]))

"""Group ``plantangenet/`` by layer, once: move the modules, write the rooms, fix every reference.

Run from the repository root, on a clean tree, after the other work has landed::

    python3 tools/relayout.py            # apply (stages the moves and edits; commit them)
    python3 tools/relayout.py --dry-run  # print the plan, change nothing

What it does, in order:

1. Places every module under ``plantangenet/`` with :data:`PLACES` (file or folder, old path ->
   new path); a module already inside a room (``actors/``, ``events/``, ``projections/``, ...)
   stays there. A module the table does not place is an error: the script lists them and exits 1
   before touching anything, so a module added since the table was written is placed on purpose.
2. ``git mv``\\ s the modules that are not yet where the table puts them.
3. Rewrites every reference to a moved module in the repository's text files: dotted names
   (``plantangenet.journal`` -> ``plantangenet.log.journal``, in imports, mock targets, strings such
   as ``"plantangenet.cli:main"`` and ``python -m plantangenet.asyncapi``), module imports
   (``from plantangenet import journal`` -> ``from plantangenet.log import journal``) and paths
   (``plantangenet/journal.py``).
4. Writes each room's ``__init__.py`` docstring (:data:`ROOMS`: what the room holds, what it may
   import); an ``__init__`` that already has a docstring keeps it below the room's text
   (after the rewrite: the rooms' texts name the new paths already).
5. Replaces the README's "## Layout" section with :data:`README_LAYOUT`, drops the "pending" note
   of docs/architecture.md (written for the new layout, so not rewritten), installs
   ``tools/test_layout.py`` as ``tests/test_layout.py`` and adds ``lint-imports`` (the
   contracts of ``[tool.importlinter]`` in ``pyproject.toml``) to ``.ci/run`` after mypy.
6. Sorts the imports and formats the Python files it changed (ruff, if found).

Idempotent: a second run finds everything in place and changes nothing. Deterministic: the same
tree gives the same result (files and table are walked in sorted order).
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = "plantangenet"

#: Old path under plantangenet/ -> new path. A key ending in "/" places a whole folder.
#: Entries whose old path does not exist are skipped (modules of branches not merged yet).
PLACES: dict[str, str] = {
    # -- the top: at most 8 modules
    "__init__.py": "__init__.py",
    "__main__.py": "__main__.py",
    "errors.py": "errors.py",
    "runtime.py": "runtime.py",  # the composition root: NATS, journal, actors, compositors, chems
    # -- events
    "events/__init__.py": "events/__init__.py",
    "events/base.py": "events/base.py",
    "events/chem.py": "events/chem.py",
    "events/codec.py": "events/codec.py",
    "events/disclosure.py": "events/disclosure.py",
    "events/dust.py": "events/dust.py",
    "events/envelope.py": "events/envelope.py",
    "events/fields.py": "events/fields.py",
    "events/policy_values.py": "events/policy_values.py",
    "events/session.py": "events/session.py",
    "events/trust.py": "events/trust.py",
    # -- projections: folds of events into state and views (the log reaches them as an interface)
    "projections/__init__.py": "projections/__init__.py",
    "projections/agent.py": "projections/agent.py",
    "projections/audit.py": "projections/audit.py",
    "projections/audit_model.py": "projections/audit_model.py",
    "projections/audit_chunks.py": "projections/audit_chunks.py",
    "projections/cursors.py": "projections/cursors.py",
    "projections/ledger.py": "projections/ledger.py",
    "projections/log_view.py": "projections/log_view.py",
    "projections/maps.py": "projections/maps.py",
    "projections/session.py": "projections/session.py",
    "projections/user.py": "projections/user.py",
    "projections/user_model.py": "projections/user_model.py",
    "views.py": "projections/views.py",
    # -- domain: pure decisions
    "commands.py": "domain/commands.py",
    "decide.py": "domain/decide.py",
    "authorize.py": "domain/authorize.py",
    "policy.py": "domain/policy.py",
    "disclosure.py": "domain/disclosure.py",
    "dust.py": "domain/dust.py",
    "chem.py": "domain/chem.py",
    "query_plan.py": "domain/query_plan.py",
    "checks.py": "domain/checks.py",  # what callers send: ids, axes, texts, limits
    # -- log: the stream, and reading it into state
    "journal.py": "log/journal.py",
    "journal_acks.py": "log/journal_acks.py",
    "journal_config.py": "log/journal_config.py",
    "journal_reads.py": "log/journal_reads.py",
    "journal_seek.py": "log/journal_seek.py",
    "frames.py": "log/frames.py",
    "loop.py": "log/loop.py",
    "replay.py": "log/replay.py",
    "session_replay.py": "log/session_replay.py",
    "positions.py": "log/positions.py",
    "verify.py": "log/verify.py",
    "correlations.py": "log/correlations.py",
    # -- nats: the server itself
    "embedded.py": "nats/embedded.py",
    "cluster.py": "nats/cluster.py",
    "store.py": "nats/store.py",
    "cluster_nodes.py": "nats/cluster_nodes.py",
    "nats_local.py": "nats/local.py",  # the machine a local server runs on
    "nats_conf.py": "nats/config.py",  # nats-server configuration text
    # -- actors
    "actors/__init__.py": "actors/__init__.py",
    "actors/agent.py": "actors/agent.py",
    "actors/future.py": "actors/future.py",
    "actors/pool.py": "actors/pool.py",
    "actors/refusals.py": "actors/refusals.py",
    "actors/replies.py": "actors/replies.py",
    "actors/session.py": "actors/session.py",
    "handle.py": "actors/handle.py",
    # -- data: compositors, the queries that ask them, chems across sessions
    "compositors.py": "data/compositors.py",
    "disclose.py": "data/disclose.py",
    "chems.py": "data/chems.py",
    # -- wire: the protocol, the service that speaks it, the bots' side of it
    "subjects.py": "wire/subjects.py",
    "protocol.py": "wire/protocol.py",
    "service.py": "wire/service.py",
    "ownership.py": "wire/ownership.py",
    "client.py": "wire/client.py",
    "access.py": "wire/access.py",
    "access_checks.py": "wire/access_checks.py",
    "principals.py": "wire/principals.py",
    "client_commands.py": "wire/client_commands.py",
    "metrics.py": "wire/metrics.py",
    "micro.py": "wire/micro.py",
    # -- timetravel
    "history.py": "timetravel/history.py",
    "why.py": "timetravel/why.py",
    "state_diff.py": "timetravel/state_diff.py",
    "fork.py": "timetravel/fork.py",
    "explore.py": "timetravel/explore.py",
    "explorer/": "timetravel/explorer/",  # the Textual explorer (explorer-textual)
    "filters.py": "timetravel/filters.py",  # its event filters (explorer-textual)
    "botreplay.py": "timetravel/botreplay.py",
    "botreplay_records.py": "timetravel/botreplay_records.py",
    "botreplay_report.py": "timetravel/botreplay_report.py",
    "botreplay_session.py": "timetravel/botreplay_session.py",
    "replay_serve.py": "timetravel/replay_serve.py",
    # -- cli
    "cli.py": "cli/main.py",  # before cli-rich; with it, its package stays as it is:
    "cli/": "cli/",
    "reports.py": "cli/reports.py",
    "replay_cli.py": "cli/replay.py",  # before cli-rich; with it, see SHIMS
    "status.py": "cli/status.py",
    # it imports every module (pkgutil) for the error registry: it sits at the top
    "asyncapi.py": "cli/asyncapi.py",
    "asyncapi_components.py": "cli/asyncapi_components.py",
    "asyncapi_schemas.py": "cli/asyncapi_schemas.py",
    "asyncapi_texts.py": "cli/asyncapi_texts.py",
    "asyncapi_yaml.py": "cli/asyncapi_yaml.py",
}

#: Re-export shims (old path -> the module they re-export). When that module exists the shim
#: is removed (git rm) and every reference to it names the module instead; otherwise PLACES
#: places it like any module.
SHIMS: dict[str, str] = {
    "replay_cli.py": "cli/replaying.py",  # cli-rich kept plantangenet.replay_cli as a shim
}

#: The rooms, top of the stack first, each with what it holds and what it may import.
ROOMS: dict[str, str] = {
    "cli": """The command line: ``plantangenet`` and its commands, rendered for people and scripts.

Holds the argument parser and every command, the renderings of the cursor index and the ledger
(``reports``), ``replay-agent``/``replay-serve``, ``status``, and ``asyncapi``
(``python -m plantangenet.cli.asyncapi`` writes docs/asyncapi.yaml from the registries of every
module).
May import every other room; nothing imports it but ``plantangenet.__main__``.""",
    "timetravel": """Time travel: the session at any position, why, forks, the explorer, bot replay.

Holds ``history`` (the story of a session, seeking by time), ``why`` (the events behind a piece
of state), ``state_diff``, ``fork`` (a new session from a past one), the explorer and its
filters, ``botreplay`` (an in-process agent against a recorded session) and ``replay_serve``
(a remote bot against a fork of one).
May import wire, the runtime and everything below them; not cli.""",
    "wire": """The wire: the protocol over NATS, the service that speaks it, the bots' client.

Holds the subjects, the messages and their codes (``protocol``), the session service
(``service``, with ``ownership`` of partitions across processes, its ``metrics`` and NATS
``micro`` endpoints), the bot client (``client``) and the nats-server accounts of a deployment
(``access``).
May import the runtime and everything below it; not timetravel or cli.""",
    "data": """Data: the compositors a session coordinates with, the queries that ask them, chems.

Holds ``compositors`` (the built-in synthetic and recorded ones, loading others by name),
``disclose`` (running a planned query) and ``chems`` (agreements negotiated across two
sessions' actors).
May import actors and everything below them; not the runtime, wire, timetravel or cli.""",
    "actors": """Actors: the session actor (its session's single writer), agent actors, the handle.

Holds the session and agent actors, their thread pool, reply futures, refusal limits and the
``SessionHandle`` callers use. Compositors reach the session actor through the ``Compositor``
protocol of the domain.
May import log, nats, domain, projections, events and errors; nothing above.""",
    "log": """The log: the only code that talks to JetStream streams, and reading it into state.

Holds the ``journal`` (appends, reads, seeks, tails), the atomic batch ``frames``, the asyncio
``loop`` thread that owns the connection, ``replay`` and ``session_replay`` (the log folded into
a session's state), ``positions`` (revisions, sequences, times, and the session at one),
``verify`` (the hash chain) and ``correlations`` (the cross-session correlation index).
May import domain, projections, events and errors; no actors, nothing above them.""",
    "nats": """NATS itself: the embedded ``nats-server``, clusters of them, one server per store.

Holds ``embedded`` (a server on a free port, with ``local``: its binary, port, log and disk),
``cluster`` (a JetStream cluster of them, with ``cluster_nodes``), ``store`` (one server per
store directory, whichever process opens it) and ``config`` (nats-server configuration text).
May import domain, projections, events and errors; it is independent of the log.""",
    "domain": """The domain: pure decisions over a session's state, no I/O.

Holds the commands, ``decide``, ``authorize`` and ``policy`` (a command against the policy),
``disclosure`` (levels and shaping), ``dust`` (prices and charges), ``chem`` (one side of a
chem) and ``query_plan`` (planning a data query and shaping what a compositor returned; the
``Compositor`` protocol).
May import projections, events and errors; nothing from log, nats, wire, actors, data,
timetravel or cli.""",
    "projections": """Projections: folds of a session's events into state and views.

Holds the session state and ``evolve``/``fold``, the agent, audit, cursor-index and ledger
projections, user projections and the audit read model (kept in key-value buckets, reaching the
log through the ``log_view`` interface) and ``views`` (plain JSON-friendly renderings).
May import events and errors only.""",
    "events": """Events: immutable facts, their envelope, registry, upcasters and codec.

Holds the events, the envelope, the field conversions, the policy and disclosure values events
carry (``policy_values``) and the msgpack codec.
May import errors only.""",
}

#: The README's "## Layout" section after the relayout (the flat list it replaces names old paths).
README_LAYOUT = """## Layout

The package is grouped by layer, each folder a room that imports only the rooms below it
(checked by `lint-imports`); [docs/architecture.md](docs/architecture.md) draws the layers and the
path of a command and of a read, each step naming its module.

```
plantangenet/
  cli/           the command line (plantangenet ...), status, replay-agent/replay-serve, and
                 asyncapi (python -m plantangenet.cli.asyncapi writes docs/asyncapi.yaml)
  timetravel/    history, why, state_diff, fork (what-if forks), the explorer (terminal UI),
                 botreplay (a bot against recorded events), replay_serve
  wire/          subjects, protocol, service (plantangenet serve; ownership of partitions,
                 micro: $SRV answers, metrics: Prometheus), client (BotClient), access
                 (nats-server accounts for a locked-down deployment), principals
  runtime.py     Plantangenet: connection, journal, session actors, compositors, chems
  data/          compositors (synthetic, recorded), disclose (running a query), chems (both sides)
  actors/        SessionActor (single writer, group commit), AgentActor + Agent hooks, pool
                 (agent actors as mailboxes on a shared thread pool), SessionHandle, futures
  log/           journal (the only code that talks to JetStream), frames (atomic batches), loop
                 (the thread owning the NATS connection), replay, session_replay, positions
                 (revisions, state_at), verify (hash chain), correlations (KV index)
  nats/          EmbeddedNats, clusters, one server per store directory, server configuration
  domain/        commands, decide(state, command) -> events, authorize + policy (statements and
                 evaluation), disclosure (levels and shaping), dust, chem (one side), query_plan
  projections/   session and agent folds (evolve; maps: persistent maps), audit and its read
                 model in KV (audit_model), cursor index, dust ledger, user projections, views
  events/        event types, envelope, fields, policy values, registry + upcasters, msgpack codec
  errors.py      every error, with its stable code
bench/           benchmarks against raw nats-py (results: docs/benchmarks.md)
tests/           pytest + hypothesis, against real nats-server processes
```
"""
LAYOUT_SECTION = re.compile(r"^## Layout\n.*?(?=^## )", re.S | re.M)

#: One-line docstrings the room texts replace outright (they say less than the room does).
SUBSUMED = {
    "Events: immutable facts, their envelope, registry, upcasters and codec.",
    "Projections: folds of a session's events into views.",
    "Actors: the session actor (single writer of its session) and agent actors.",
}

TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".txt", ".sh", ".rst"}
EXTRA_TEXT_FILES = {".ci/run"}
SELF = "tools/relayout.py"
#: Written for the new layout already: not rewritten, only its "pending" note dropped.
WRITTEN_FOR_IT = "docs/architecture.md"
PENDING = re.compile(r"<!-- relayout:pending -->.*?<!-- /relayout:pending -->\n\n?", re.S)
LAYOUT_TEST = ("tools/test_layout.py", "tests/test_layout.py")
CI_LINE = ".venv/bin/lint-imports"
MARK = "\0relayout\0"


class Unplaced(Exception):
    pass


def dotted(path: str) -> str:
    """``log/journal.py`` -> ``log.journal``; ``cli/__init__.py`` -> ``cli``; a folder: its name."""
    path = path.rstrip("/")
    if path.endswith(".py"):
        path = path[: -len(".py")]
    if path.endswith("/__init__"):
        path = path[: -len("/__init__")]
    return path.replace("/", ".")


def modules(root: Path) -> list[str]:
    """Every module under plantangenet/, as a path relative to it, sorted."""
    base = root / PACKAGE
    return sorted(
        p.relative_to(base).as_posix() for p in base.rglob("*.py") if "__pycache__" not in p.parts
    )


def place(rel: str) -> tuple[str, bool] | None:
    """Where ``rel`` belongs and whether it is already there; None when the table has no place."""
    if rel in PLACES:
        return PLACES[rel], PLACES[rel] == rel
    for old, new in PLACES.items():
        if old.endswith("/") and rel.startswith(old):
            target = new + rel[len(old) :]
            return target, target == rel
    if rel in PLACES.values():
        return rel, True
    for new in PLACES.values():
        if new.endswith("/") and rel.startswith(new):
            return rel, True
    room = rel.split("/")[0]
    if "/" in rel and room in ROOMS:  # a module already inside a room stays there
        return rel, True
    return None


def plan(root: Path) -> tuple[list[tuple[str, str]], list[str], dict[str, str]]:
    """The moves (old path, new path), the shims to remove and the dotted renames (old -> new)."""
    unplaced, moves, shims = [], [], []
    renames: dict[str, str] = {}
    for rel in modules(root):
        if rel in SHIMS and (root / PACKAGE / SHIMS[rel]).exists():
            shims.append(rel)
            renames[dotted(rel)] = dotted(SHIMS[rel])
            continue
        placed = place(rel)
        if placed is None:
            unplaced.append(rel)
        elif not placed[1]:
            moves.append((rel, placed[0]))
    if unplaced:
        raise Unplaced("\n".join(f"  plantangenet/{rel}" for rel in unplaced))
    conflicts = [new for _, new in moves if (root / PACKAGE / new).exists()]
    if conflicts:
        raise Unplaced("targets already exist:\n" + "\n".join(f"  {c}" for c in conflicts))
    for old, new in moves:
        if old.endswith("/__init__.py"):
            continue  # a folder's __init__: renamed with its folder below
        renames[dotted(old)] = dotted(new)
    for old, new in PLACES.items():  # whole folders move as one name
        if old.endswith("/") and old != new and any(o.startswith(old) for o, _ in moves):
            renames[dotted(old)] = dotted(new)
    return moves, shims, renames


def text_files(root: Path) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    found = []
    for name in sorted(set(listed)):
        if not name or name in (SELF, WRITTEN_FOR_IT) or name.startswith(".venv"):
            continue
        path = root / name
        if (path.suffix in TEXT_SUFFIXES or name in EXTRA_TEXT_FILES) and path.is_file():
            found.append(path)
    return found


def exported_names(root: Path) -> set[str]:
    """The names ``plantangenet/__init__.py`` binds by importing them (functions, classes)."""
    init = root / PACKAGE / "__init__.py"
    tree = ast.parse(init.read_text(encoding="utf-8"))
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def rewriter(  # type: ignore[no-untyped-def]
    renames: dict[str, str], paths: dict[str, str], exported: set[str]
):
    """A function rewriting one file's text for the renames (dotted) and moves (paths)."""
    if not renames:
        return lambda text: text
    olds = sorted(renames, key=lambda n: (-len(n), n))
    name_re = re.compile(
        r"(?<![\w.])" + PACKAGE + r"\.(" + "|".join(map(re.escape, olds)) + r")(?![\w])"
    )
    old_paths = sorted(paths, key=lambda p: (-len(p), p))
    path_re = re.compile(
        r"(?<![\w/.])" + PACKAGE + "/(" + "|".join(map(re.escape, old_paths)) + r")(?![\w])"
    )
    # from plantangenet import journal, Plantangenet as P  (one line, no parentheses)
    from_re = re.compile(
        r"^([ \t]*)from " + PACKAGE + r" import ([^(\n#]+?)[ \t]*(#[^\n]*)?$", re.M
    )
    # ``from plantangenet import verify`` names the function the package exports, not the module
    # (a dotted ``plantangenet.verify`` in prose is taken for the module, as it mostly is)
    top_level = {old for old in renames if "." not in old} - exported

    def split_from(match: re.Match[str]) -> str:
        indent, names = match.group(1), match.group(2)
        kept: list[str] = []
        by_parent: dict[str, list[str]] = {}
        for item in (n.strip() for n in names.split(",")):
            name = item.split(" as ")[0].strip()
            if name in top_level:
                parent, _, leaf = renames[name].rpartition(".")
                alias = item.split(" as ")[1].strip() if " as " in item else name
                by_parent.setdefault(parent, []).append(
                    leaf if alias == leaf else f"{leaf} as {alias}"
                )
            elif item:
                kept.append(item)
        if not by_parent:
            return match.group(0)
        lines = [f"{indent}from {PACKAGE} import {', '.join(kept)}"] if kept else []
        for parent in sorted(by_parent):  # marked, so the dotted rewrite below leaves it be
            lines.append(f"{indent}from {MARK}.{parent} import {', '.join(by_parent[parent])}")
        if match.group(3):  # a trailing comment stays on the last line
            lines[-1] += f"  {match.group(3)}"
        return "\n".join(lines)

    def dotted_name(match: re.Match[str]) -> str:
        old, after = match.group(1), match.string[match.end() : match.end() + 1]
        before = match.string[max(0, match.start() - 8) : match.start()]
        if old in exported and (after == "(" or before.endswith((":func:`", ":func:`~"))):
            return match.group(0)  # plantangenet.verify(...): the function the package exports
        return f"{PACKAGE}.{renames[old]}"

    def rewrite(text: str) -> str:
        text = from_re.sub(split_from, text)
        text = name_re.sub(dotted_name, text)
        text = text.replace(MARK, PACKAGE)
        return path_re.sub(lambda m: f"{PACKAGE}/{paths[m.group(1)]}", text)

    return rewrite


def room_docstring(text: str, room: str) -> str:
    """``text`` (an ``__init__``'s source) with the room's docstring on top."""
    wanted = ROOMS[room]
    tree = ast.parse(text)
    body = tree.body
    has_doc = (
        bool(body)
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )
    old = ast.get_docstring(tree, clean=True) if has_doc else None
    if old is not None and old.startswith(wanted):
        return text
    doc = wanted if old is None or old.strip() in SUBSUMED else f"{wanted}\n\n{old}"
    lines = text.splitlines(keepends=True)
    rest = "".join(lines[body[0].end_lineno or 0 :]) if has_doc else text
    rest = rest.lstrip("\n")
    return f'"""{doc}\n"""\n' + ("\n" + rest if rest else "")


def ruff(root: Path) -> Path | None:
    for candidate in (
        root / ".venv/bin/ruff",
        Path(sys.executable).parent / "ruff",
        Path(shutil.which("ruff") or "/nonexistent"),
    ):
        if candidate.is_file():
            return candidate
    return None


def run(root: Path, dry_run: bool) -> int:
    try:
        moves, shims, renames = plan(root)
    except Unplaced as problem:
        print(
            "relayout: modules the table does not place (add them to PLACES in tools/relayout.py):"
            f"\n{problem}",
            file=sys.stderr,
        )
        return 1
    paths = {old: new for old, new in moves}
    paths.update({o: n for o, n in PLACES.items() if o.endswith("/") and dotted(o) in renames})
    rewrite = rewriter(renames, paths, exported_names(root))

    print(f"relayout: {len(moves)} module(s) to move")
    for old, new in moves:
        print(f"  git mv plantangenet/{old} plantangenet/{new}")
    for old in shims:
        print(f"  git rm plantangenet/{old}  (a shim of plantangenet/{SHIMS[old]})")
    for old, new in sorted(renames.items()):
        print(f"  {PACKAGE}.{old} -> {PACKAGE}.{new}")

    rooms = [r for r in ROOMS if any(n.split("/")[0] == r for n in PLACES.values())]
    changed: list[Path] = []
    if dry_run:
        for path in text_files(root):
            text = path.read_text(encoding="utf-8")
            if rewrite(text) != text:
                changed.append(path)
        for room in rooms:
            init = root / PACKAGE / room / "__init__.py"
            print(f"  room {room}: {'docstring of' if init.exists() else 'create'} {init}")
        print(f"relayout: {len(changed)} file(s) would be rewritten")
        for path in changed:
            print(f"  {path.relative_to(root)}")
        return 0

    for old, new in moves:
        target = root / PACKAGE / new
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "mv", f"{PACKAGE}/{old}", f"{PACKAGE}/{new}"], cwd=root, check=True)
    for old in shims:
        subprocess.run(["git", "rm", "-q", f"{PACKAGE}/{old}"], cwd=root, check=True)
    for old in PLACES:  # folders left empty by the moves (their __pycache__ aside)
        folder = root / PACKAGE / old.rstrip("/")
        if old.endswith("/") and folder.is_dir() and not any(folder.rglob("*.py")):
            shutil.rmtree(folder)
    for path in text_files(root):
        text = path.read_text(encoding="utf-8")
        new_text = rewrite(text)
        if new_text != text:
            path.write_text(new_text, encoding="utf-8")
            changed.append(path)

    # after the rewrite: a room's text names modules by their new paths already
    for room in rooms:
        init = root / PACKAGE / room / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        text = init.read_text(encoding="utf-8") if init.exists() else ""
        new_text = room_docstring(text, room)
        if new_text != text:
            init.write_text(new_text, encoding="utf-8")
            changed.append(init)
    readme = root / "README.md"
    if readme.exists() and renames:
        text = readme.read_text(encoding="utf-8")
        new_text = LAYOUT_SECTION.sub(lambda _: README_LAYOUT + "\n", text, count=1)
        if new_text != text:
            readme.write_text(new_text, encoding="utf-8")
            changed.append(readme)
    doc = root / WRITTEN_FOR_IT
    if doc.exists() and PENDING.search(doc.read_text(encoding="utf-8")):
        doc.write_text(PENDING.sub("", doc.read_text(encoding="utf-8")), encoding="utf-8")
        changed.append(doc)
    source, target = (root / p for p in LAYOUT_TEST)
    if source.exists() and (not target.exists() or target.read_bytes() != source.read_bytes()):
        shutil.copyfile(source, target)
        changed.append(target)
    ci = root / ".ci/run"
    if ci.exists():
        lines = ci.read_text(encoding="utf-8").splitlines(keepends=True)
        if not any(line.split("#")[0].strip() == CI_LINE for line in lines):
            at = max(i for i, line in enumerate(lines) if "mypy" in line) + 1
            lines.insert(at, f"{CI_LINE}  # the layers' import contracts (pyproject.toml)\n")
            ci.write_text("".join(lines), encoding="utf-8")
            changed.append(ci)

    python = sorted({str(p) for p in changed if p.suffix == ".py" and p.exists()})
    tool = ruff(root)
    if python and tool:
        subprocess.run([str(tool), "check", "-q", "--fix", "--select", "I", *python], cwd=root)
        subprocess.run([str(tool), "format", "-q", *python], cwd=root, check=True)
    elif python:
        print("relayout: ruff not found; sort imports and format by hand", file=sys.stderr)
    if python and tool:  # a longer module path in a string or comment can pass the line length
        long_lines = subprocess.run(
            [str(tool), "check", "-q", "--select", "E501", "--output-format", "concise", *python],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if long_lines:
            print(
                f"relayout: shorten these lines before committing:\n{long_lines}", file=sys.stderr
            )
    if changed or moves or shims:
        subprocess.run(
            ["git", "add", "-A", "--", PACKAGE, *sorted({str(p) for p in changed})],
            cwd=root,
            check=True,
        )
    print(f"relayout: {len(set(changed))} file(s) rewritten or written; all staged")
    for path in sorted(set(changed)):
        print(f"  {path.relative_to(root)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if not (root / PACKAGE / "__init__.py").exists() and not (root / "tools/relayout.py").exists():
        print("relayout: run it from the repository root", file=sys.stderr)
        return 2
    return run(root, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())

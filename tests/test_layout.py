"""The package's layout: few modules at the top, rooms saying what they hold (docs/architecture.md).

``pytest -s tests/test_layout.py`` prints the top-level modules and every room with line counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import plantangenet

PACKAGE = Path(plantangenet.__file__).parent
MAX_TOP_LEVEL = 8
MAX_LINES = 600


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def top_level_modules() -> list[Path]:
    return sorted(PACKAGE.glob("*.py"))


def rooms() -> list[Path]:
    return sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def test_at_most_eight_modules_at_the_top() -> None:
    modules = top_level_modules()
    print(f"\n{len(modules)} top-level modules:")
    for path in modules:
        print(f"  {path.name:<24} {lines(path):>5} lines")
    for room in rooms():
        inside = sorted(room.rglob("*.py"))
        total = sum(lines(p) for p in inside)
        print(f"  {room.name + '/':<24} {total:>5} lines in {len(inside)} modules")
        for path in inside:
            print(f"    {path.relative_to(room).as_posix():<22} {lines(path):>5} lines")
    over = [
        p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if lines(p) > MAX_LINES
    ]
    print(f"  modules over {MAX_LINES} lines: {', '.join(sorted(over)) or 'none'}")
    assert "__init__.py" in {p.name for p in modules}
    assert len(modules) <= MAX_TOP_LEVEL, [p.name for p in modules]


def test_every_room_says_what_it_holds_and_may_use() -> None:
    found = sorted(PACKAGE.rglob("__init__.py"))
    assert len(found) > 1, "the package has no rooms"
    for init in found:
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        where = init.relative_to(PACKAGE.parent).as_posix()
        assert doc, f"{where} has no docstring"
        if init.parent.parent == PACKAGE:  # a room of the package, not a folder inside one
            assert "May import" in doc, f"{where} does not say what the room may import"


def test_docker_compose_runs_a_nats_server_the_journal_accepts() -> None:
    """The cluster in docker-compose.yml is a server version the journal does not refuse
    (it ran 2.12 once, which refuses a command's atomic batch)."""
    import yaml  # type: ignore[import-untyped]

    from plantangenet.log.server_version import OLDEST_SERVER

    compose = yaml.safe_load((PACKAGE.parent / "docker-compose.yml").read_text())
    images = {
        name: service["image"]
        for name, service in compose["services"].items()
        if name.startswith("nats-")
    }
    assert sorted(images) == ["nats-1", "nats-2", "nats-3"]
    for image in images.values():
        repository, tag = image.split(":")
        assert repository == "nats"
        major, minor = (int(part) for part in tag.split("-")[0].split(".")[:2])
        assert (major, minor) >= OLDEST_SERVER, image

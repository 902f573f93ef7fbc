"""Small rooms: no module of the package is over MAX_LINES lines.

Run ``python tests/test_module_sizes.py`` (or this test with ``pytest -s``) to see every
module of the package with its line count, largest first.
"""

from __future__ import annotations

import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "plantangenet"
#: The most lines a module may have.
MAX_LINES = 600


def module_sizes() -> list[tuple[str, int]]:
    """Every module of the package (``plantangenet/...py``) and its line count, largest first."""
    sizes = [
        (path.relative_to(PACKAGE.parent).as_posix(), len(path.read_text().splitlines()))
        for path in PACKAGE.rglob("*.py")
    ]
    return sorted(sizes, key=lambda item: (-item[1], item[0]))


def report(sizes: list[tuple[str, int]]) -> str:
    lines = [f"{count:6d}  {name}" for name, count in sizes]
    return "\n".join([f"{len(sizes)} modules, {sum(c for _, c in sizes)} lines", *lines])


def test_no_module_is_over_the_limit() -> None:
    sizes = module_sizes()
    print(report(sizes))
    assert len(sizes) > 50  # the walk found the package, not an empty directory
    over = {name: count for name, count in sizes if count > MAX_LINES}
    assert not over, over


if __name__ == "__main__":
    print(report(module_sizes()))

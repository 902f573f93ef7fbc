"""Writing ``nats-server`` configuration text: quoted scalars, maps, arrays, users, accounts.

The syntax :func:`plantangenet.wire.access.server_config` writes its accounts in; every
value is quoted or checked, so a name from a caller cannot change the config's shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from plantangenet.errors import PlantangenetError


def _quote(value: str, label: str = "value") -> str:
    if any(c in value for c in '"\\\n\r') or not value.isprintable():
        raise InvalidAccessConfig(f"{label} cannot be quoted in a server config: {value!r}")
    return f'"{value}"'


def _scalar(value: str | int) -> str:
    return str(value) if isinstance(value, int) else _quote(value)


def _map(items: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in items.items()) + "}"


def _array(values: Iterable[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"


def _list(key: str, entries: list[str]) -> list[str]:
    """``key: [...]`` with one entry a line (indented by the caller), or nothing."""
    if not entries:
        return []
    return [f"{key}: [", *(f"  {entry}" for entry in entries), "]"]


@dataclasses.dataclass(frozen=True, slots=True)
class _User:
    user: str
    password: str
    permissions: dict[str, dict[str, list[str]]]

    def render(self, indent: str) -> list[str]:
        lines = [f"{indent}{{", f"{indent}  user: {_quote(self.user)}"]
        lines.append(f"{indent}  password: {_quote(self.password)}")
        lines.append(f"{indent}  permissions: {{")
        for direction, rules in self.permissions.items():
            parts = ", ".join(f"{kind}: {_array(subjects)}" for kind, subjects in rules.items())
            lines.append(f"{indent}    {direction}: {{{parts}}}")
        lines += [f"{indent}  }}", f"{indent}}}"]
        return lines


@dataclasses.dataclass(frozen=True, slots=True)
class _Account:
    name: str
    jetstream: str
    users: list[_User]
    lines: list[str]

    def render(self, indent: str) -> list[str]:
        inner = indent + "  "
        lines = [
            f"{indent}{_quote(self.name)} {{",
            f"{inner}jetstream: {self.jetstream}",
            f"{inner}users: [",
        ]
        for user in self.users:
            lines += user.render(inner + "  ")
        lines.append(f"{inner}]")
        lines += [inner + line for line in self.lines]
        lines.append(f"{indent}}}")
        return lines


class InvalidAccessConfig(PlantangenetError):
    """An argument of :func:`server_config` is not safe to put in a server config."""

    code = "invalid_access_config"

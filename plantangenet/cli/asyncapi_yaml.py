"""A small deterministic YAML emitter for the AsyncAPI document.

:func:`render` writes nested dicts, lists and scalars as block YAML, quoting every
string a YAML reader could take for something else (:func:`quoted`, :func:`scalar`):
no YAML library is needed. Used by :mod:`plantangenet.cli.asyncapi`.
"""

from __future__ import annotations

import math
import re
from typing import Any

#: The command to run when the document is stale.
REGENERATE = "python -m plantangenet.cli.asyncapi"

_HEADER = (
    "# The plantangenet wire protocol, for a bot in any language (AsyncAPI 3.0).\n"
    f"# Generated from the code's registries by `{REGENERATE}`: do not edit;\n"
    "# tests/test_asyncapi.py fails when it is not current. Prose: docs/protocol.md.\n"
)


_PLAIN = re.compile(r"[A-Za-z_$][A-Za-z0-9_.$/-]*(?: [A-Za-z0-9_.$/-]+)*")

_VERSION_LIKE = re.compile(r"\d+(?:\.\d+){2,}")

#: Words YAML (1.1 or 1.2) reads as something other than a string.
_RESERVED = frozenset({"y", "yes", "n", "no", "true", "false", "on", "off", "null"})

_LINE_BREAKS = frozenset({"\x85", "\u2028", "\u2029", "\ufeff"})


def quoted(text: str) -> str:
    """``text`` as a YAML double-quoted scalar (every character that needs it escaped)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code >= 0xA0 and ch.isprintable() and ch not in _LINE_BREAKS:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def scalar(value: Any) -> str:
    """One scalar (``None``, a bool, an int, a finite float or a string) as YAML."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no YAML for {value!r}")
        mantissa, e, exponent = repr(value).partition("e")
        if "." not in mantissa:
            mantissa += ".0"  # YAML 1.1 reads a float only with its point
        if e and exponent[0] not in "+-":
            exponent = "+" + exponent
        return mantissa + (f"e{exponent}" if e else "")
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) and value.lower() not in _RESERVED
        return value if plain or _VERSION_LIKE.fullmatch(value) else quoted(value)
    raise TypeError(f"no YAML scalar for a {type(value).__name__}")


def _literal(value: Any) -> bool:
    """Whether ``value`` is text best written as a literal block (``|-``)."""
    if not isinstance(value, str) or "\n" not in value:
        return False
    lines = value.split("\n")
    return (
        value == value.strip()
        and not lines[0].startswith(" ")
        and all(line == line.rstrip() for line in lines)
        and all(ch.isprintable() and ch not in _LINE_BREAKS for ch in value.replace("\n", ""))
    )


def _inline(head: str, value: Any, indent: int) -> list[str]:
    """``head`` followed by ``value`` on the same line (or a literal block under it)."""
    if isinstance(value, dict):
        return [head + " {}"]
    if isinstance(value, list):
        return [head + " []"]
    if _literal(value):
        pad = " " * indent
        return [head + " |-", *(pad + line if line else "" for line in value.split("\n"))]
    return [f"{head} {scalar(value)}"]


def _block(value: dict[str, Any] | list[Any], indent: int) -> list[str]:
    """The lines of a non-empty mapping or sequence, as a block at ``indent``."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"YAML keys here are strings, got {key!r}")
            head = f"{pad}{scalar(key)}:"
            if isinstance(item, dict | list) and item:
                lines += [head, *_block(item, indent + 2)]
            else:
                lines += _inline(head, item, indent + 2)
        return lines
    for item in value:
        if isinstance(item, dict) and item:
            nested = _block(item, indent + 2)
            lines += [f"{pad}- {nested[0][indent + 2 :]}", *nested[1:]]
        elif isinstance(item, list) and item:
            lines += [f"{pad}-", *_block(item, indent + 2)]
        else:
            lines += _inline(f"{pad}-", item, indent + 2)
    return lines


def render(document: dict[str, Any]) -> str:
    """``document`` as YAML text: block style, keys in the order given, a header comment."""
    return _HEADER + "\n".join(_block(document, 0)) + "\n"

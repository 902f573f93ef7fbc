"""Write the seed corpora of the fuzz harnesses (deterministic; rerun after format changes).

* ``corpus/codec/``: one valid encoded envelope of each event type, built with the real
  codec from the commands that set up the harnesses' fixed states (``<type>.f<format>``;
  seeds written in older envelope formats are kept);
* ``corpus/protocol/``: one valid raw-mode input per wire command (first byte: the
  active state, or new for ``start``; the command's name, a NUL, then the request), plus
  one valid raw input per command class built directly (first byte 0x10 | the state;
  the class name, a NUL, then the msgpack map of its fields), and a few structured-mode
  inputs.

Usage: ``.venv/bin/python fuzz/make_corpus.py``
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any

import fuzzlib
import msgpack

from plantangenet.events import CODEC
from plantangenet.events.codec import ENVELOPE_FORMAT
from plantangenet.wire.protocol import COMMANDS, encode_request

HERE = pathlib.Path(__file__).parent
NEW, ACTIVE = 0, 1  # indices in fuzzlib.STATES

#: A valid request (in the active state, or new for ``start``) for every wire command.
REQUESTS: dict[str, dict[str, Any]] = {
    "start": {"metadata": {"purpose": "fuzz", "n": 1}},
    "change_metadata": {"changed": {"k": "w"}, "removed": ["n"]},
    "attach": {"agent_id": "a9", "kind": "bridge", "name": "Nine"},
    "detach": {"agent_id": "a2", "reason": "bye"},
    "add_cursor": {"agent_id": "a3", "cursor_id": "c9", "axes": ["z"], "start": 1, "end": 2},
    "move_cursor": {
        "agent_id": "a1",
        "cursor_id": "c1",
        "axes": ["x", "t"],
        "start": 2.0,
        "end": 3.0,
        "resolution": 0.5,
    },
    "remove_cursor": {"agent_id": "a2", "cursor_id": "c2"},
    "change_policy": {
        "add": [
            {
                "id": "extra",
                "effect": "allow",
                "actions": ["cursor.*"],
                "resources": ["*"],
                "roles": ["mover"],
                "conditions": [{"key": "weekday", "op": "le", "value": 5}],
            }
        ],
        "remove": ["keep-c0"],
    },
    "bind_identity": {"identity_id": "ops2", "display_name": "Ops", "attributes": {"tier": "x"}},
    "grant_role": {"agent_id": "a3", "role": "watcher"},
    "revoke_role": {"agent_id": "a2", "role": "viewer"},
    "end": {"reason": "over"},
    "register_compositor": {"name": "recorded", "description": "buoys"},
    "query_cursor": {"agent_id": "a1", "cursor_id": "c1", "compositor": "synthetic"},
    "set_prices": {"prices": {"cursor.query": 2, "cursor.query.full": 5}},
    "deposit": {"account": "a3", "amount": 5, "memo": "top-up"},
    "grant": {"source": "a1", "target": "a2", "amount": 10},
}
#: Agents issuing some of them (so the policy is consulted).
ISSUERS = {"move_cursor": "a1", "add_cursor": "a3", "remove_cursor": "a1"}


def write(directory: pathlib.Path, name: str, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


def main() -> None:
    codec_dir, protocol_dir = HERE / "corpus" / "codec", HERE / "corpus" / "protocol"
    # Seeds of older envelope formats stay (``<type>.f1.msgpack``: the complete path's
    # upcasting); this format's are written again.
    for old in [*codec_dir.glob(f"*.f{ENVELOPE_FORMAT}.msgpack"), *protocol_dir.glob("*")]:
        old.unlink()
    seen: set[str] = set()
    for envelope in fuzzlib.seed_envelopes():
        if envelope.type_name not in seen:
            seen.add(envelope.type_name)
            name = f"{envelope.type_name}.f{ENVELOPE_FORMAT}.msgpack"
            write(codec_dir, name, CODEC.encode(envelope))
    for name, args in REQUESTS.items():
        state = NEW if name == "start" else ACTIVE
        if name not in COMMANDS:  # a wire command this version does not have (yet)
            continue
        payload = encode_request(args, command_id=f"seed-{name}", issued_by=ISSUERS.get(name))
        data = bytes([state << 5]) + name.encode() + b"\0" + payload
        write(protocol_dir, f"raw-{name}.bin", data)
    for name, (template_state, fields) in fuzzlib.TEMPLATES.items():
        data = (
            bytes([0x10 | fuzzlib.STATES.index(template_state) << 5])
            + name.encode()
            + b"\0"
            + msgpack.packb(fields)
        )
        write(protocol_dir, f"direct-{name}.bin", data)
    for i in range(4):  # structured mode: the provider's bytes pick commands and values
        data = bytes([0x80]) + hashlib.sha256(f"seed {i}".encode()).digest() * 4
        write(protocol_dir, f"structured-{i}.bin", data)
    print(f"{len(seen)} codec seeds, {len(list(protocol_dir.iterdir()))} protocol seeds")


if __name__ == "__main__":
    main()

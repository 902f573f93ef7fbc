"""One embedded ``nats-server`` per store directory, whichever processes open it.

Two ``nats-server`` processes on the same JetStream store each acknowledge
writes the other never sees: after a restart, acknowledged events are gone. So
a store directory has one *owner* at a time, the process holding an exclusive
lock on ``<store>/plantangenet.lock`` (``flock``: the kernel releases it when the
process dies, however it dies). The owner runs the store's server and writes
``<store>/plantangenet.json`` (its URL, its HTTP monitoring URL, the server's pid,
the owner's pid);
every other process that opens the store *joins* that server instead of
starting one.

Hand-over, so that a server is never missing for long and never doubled:

* **The owner closes** (or exits normally): it stops the server (JetStream
  flushes) and only then releases the lock. A joined process notices the free
  lock, takes it, and starts the server again *on the same port*, so every
  joined process's connection reconnects to it (nats-py reconnects on its own).
* **The owner is killed** (SIGKILL): its server, a process of its own, keeps
  running, and the lock is released. The next process to take the lock *adopts*
  that server (it checks that the pid is the store's nats-server and that it
  answers) and stops it when it closes in turn.
* **Everything was killed**: the lock is free and the recorded server is gone;
  the next opener starts a server (on the recorded port if it is free).

A process that cannot get the lock and finds no server to join within the
timeout gets :class:`StoreInUse`, naming the owner's pid.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Final

from plantangenet.errors import EmbeddedServerError
from plantangenet.nats.embedded import EmbeddedNats

__all__ = ["LOCK_FILE", "SERVER_FILE", "SharedStore", "StoreInUse"]

log = logging.getLogger("plantangenet.nats.store")

#: The owner's lock, in the store directory.
LOCK_FILE: Final = "plantangenet.lock"
#: Where the owner says which server serves the store.
SERVER_FILE: Final = "plantangenet.json"
_POLL: Final = 0.1


class StoreInUse(EmbeddedServerError):
    """Another process owns the store directory and its server cannot be joined."""

    code = "store_in_use"

    def __init__(self, message: str, *, owner_pid: int | None = None) -> None:
        super().__init__(message)
        self.owner_pid = owner_pid


class SharedStore:
    """The embedded server of one store directory: started here, joined, or adopted.

    :param store_dir: the JetStream store (created if missing).
    :param timeout: seconds to wait for an owner's server to become joinable.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        timeout: float = 15.0,
    ) -> None:
        self.store_dir = Path(store_dir).absolute()
        self.timeout = timeout
        self._lock_fd: int | None = None
        self._url: str | None = None
        self._monitor_url: str | None = None
        #: The server this process started (owner), or the pid of one it adopted.
        self.server: EmbeddedNats | None = None
        self._adopted_pid: int | None = None
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self._guard = threading.RLock()

    # -- opening --------------------------------------------------------------------------

    def open(self) -> str:
        """Own or join the store's server; its URL. Raises :class:`StoreInUse` if neither."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            if self._try_lock():
                self._own()
                break
            joined = self._joinable()
            if joined is not None:
                self._url = joined
                monitor = _read_record(self.store_dir).get("monitor_url")
                self._monitor_url = monitor if isinstance(monitor, str) else None
                self._watch()
                log.info("store %s: joined the server at %s", self.store_dir, joined)
                break
            if time.monotonic() > deadline:
                owner = _read_pid(self.store_dir / LOCK_FILE)
                raise StoreInUse(
                    f"the store {self.store_dir} is in use by process {owner or '?'}, and its "
                    f"server could not be reached within {self.timeout:g}s; stop that process, "
                    "or use another --store-dir",
                    owner_pid=owner,
                )
            time.sleep(_POLL)
        assert self._url is not None
        return self._url

    @property
    def url(self) -> str:
        """The URL of the store's server (after :meth:`open`)."""
        if self._url is None:
            raise EmbeddedServerError("the store is not open")
        return self._url

    @property
    def monitor_url(self) -> str | None:
        """The HTTP monitoring URL of the store's server (``/healthz``...), if known."""
        return self._monitor_url

    @property
    def owner(self) -> bool:
        """Whether this process owns the store (runs or adopted its server)."""
        return self._lock_fd is not None

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the server if this process owns it, then let the next owner take over."""
        atexit.unregister(self.close)
        self._closing.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(5)
        with self._guard:
            if self.server is not None:
                self.server.stop()
                self.server = None
            if self._adopted_pid is not None:
                _stop_pid(self._adopted_pid)
                self._adopted_pid = None
            if self._lock_fd is not None:
                # The record stays: a joined process that takes over starts the server on
                # the same port, where its connection (and every other joined one) returns.
                os.close(self._lock_fd)  # releases the lock: a joined process takes over
                self._lock_fd = None

    # -- internals ------------------------------------------------------------------------

    def _try_lock(self) -> bool:
        fd = os.open(self.store_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        return True

    def _own(self) -> None:
        """With the lock held: adopt the recorded server if it lives, else start one."""
        with self._guard:
            record = _read_record(self.store_dir)
            pid = record.get("server_pid")
            url = record.get("url")
            if (
                isinstance(pid, int)
                and isinstance(url, str)
                and _is_store_server(pid, self.store_dir)
                and _answers(url)
            ):
                self._adopted_pid = pid
                self._url = url
                monitor = record.get("monitor_url")
                self._monitor_url = monitor if isinstance(monitor, str) else None
                log.info("store %s: adopted the server at %s (pid %d)", self.store_dir, url, pid)
            else:
                port = record.get("port")
                wanted = port if isinstance(port, int) and _port_free(port) else None
                self.server = EmbeddedNats(self.store_dir, port=wanted, monitor=True).start()
                self._url = self.server.url
                self._monitor_url = self.server.monitor_url
                pid = self.server.pid
            self._write_record(pid)
            atexit.register(self.close)  # a normal exit lets the next owner take over

    def _write_record(self, server_pid: int | None) -> None:
        url = self._url or ""
        record = {
            "url": url,
            "port": int(url.rsplit(":", 1)[-1]) if ":" in url else None,
            "monitor_url": self._monitor_url,
            "server_pid": server_pid,
            "owner_pid": os.getpid(),
        }
        tmp = self.store_dir / f".{SERVER_FILE}.{os.getpid()}"
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.store_dir / SERVER_FILE)
        except OSError as exc:
            # A full disk: the server runs (its log is elsewhere) and this process uses
            # it; other processes cannot join it until the record can be written.
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning(
                "store %s: cannot record its server (%s); other processes cannot join it",
                self.store_dir,
                exc,
            )

    def _joinable(self) -> str | None:
        record = _read_record(self.store_dir)
        url = record.get("url")
        if isinstance(url, str) and url and _answers(url):
            return url
        return None

    def _watch(self) -> None:
        """While joined: take over the store when its owner lets go (same port)."""

        def watch() -> None:
            while not self._closing.wait(_POLL * 2):
                if not self._try_lock():
                    continue
                try:
                    self._own()
                    log.warning(
                        "store %s: its owner went away; this process now runs its server at %s",
                        self.store_dir,
                        self._url,
                    )
                except Exception:
                    log.exception("store %s: taking over the server failed", self.store_dir)
                    with self._guard:
                        if self._lock_fd is not None:
                            os.close(self._lock_fd)
                            self._lock_fd = None
                    continue
                return

        self._watcher = threading.Thread(target=watch, name="plantangenet-store", daemon=True)
        self._watcher.start()


def _read_record(store_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((store_dir / SERVER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _answers(url: str) -> bool:
    """Whether a NATS server answers at ``url`` (its INFO line arrives)."""
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0) as sock:
            sock.settimeout(1.0)
            return sock.recv(5) == b"INFO "
    except (OSError, ValueError):
        return False


def _port_free(port: int, host: str = "127.0.0.1", wait: float = 5.0) -> bool:
    """Whether a server may listen on ``port`` (as nats-server does: ``SO_REUSEADDR``, so
    the closed connections of the server before it do not count); waits a little for the
    server before it to let go."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                return True
            except OSError:
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)


def _is_store_server(pid: int, store_dir: Path) -> bool:
    """Whether ``pid`` is a live nats-server serving ``store_dir`` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    is_server = bool(cmdline) and b"nats-server" in cmdline[0]
    return is_server and str(store_dir).encode() in cmdline


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM an adopted server (it flushes JetStream), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return
        time.sleep(_POLL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True

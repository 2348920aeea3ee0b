"""A TCP proxy on loopback that breaks connections on purpose, in front of a real server.

Each accepted connection is, with probability *rate*, reset (RST, not a clean close)
at one of three points drawn at random: at connect, after a random number of bytes of
the client's request stream, or after a random number of bytes of the server's
answer stream. *bandwidth* (bytes/s, all connections and directions together) slows
it down, so that a test can signal a client while an upload is in flight.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["FaultProxy", "fault_proxy"]

_KINDS = ("connect", "request", "response")
_CHUNK = 64 << 10


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], rate: float, *, seed: int = 0) -> None:
        self.upstream = upstream
        self.rate = rate
        self.bandwidth: float | None = None
        self._free_at = 0.0  # when the bandwidth is next free
        # connections, resets by kind, and "request bytes" / "response bytes" passed on
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.counts["connections"] += 1
                fault = self._rng.random() < self.rate
                kind = self._rng.choice(_KINDS) if fault else None
                after = self._rng.randint(1, 256 << 10 if kind == "request" else 4 << 10)
            if kind is not None:
                self.counts[kind] += 1
            if kind == "connect":
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client, kind, after), daemon=True).start()

    def _serve(self, client: socket.socket, kind: str | None, after: int) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            _reset(client)
            return
        done = threading.Event()
        budget = {"request": after if kind == "request" else -1}
        budget["response"] = after if kind == "response" else -1
        up = threading.Thread(
            target=self._pump, args=(client, server, budget, "request", done), daemon=True
        )
        up.start()
        self._pump(server, client, budget, "response", done)
        up.join()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        budget: dict[str, int],
        direction: str,
        done: threading.Event,
    ) -> None:
        """Copy *src* to *dst* until either side closes, or reset both when the budget
        of bytes for this *direction* runs out."""
        src.settimeout(0.5)
        try:
            while not done.is_set():
                try:
                    data = src.recv(_CHUNK)
                except TimeoutError:
                    continue
                if not data:
                    break
                left = budget[direction]
                if 0 <= left <= len(data):
                    dst.sendall(data[:left])
                    break
                if left > 0:
                    budget[direction] = left - len(data)
                self._throttle(len(data))
                dst.sendall(data)
                with self._lock:
                    self.counts[f"{direction} bytes"] += len(data)
        except OSError:
            pass
        finally:
            if not done.is_set():
                done.set()
                _reset(src)
                _reset(dst)

    def _throttle(self, size: int) -> None:
        """Hold *size* bytes back so that all connections together keep to the bandwidth."""
        if not self.bandwidth:
            return
        with self._lock:
            now = time.monotonic()
            self._free_at = max(now, self._free_at) + size / self.bandwidth
            wait = self._free_at - now
        time.sleep(wait)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST, as a middlebox dropping the connection does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


@contextmanager
def fault_proxy(endpoint: str, rate: float, *, seed: int = 0) -> Iterator[FaultProxy]:
    """A proxy in front of the server at *endpoint* (``http://host:port``)."""
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    proxy = FaultProxy((host, int(port)), rate, seed=seed)
    try:
        yield proxy
    finally:
        proxy.close()

"""Worker loss, bounded: every worker watches its peers and leaves when one is gone.

A worker blocked in a collective waits for its peers without limit: a peer that was killed on
another node (no connection reset reaches anyone) or cut off by the network would leave it
waiting until the Job's deadline, holding its accelerator. So each worker of a multi-worker job
runs a watchdog thread that connects to every peer's gRPC address (the TensorFlow server that
answers there runs as long as the peer's process does) every PEER_POLL_S seconds. A peer that
cannot be reached for `timeout` seconds in a row is lost: the watchdog logs one line naming it
and ends the process with exit code 1, which the Job's and the JobSet's failure policies retry.
Every probe is bounded in time, the name lookup included: a peer cut off the network may take
its DNS name with it, and a resolver that then asks a server it cannot reach waits 5 s per try
and server, far longer than a poll. So a lookup runs in a thread of its own and gets one poll's
time, and a peer's address, once resolved, is kept while connections to it succeed (a replaced
pod has a new address: the first failed connection drops the kept one).
An error from a collective (TensorFlow notices a connection reset on its own) is reported the
same way, by `PeerWatch.lost_peer`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

log = logging.getLogger("vidtrain")
EXIT_PEER_LOST = 1  # transient: the orchestrator restarts the workers, which resume from the checkpoint
PEER_POLL_S = 2.0


def lost_line(why: str) -> str:
    """The one line that reports a lost peer, whoever noticed it (the watchdog or a failed collective)."""
    return (f"lost a peer: {why}; stopping with exit {EXIT_PEER_LOST} so that the workers restart and resume "
            "from the last checkpoint")


class PeerLost(RuntimeError):
    """A collective failed because a worker is gone (exit code 1: the orchestrator restarts the workers)."""


class PeerWatch:
    """Watches `peers` ({worker index: "host:port"}) from a daemon thread; `stop()` ends the watch
    (at the end of training, when peers may exit)."""

    def __init__(self, peers: dict[int, str], timeout: float, exit=os._exit):
        self.peers, self.timeout, self._exit = peers, timeout, exit
        self._stop = threading.Event()
        self._reported = threading.Lock()  # whoever reports the loss first (watchdog or a failed collective)
        self._last_seen = {index: time.monotonic() for index in peers}
        self._addresses: dict[int, tuple] = {}  # index -> the socket address last connected to
        self._lookups: dict[int, _Lookup] = {}  # index -> the name lookup under way
        self._thread = threading.Thread(target=self._watch, name="vidtrain-peer-watch", daemon=True)

    def start(self) -> PeerWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def reachable(self, index: int) -> bool:
        """Whether the peer accepts a connection now; takes at most two polls' time (lookup, connect)."""
        wait = min(PEER_POLL_S, self.timeout)
        address = self._addresses.get(index) or self._resolve(index, wait)
        if address is None:
            return False
        family, sockaddr = address
        try:
            with socket.socket(family, socket.SOCK_STREAM) as connection:
                connection.settimeout(wait)
                connection.connect(sockaddr)
        except OSError:
            self._addresses.pop(index, None)
            return False
        self._addresses[index] = address
        return True

    def _resolve(self, index: int, wait: float) -> tuple | None:
        """The peer's (family, socket address), or None when its name does not resolve within `wait`
        seconds (the lookup goes on in its thread, and a later probe takes its answer)."""
        lookup = self._lookups.get(index)
        if lookup is None:
            host, port = self.peers[index].rsplit(":", 1)
            lookup = self._lookups[index] = _Lookup(host, int(port))
        lookup.join(wait)
        if lookup.is_alive():
            return None
        del self._lookups[index]
        return lookup.address

    def lost_peer(self) -> str | None:
        """The first peer that cannot be reached now, described ("worker 1 (host:port)"), or None."""
        for index in self.peers:
            if not self.reachable(index):
                return f"worker {index} ({self.peers[index]})"
        return None

    def claim_report(self) -> None:
        """Returns to the first caller only: one line reports a loss, whoever noticed it first (the
        watchdog, or the main thread after a failed collective). Any later caller waits here while the
        first ends the process."""
        if not self._reported.acquire(blocking=False):
            threading.Event().wait()
        self.stop()

    def _watch(self) -> None:
        while not self._stop.wait(PEER_POLL_S):
            for index in self.peers:
                answered = self.reachable(index)
                now = time.monotonic()  # after the probe, which may have taken two polls' time
                if answered:
                    self._last_seen[index] = now
                elif now - self._last_seen[index] >= self.timeout and not self._stop.is_set():
                    self.claim_report()
                    self.leave(f"worker {index} ({self.peers[index]}) has not answered for "
                               f"{now - self._last_seen[index]:.0f} s (VIDTRAIN_PEER_TIMEOUT_S={self.timeout:g})")
                    return

    def leave(self, why: str) -> None:
        """Log the one line and end the process with EXIT_PEER_LOST (the main thread may be blocked in a
        collective that will never return: only ending the process frees it)."""
        log.error("%s", lost_line(why))
        logging.shutdown()
        sys.stderr.flush()
        self._exit(EXIT_PEER_LOST)


class _Lookup(threading.Thread):
    """One name lookup in a daemon thread: `address` is (family, socket address), or None if it failed."""

    def __init__(self, host: str, port: int):
        super().__init__(name="vidtrain-peer-lookup", daemon=True)
        self.host, self.port, self.address = host, port, None
        self.start()

    def run(self) -> None:
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
            self.address = (family, sockaddr)
        except OSError:
            pass

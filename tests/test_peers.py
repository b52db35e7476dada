"""The peer watchdog on real sockets: a peer that stops answering ends the process once, in time."""

import logging
import socket
import threading
import time

import vidtrain.peers as peers
from vidtrain.peers import PeerWatch


def test_a_peer_that_stops_answering_is_reported_once_within_the_timeout(monkeypatch, caplog):
    monkeypatch.setattr(peers, "PEER_POLL_S", 0.05)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    exits, left = [], threading.Event()

    def exit_(code):
        exits.append(code)
        left.set()

    watch = PeerWatch({1: address}, timeout=0.5, exit=exit_)
    checks, answered = [], threading.Event()
    reachable = watch.reachable

    def counted(index):
        checks.append(reachable(index))
        if checks.count(True) >= 12:  # 0.6 s of answers: longer than the timeout
            answered.set()
        return checks[-1]

    watch.reachable = counted
    watch.start()
    assert answered.wait(5) and not exits  # answering: nothing happens
    listener.close()
    gone = time.monotonic()
    caplog.set_level(logging.ERROR, logger="vidtrain")
    assert left.wait(5) and exits == [1]
    assert 0.4 < time.monotonic() - gone < 2
    lines = [r.getMessage() for r in caplog.records if "lost a peer" in r.getMessage()]
    assert len(lines) == 1 and f"worker 1 ({address}) has not answered for" in lines[0]
    watch.stop()


def test_a_peer_whose_name_no_longer_resolves_in_time_is_lost_within_the_timeout(monkeypatch):
    """Cut off the network, a peer's DNS name may go with it, and the resolver then waits on a server it
    cannot reach (seconds per try): the lookup must not stretch the watch. Here it never answers."""
    monkeypatch.setattr(peers, "PEER_POLL_S", 0.05)
    never = threading.Event()

    def hanging_getaddrinfo(*args, **kwargs):
        never.wait()
        raise socket.gaierror("unreachable")

    monkeypatch.setattr(peers.socket, "getaddrinfo", hanging_getaddrinfo)
    exits, left = [], threading.Event()
    watch = PeerWatch({1: "vidtrain-mw-1.vidtrain-workers:2222"}, timeout=0.5,
                      exit=lambda code: (exits.append(code), left.set()))
    began = time.monotonic()
    watch.start()
    try:
        assert left.wait(5) and exits == [1]
        assert time.monotonic() - began < 0.5 + 4 * 0.05 + 0.5  # the timeout, a probe's two polls, slack
    finally:
        watch.stop()
        never.set()


def test_a_resolved_address_is_kept_while_it_answers_and_looked_up_again_when_the_peer_moves(monkeypatch):
    """A replaced pod answers at a new address under the same name: the first failed connection drops the
    kept address, the next probe resolves the name again, and the peer is not lost."""
    monkeypatch.setattr(peers, "PEER_POLL_S", 0.05)
    first = socket.socket()
    first.bind(("127.0.0.1", 0))
    first.listen()
    port = first.getsockname()[1]
    where, lookups = ["127.0.0.1"], []
    real = socket.getaddrinfo

    def resolver(host, *args, **kwargs):
        assert host == "peer"
        lookups.append(where[0])
        return real(where[0], *args, **kwargs)

    monkeypatch.setattr(peers.socket, "getaddrinfo", resolver)
    exits = []
    watch = PeerWatch({1: f"peer:{port}"}, timeout=60, exit=exits.append)
    assert [watch.reachable(1) for _ in range(5)] == [True] * 5 and lookups == ["127.0.0.1"]  # looked up once
    first.close()
    moved = socket.socket()
    moved.bind(("127.0.0.2", port))  # the replacement: a new address, the same name and port
    moved.listen()
    where[0] = "127.0.0.2"
    try:
        assert watch.reachable(1) is False  # the old address refuses: dropped
        assert watch.reachable(1) is True and lookups == ["127.0.0.1", "127.0.0.2"]
        assert watch.lost_peer() is None and not exits
    finally:
        moved.close()


def test_only_the_first_to_notice_reports():
    watch = PeerWatch({1: "127.0.0.1:9"}, timeout=60, exit=lambda code: None)
    watch.claim_report()  # the first returns; a second caller would wait for the first to end the process
    second = threading.Thread(target=watch.claim_report, daemon=True)
    second.start()
    second.join(0.3)
    assert second.is_alive()

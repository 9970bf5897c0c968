"""Keepalive: the server pings every websocket.ping_interval_s and drops a peer that stops answering."""

from __future__ import annotations

from wsclient import RawClient

PING, CLOSE = 0x9, 0x8


def test_a_peer_that_never_answers_pings_is_dropped(server_factory):
    server = server_factory({"websocket": {"ping_interval_s": 1, "ping_timeout_s": 1}})
    silent = RawClient(server.port)
    silent.sock.settimeout(10)
    opcodes = []
    try:
        while True:  # read until the server gives up on us: a close frame or the end of the stream
            opcode, _ = silent.frame()
            opcodes.append(opcode)
            if opcode == CLOSE:
                break
    except AssertionError:  # "connection closed": dropped without a close frame
        opcodes.append(None)
    finally:
        silent.sock.close()
    assert opcodes[0] == PING
    assert opcodes[-1] in (CLOSE, None)

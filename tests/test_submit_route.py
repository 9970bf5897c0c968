"""POST /scores/update is served below tornado.web (handlers/submit.py): the same answers as any endpoint.

Headers, request ids, metrics, the other methods on the path and keep-alive are what a RequestHandler
gave for free; these tests pin them for the submission path. Both backends.
"""

from __future__ import annotations

import json
import re
import socket
import threading

from scoreboard.scores import SCORES_CHANNEL
from scoreboard.signing import sign

from harness import Http, Player, encode


def test_an_accepted_submission_has_the_json_and_cache_headers(server):
    response = Player(Http(server.url), "alice").submit(10)
    assert response.status == 200, response.raw
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-length"] == str(len(response.raw))
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_requests_without_an_id_each_get_their_own(server):
    alice = Player(Http(server.url), "alice")
    ids = {alice.submit().headers["x-request-id"] for _ in range(5)}
    ids.add(Http(server.url).get("/leaderboards").headers["x-request-id"])
    assert len(ids) == 6 and all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)


def test_a_client_request_id_is_echoed_on_success_and_in_errors(server):
    alice = Player(Http(server.url), "alice")
    ok = alice.send(encode(alice.body()), headers={"X-Request-Id": "game-42.retry_1"})
    refused = alice.send(encode(alice.body()), signature="0" * 64, headers={"X-Request-Id": "game-43"})
    assert ok.status == 200 and ok.headers["x-request-id"] == "game-42.retry_1"
    assert refused.status == 401 and refused.json["error"]["code"] == "bad_signature"
    assert refused.headers["x-request-id"] == refused.json["error"]["request_id"] == "game-43"


def test_a_query_string_does_not_change_the_route(server):
    alice = Player(Http(server.url), "alice")
    raw = encode(alice.body(7))
    response = alice.http.post("/scores/update?source=test", raw,
                               headers={"X-Signature": sign(alice.login["session_key"], raw)})
    assert response.status == 200, response.raw
    assert response.json["score"] == 7


def test_other_methods_on_the_submission_path_are_refused_with_a_protocol_error(server):
    alice = Player(Http(server.url), "alice")
    for method in ("GET", "PUT", "DELETE"):
        response = alice.http.request(method, "/scores/update")
        assert response.status == 400, (method, response.raw)
        assert response.json["error"]["code"] == "invalid_request"
        assert response.json["error"]["message"] == "method not allowed"


def test_submissions_are_counted_in_the_metrics_by_outcome_and_status(server):
    alice = Player(Http(server.url), "alice")
    assert alice.submit(10).status == 200
    assert alice.send(encode(alice.body()), signature="0" * 64).status == 401
    metrics = Http(server.url).get("/metrics").raw.decode()
    assert 'scoreboard_score_submissions_total{outcome="accepted"} 1.0' in metrics
    assert 'scoreboard_score_submissions_total{outcome="bad_signature"} 1.0' in metrics
    assert 'scoreboard_http_requests_total{route="scores.update",status="200"} 1.0' in metrics
    assert 'scoreboard_http_requests_total{route="scores.update",status="401"} 1.0' in metrics
    assert 'scoreboard_http_request_seconds_count{route="scores.update"} 2.0' in metrics


def test_pipelined_submissions_on_one_connection_are_answered_in_order(server):
    alice = Player(Http(server.url), "alice")
    host, port = Http(server.url).host, Http(server.url).port
    wire = b""
    for points in (1, 2, 3):
        raw = encode(alice.body(points))
        wire += (f"POST /scores/update HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {alice.http.token}\r\n"
                 f"X-Signature: {sign(alice.login['session_key'], raw)}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(wire)
        bodies = _read_responses(sock, 3)
    assert [body["score"] for body in bodies] == [1, 3, 6]


def _read_responses(sock: socket.socket, count: int) -> list[dict]:
    buffered, bodies = b"", []
    while len(bodies) < count:
        head_end = buffered.find(b"\r\n\r\n")
        if head_end >= 0:
            length = int(re.search(rb"(?i)content-length: (\d+)", buffered[:head_end]).group(1))
            if len(buffered) >= head_end + 4 + length:
                assert buffered.startswith(b"HTTP/1.1 200"), buffered[:200]
                bodies.append(json.loads(buffered[head_end + 4:head_end + 4 + length]))
                buffered = buffered[head_end + 4 + length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection before answering every request"
        buffered += chunk
    return bodies


def _audited_client(server, action_id: str) -> tuple[str, str, str]:
    from scoreboard.store.models import AuditRecord

    def read():
        record = AuditRecord.get(AuditRecord.kind == "score.accepted", AuditRecord.after.contains(action_id))
        return record.address, record.user_agent, record.request_id

    return server.call(server.app.store.read(read))


def test_the_audit_record_holds_the_clients_address_agent_and_request_id(server):
    alice = Player(Http(server.url), "alice")
    body = alice.body()
    response = alice.send(encode(body), headers={"User-Agent": "game/1.0", "X-Request-Id": "r-1",
                                                 "X-Real-Ip": "203.0.113.7"})
    assert response.status == 200, response.raw
    assert _audited_client(server, body["action_id"]) == ("127.0.0.1", "game/1.0", "r-1")  # not behind a proxy


def test_behind_a_proxy_the_forwarded_address_is_the_clients(server_factory):
    server = server_factory({"server": {"xheaders": True}})
    alice = Player(Http(server.url), "alice")
    body = alice.body()
    assert alice.send(encode(body), headers={"X-Real-Ip": "203.0.113.7"}).status == 200
    assert _audited_client(server, body["action_id"])[0] == "203.0.113.7"


def test_a_failing_event_message_source_costs_only_its_own_message(server):
    """After the commit nothing may turn an accepted action into an error: the score event still goes out."""
    app = server.app
    delivered = threading.Event()
    seen = []

    def broken(event: dict) -> list:
        raise RuntimeError("a broken message source")

    def on_score(event) -> None:
        seen.append(json.loads(event.payload))
        delivered.set()

    app.scores.accepted_messages.insert(0, broken)
    server.call(app.bus.subscribe(SCORES_CHANNEL, on_score))

    response = Player(Http(server.url), "alice").submit(10)

    assert response.status == 200, response.raw
    assert delivered.wait(10)
    assert (seen[0]["score"], seen[0]["action_id"]) == (10, response.json["action_id"])

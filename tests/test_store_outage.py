"""A store that goes down gives 503 unavailable and applies nothing; the same request succeeds once it is back.

The outage is real: PostgreSQL or Redis is reached through a TCP proxy that the test cuts. The embedded
backends live in the server process and cannot go down on their own, so these run on the services backend.
"""

from __future__ import annotations

import json

import psycopg2
import pytest

from conftest import POSTGRES_URL
from harness import Http, Player, merge
from netproxy import Proxy

pytestmark = pytest.mark.parametrize("backend", ["services"], indirect=True)  # stores reached over a network


@pytest.fixture
def proxied(backend, server_factory, tmp_path):
    from conftest import REDIS_URL
    from harness import cleanup, raw_config

    raw = raw_config("services", tmp_path, REDIS_URL, POSTGRES_URL)
    pg, rd = Proxy("127.0.0.1", 5432), Proxy("127.0.0.1", 6379)
    schema_url = raw["database"]["url"]
    through = merge(raw, {
        "database": {"url": schema_url.replace("127.0.0.1:5432", f"127.0.0.1:{pg.port}"), "timeout_s": 2.0},
        "redis": {"url": f"redis://127.0.0.1:{rd.port}/0"},
        "ratelimit": {"per_user": "1000/s"},
    })
    server = server_factory(raw=through)
    yield server, pg, rd, schema_url
    pg.close()
    rd.close()
    cleanup(raw)


def _count_actions(schema_url: str) -> int:
    base, options = schema_url.split("?")
    schema = options.rsplit("%3D", 1)[1]
    with psycopg2.connect(base) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {schema}.actions")
        return cur.fetchone()[0]


@pytest.mark.parametrize("store", ["database", "redis"])
def test_a_store_down_gives_503_and_the_same_request_succeeds_after(proxied, store):
    server, pg, rd, schema_url = proxied
    proxy = {"database": pg, "redis": rd}[store]
    player = Player(Http(server.url), f"outage_{store}")
    raw = json.dumps(player.body(25)).encode()
    proxy.cut()
    refused = player.send(raw)
    proxy.restore()
    assert (refused.status, refused.code) == (503, "unavailable")
    assert _count_actions(schema_url) == 0
    retried = player.send(raw)
    assert retried.status == 200, retried.raw
    assert (retried.json["score"], retried.json["duplicate"]) == (25, False)
    assert _count_actions(schema_url) == 1


def test_readyz_names_the_store_that_is_down(proxied):
    server, pg, rd, _ = proxied
    http = Http(server.url)
    rd.cut()
    redis_down = http.get("/readyz")
    rd.restore()
    pg.cut()
    database_down = http.get("/readyz")
    pg.restore()
    assert redis_down.status == 503 and redis_down.json["checks"]["redis"].startswith("down")
    assert database_down.status == 503 and database_down.json["checks"]["database"].startswith("down")
    assert http.get("/readyz").status == 200

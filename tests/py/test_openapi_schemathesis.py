"""The server-side presence API against its own OpenAPI document, with schemathesis.

The schema is loaded from the running server (``/api/presence/openapi.json``) and every
operation in it is called with generated requests (valid and invalid ones, from the
document's examples, its coverage cases and random data), each with the secret key.
Every response must be no 5xx, have a documented status code and content type, and
match the documented response schema; schema-valid requests must be accepted and invalid
ones refused, requests without the credential refused, and other methods answered 405. While it runs, two realtime-py clients are
tracked in the example channel ``lobby`` so that the members and count responses have
members and metas to check, not only empty pages. In cluster mode (ROSTER_TEST_CLUSTER=1)
the clients sit on node 2 and the API is asked on node 1, which reads them from Redis.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from realtime import AsyncRealtimeClient
from schemathesis import checks

from conftest import PUBLISHABLE_KEY, SECRET_KEY, start_roster

AUTH = {"Authorization": f"Bearer {SECRET_KEY}"}


def negative_data_rejection(ctx, response, case):
    """schemathesis' check, but a request line or headers too long for the HTTP
    layer (414, 431: a thousand-odd long `keys`) is a rejection too."""
    if response.status_code in (414, 431):
        return None
    return checks.negative_data_rejection(ctx, response, case)


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    # Schema-valid requests get a 2xx and schema-invalid ones a 4xx, so the document's
    # constraints (limit 1..1000, no unknown body fields, ...) are the server's.
    checks.positive_data_acceptance,
    negative_data_rejection,
    # The same request without (or with a wrong) credential is refused with 401/403.
    checks.ignored_auth,
    # Methods the document does not name answer 405.
    checks.unsupported_method,
]
# The channel and keys the document's examples name (`lobby`; the query asks for alice and bob).
EXAMPLE_TOPIC = "lobby"
EXAMPLE_KEYS = ["alice", "bob"]
# Per operation and generation phase; bounded so the whole module takes seconds, not minutes.
MAX_EXAMPLES = 40


class TrackedClients:
    """realtime-py clients joined to `topic` and tracked, one per key, on an event loop in a
    thread of their own, so they keep their heartbeats going while the synchronous
    schemathesis test makes its requests."""

    def __init__(self, realtime_url: str, topic: str, keys: list[str]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._clients: list[AsyncRealtimeClient] = []
        self._run(self._start(realtime_url, topic, keys), 20)

    def _run(self, coro, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self, realtime_url: str, topic: str, keys: list[str]) -> None:
        for key in keys:
            client = AsyncRealtimeClient(realtime_url, PUBLISHABLE_KEY)
            self._clients.append(client)
            await asyncio.wait_for(client.connect(), 10)
            channel = client.channel(topic, {"config": {"presence": {"key": key, "enabled": True}}})
            subscribed = asyncio.Event()
            channel.on_presence_sync(lambda: None)
            await asyncio.wait_for(
                channel.subscribe(lambda status, err: subscribed.set() if str(getattr(status, "value", status)) == "SUBSCRIBED" else None),
                10,
            )
            await asyncio.wait_for(subscribed.wait(), 10)
            await channel.track({"status": "online", "key": key})

    async def _close(self) -> None:
        for client in self._clients:
            try:
                await asyncio.wait_for(client.close(), 5)
            except Exception:
                pass

    def close(self) -> None:
        try:
            self._run(self._close(), 15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()


def _get_json(url: str) -> Any:
    response = requests.get(url, headers=AUTH, timeout=5)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def roster():
    """This module's server (or cluster), with the example keys tracked in the example channel."""
    server = start_roster()
    clients = None
    try:
        # On a cluster the clients join node 2 and the API is asked on node 1 (Redis reads).
        realtime_url = server.realtime_urls[1 % len(server.realtime_urls)]
        clients = TrackedClients(realtime_url, EXAMPLE_TOPIC, EXAMPLE_KEYS)
        deadline = time.monotonic() + 10
        while True:
            counts = _get_json(f"{server.url}/api/presence/{EXAMPLE_TOPIC}/count")
            if counts["keys"] == len(EXAMPLE_KEYS):
                break
            assert time.monotonic() < deadline, f"example presences never showed up: {counts}\n{server.logs()}"
            time.sleep(0.05)
        yield server
    finally:
        if clients is not None:
            clients.close()
        server.stop()


@pytest.fixture(scope="module")
def presence_api_schema(roster):
    """The document as the running server serves it."""
    return schemathesis.openapi.from_url(f"{roster.url}/api/presence/openapi.json", timeout=10)


schema = schemathesis.pytest.from_fixture("presence_api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_presence_api_conforms_to_openapi(case, roster):
    case.call_and_validate(base_url=roster.url, headers=AUTH, checks=CHECKS)


def test_schema_covers_every_presence_route(presence_api_schema):
    """The schemathesis test above runs over every operation: the document names them all."""
    operations = {
        (result.ok().method.upper(), result.ok().path) for result in presence_api_schema.get_all_operations()
    }
    assert operations == {
        ("GET", "/api/presence/{topic}/members"),
        ("GET", "/api/presence/{topic}/count"),
        ("POST", "/api/presence/query"),
    }

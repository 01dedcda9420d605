"""Broadcast between realtime-py 2.34.1 (vsn 1.0.0) and supabase-js (vsn 2.0.0, a node peer), and via REST."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from conftest import PUBLISHABLE_KEY, SECRET_KEY, node_url_for, wait_for

QUIET = 0.3  # seconds to keep listening before asserting that nothing (more) arrived


class Inbox:
    """realtime-py broadcast callbacks, one list per registered event filter."""

    def __init__(self, channel, events: tuple[str, ...] = ("*",)) -> None:
        self.channel = channel
        self.got: dict[str, list[dict[str, Any]]] = {}
        self.statuses: list[str] = []
        for event in events:
            self.got[event] = []
            channel.on_broadcast(event, lambda msg, event=event: self.got[event].append(json.loads(json.dumps(msg))))

    def on_status(self, status, err) -> None:
        self.statuses.append(str(getattr(status, "value", status)))


async def py_listener(client, room: str, events: tuple[str, ...] = ("*",), broadcast: dict | None = None) -> Inbox:
    params = None
    if broadcast is not None:
        params = {"config": {"broadcast": {"ack": False, "self": False, **broadcast}, "private": False}}
    inbox = Inbox(client.channel(room, params), events)
    await asyncio.wait_for(inbox.channel.subscribe(inbox.on_status), 10)
    assert inbox.statuses == ["SUBSCRIBED"], inbox.statuses
    return inbox


@pytest.fixture
def js_peer(roster, spawn_node):
    async def start(room: str, config: dict | None = None):
        # On a cluster: the next node round-robin, after the test's earlier clients.
        peer = await spawn_node("broadcast-peer.js", node_url_for(roster.url), room, json.dumps(config or {}))
        await wait_for(lambda: peer.of_type("subscribed"), timeout=15, message=peer.describe)
        return peer

    return start


def js_received(peer) -> list[dict]:
    return [l["message"] for l in peer.of_type("broadcast")]


async def js_command(peer, cmd: dict) -> Any:
    """Run one command in the node peer and return its result."""
    await peer.send(cmd)
    sent = await wait_for(
        lambda: [l for l in peer.of_type("sent") if l.get("id") == cmd["id"]], timeout=10, message=peer.describe
    )
    return sent[0]["result"]


def event_and_payload(msgs: list[dict]) -> list[tuple[str, Any]]:
    return [(m["event"], m["payload"]) for m in msgs]


async def test_python_receives_what_supabase_js_sends(make_client, room, js_peer):
    py = await make_client()
    inbox = await py_listener(py, room, events=("*", "cursor"))
    peer = await js_peer(room)

    # realtime-js sends these as binary kind-3 frames with a JSON payload.
    assert await js_command(peer, {"op": "send", "id": 1, "event": "cursor", "payload": {"x": 10, "y": 20}}) == "ok"
    assert await js_command(peer, {"op": "send", "id": 2, "event": "chat", "payload": {"text": "hé 👋", "n": [1, 2]}}) == "ok"

    await wait_for(lambda: len(inbox.got["*"]) >= 2, message=lambda: f"python got {inbox.got}\n{peer.describe()}")
    assert event_and_payload(inbox.got["*"]) == [
        ("cursor", {"x": 10, "y": 20}),
        ("chat", {"text": "hé 👋", "n": [1, 2]}),
    ]
    assert event_and_payload(inbox.got["cursor"]) == [("cursor", {"x": 10, "y": 20})]
    # self is off for the peer: it does not hear itself.
    await asyncio.sleep(QUIET)
    assert js_received(peer) == [], peer.describe()


async def test_binary_broadcast_from_js_is_not_sent_to_a_vsn1_client(make_client, room, js_peer):
    """A raw-binary kind-3 broadcast cannot be expressed in vsn 1: the Python client gets nothing for it
    (no frame it fails to parse either), while a vsn-2 client gets the bytes."""
    py = await make_client()
    inbox = await py_listener(py, room)
    sender = await js_peer(room)
    js_listener = await js_peer(room)

    assert await js_command(sender, {"op": "send", "id": 1, "event": "blob", "binary": [0, 1, 2, 254, 255]}) == "ok"
    assert await js_command(sender, {"op": "send", "id": 2, "event": "after", "payload": {"ok": True}}) == "ok"

    await wait_for(lambda: len(js_received(js_listener)) >= 2, message=js_listener.describe)
    assert js_received(js_listener)[0]["payload"] == {"binary": [0, 1, 2, 254, 255]}
    await wait_for(lambda: inbox.got["*"], message=lambda: f"python got {inbox.got}")
    await asyncio.sleep(QUIET)
    assert event_and_payload(inbox.got["*"]) == [("after", {"ok": True})]


async def test_supabase_js_receives_what_python_sends(make_client, room, js_peer):
    py = await make_client()
    sender = await py_listener(py, room, broadcast={"self": True})
    peer = await js_peer(room, {"broadcast": {"self": False}})

    await sender.channel.send_broadcast("cursor", {"x": 1, "y": 2})
    await sender.channel.send_broadcast("chat", {"text": "from python"})

    await wait_for(lambda: len(js_received(peer)) >= 2, message=peer.describe)
    assert js_received(peer) == [
        {"type": "broadcast", "event": "cursor", "payload": {"x": 1, "y": 2}},
        {"type": "broadcast", "event": "chat", "payload": {"text": "from python"}},
    ]
    # The Python sender joined with self: true, so it hears itself too.
    await wait_for(lambda: len(sender.got["*"]) >= 2, message=lambda: f"python got {sender.got}")
    assert event_and_payload(sender.got["*"]) == [("cursor", {"x": 1, "y": 2}), ("chat", {"text": "from python"})]

    # A second Python client with self off hears the JS peer but not itself.
    py2 = await make_client()
    other = await py_listener(py2, room)
    assert await js_command(peer, {"op": "send", "id": 1, "event": "reply", "payload": {"to": "py"}}) == "ok"
    await other.channel.send_broadcast("own", {"n": 1})
    await wait_for(lambda: len(js_received(peer)) >= 3, message=peer.describe)
    await wait_for(lambda: other.got["*"], message=lambda: f"python got {other.got}")
    await asyncio.sleep(QUIET)
    assert event_and_payload(other.got["*"]) == [("reply", {"to": "py"})]
    assert js_received(peer)[2] == {"type": "broadcast", "event": "own", "payload": {"n": 1}}


async def test_rest_broadcast_reaches_python_subscribers(roster, make_client, room, js_peer):
    py = await make_client()
    inbox = await py_listener(py, room, events=("*", "batch"))
    peer = await js_peer(room)

    # realtime-py's own REST send (POST .../api/broadcast/<topic>/events/<event>).
    await inbox.channel.http_send("single", {"via": "http_send"})
    await wait_for(lambda: inbox.got["*"], message=lambda: f"python got {inbox.got}")
    assert event_and_payload(inbox.got["*"]) == [("single", {"via": "http_send"})]

    # The batch endpoint, called directly; apikey header, then Bearer secret key.
    async with httpx.AsyncClient(timeout=5) as http:
        res = await http.post(
            f"{roster.url}/realtime/v1/api/broadcast",
            headers={"apikey": PUBLISHABLE_KEY},
            json={"messages": [
                {"topic": room, "event": "batch", "payload": {"n": 1}},
                {"topic": "some-other-room", "event": "batch", "payload": {"n": 99}},
                {"topic": room, "event": "batch", "payload": {"n": 2}},
            ]},
        )
        assert res.status_code == 202, res.text
        res = await http.post(
            f"{roster.url}/realtime/v1/api/broadcast/{room}/events/bearer",
            headers={"Authorization": f"Bearer {SECRET_KEY}"},
            json={"n": 3},
        )
        assert res.status_code == 202, res.text

    await wait_for(lambda: len(inbox.got["*"]) >= 4, message=lambda: f"python got {inbox.got}")
    await asyncio.sleep(QUIET)
    assert event_and_payload(inbox.got["*"]) == [
        ("single", {"via": "http_send"}),
        ("batch", {"n": 1}),
        ("batch", {"n": 2}),
        ("bearer", {"n": 3}),
    ]
    assert event_and_payload(inbox.got["batch"]) == [("batch", {"n": 1}), ("batch", {"n": 2})]
    # The JS peer in the same room saw the same REST broadcasts.
    await wait_for(lambda: len(js_received(peer)) >= 4, message=peer.describe)
    assert [(m["event"], m["payload"]) for m in js_received(peer)] == event_and_payload(inbox.got["*"])


async def test_binary_http_send_from_python_reaches_js_only(make_client, room, js_peer):
    py = await make_client()
    inbox = await py_listener(py, room)
    peer = await js_peer(room)

    await inbox.channel.http_send("raw", b"\x00\x01\xfe\xff")
    await inbox.channel.http_send("json", {"after": True})

    await wait_for(lambda: len(js_received(peer)) >= 2, message=peer.describe)
    assert js_received(peer) == [
        {"type": "broadcast", "event": "raw", "payload": {"binary": [0, 1, 254, 255]}},
        {"type": "broadcast", "event": "json", "payload": {"after": True}},
    ]
    await wait_for(lambda: inbox.got["*"], message=lambda: f"python got {inbox.got}")
    await asyncio.sleep(QUIET)
    assert event_and_payload(inbox.got["*"]) == [("json", {"after": True})]

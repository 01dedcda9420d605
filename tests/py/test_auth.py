"""realtime-py 2.34.1 channel auth: join errors for bad access tokens and private-channel
policies, token refresh with set_auth(), and the shutdown (system error + phx_close) at expiry."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest
from realtime import RealtimeSubscribeStates

from conftest import Recorder, start_roster, user_jwt, wait_for, without_refs

ALL = '["presence-read", "presence-write", "broadcast-read", "broadcast-write"]'
POLICIES = f"""
[[policies]]
topic = "user:{{sub}}"
role = "authenticated"
allow = {ALL}

[[policies]]
topic = "shared-*"
role = "authenticated"
allow = {ALL}
"""


@pytest.fixture(scope="module")
def roster():
    """This module's server (or cluster) has the private-channel policies above (overrides conftest's)."""
    server = start_roster(config=POLICIES)
    try:
        yield server
    finally:
        server.stop()


class AuthRecorder(Recorder):
    """Presence callbacks plus every subscribe-callback (status, error)."""

    def __init__(self, channel) -> None:
        super().__init__(channel)
        self.errors: list[Exception | None] = []

    def on_status(self, status, err) -> None:
        super().on_status(status, err)
        self.errors.append(err)

    def error_payload(self, status: str) -> dict[str, Any]:
        """The JSON realtime-py put in the Exception of the first `status` callback."""
        err = self.errors[self.statuses.index(status)]
        assert isinstance(err, Exception), f"{status} must carry an Exception, got {err!r}"
        return json.loads(str(err))


async def user_client(make_client, token: str):
    """A client on the publishable key whose channel access_token is `token` (as supabase-py sets it)."""
    client = await make_client()
    await client.set_auth(token)
    return client


async def subscribe(client, room: str, *, private: bool = False, key: str | None = None) -> AuthRecorder:
    """Subscribe with presence callbacks; returns once realtime-py reports the join result."""
    config: dict[str, Any] = {"broadcast": {"ack": False, "self": False}, "private": private}
    config["presence"] = {"key": key or "", "enabled": True}
    channel = client.channel(room, {"config": config})
    rec = AuthRecorder(channel)
    await asyncio.wait_for(channel.subscribe(rec.on_status), 10)
    return rec


async def joined(client, room: str, **kwargs) -> AuthRecorder:
    rec = await subscribe(client, room, **kwargs)
    assert rec.statuses == ["SUBSCRIBED"], f"{room}: {rec.statuses} {rec.errors}"
    await wait_for(lambda: rec.syncs(), message=f"no presence_state after joining {room}")
    return rec


async def join_error(client, room: str, **kwargs) -> str:
    """Subscribe, expect CHANNEL_ERROR as the first status, stop the rejoin timer; return the reason."""
    rec = await subscribe(client, room, **kwargs)
    assert rec.statuses == ["CHANNEL_ERROR"], f"{room}: {rec.statuses}"
    payload = rec.error_payload("CHANNEL_ERROR")
    assert list(payload) == ["reason"], payload
    assert rec.channel.is_errored
    await rec.channel.unsubscribe()
    return payload["reason"]


async def align_to_second() -> None:
    """Sleep to just past the next whole second, so `exp = now + n` leaves ~n full seconds."""
    await asyncio.sleep(1 - (time.time() % 1) + 0.02)


async def test_expired_token_gets_channel_error(make_client, room):
    client = await user_client(make_client, user_jwt("alice", expires_in=-30))
    reason = await join_error(client, room)
    m = re.fullmatch(r"InvalidJWTToken: Token has expired (\d+) seconds ago", reason)
    assert m, reason
    assert 30 <= int(m.group(1)) <= 40


async def test_malformed_token_gets_channel_error(make_client, room):
    client = await user_client(make_client, "this-is-not-a-jwt")
    assert await join_error(client, room) == "MalformedJWT: The token provided is not a valid JWT"


async def test_private_channel_without_policy_gets_unauthorized(make_client, room):
    alice = await user_client(make_client, user_jwt("alice"))
    assert await join_error(alice, "user:bob", private=True) == (
        "Unauthorized: You do not have permissions to read from this Channel topic: user:bob"
    )
    await joined(alice, "user:alice", private=True)

    # The publishable key alone (role anon) matches no policy; the public channel is open to it.
    anon = await make_client()
    topic = f"shared-{room}"
    assert await join_error(anon, topic, private=True) == (
        f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}"
    )
    await joined(anon, topic)


async def test_set_auth_keeps_channel_alive_past_first_expiry(make_client, room):
    topic = f"shared-{room}"
    await align_to_second()
    exp1 = int(time.time()) + 2
    alice = await user_client(make_client, user_jwt("alice", expires_in=exp1 - int(time.time())))
    bob = await user_client(make_client, user_jwt("bob"))

    ra = await joined(alice, topic, private=True, key="alice")
    await ra.channel.track({"who": "alice"})
    rb = await joined(bob, topic, private=True, key="bob")
    await wait_for(lambda: "alice" in rb.state(), message=lambda: f"bob state {rb.state()}")

    await alice.set_auth(user_jwt("alice", expires_in=60))

    await asyncio.sleep(max(0.0, exp1 + 1.5 - time.time()))
    assert ra.statuses == ["SUBSCRIBED"], f"alice's channel must stay subscribed: {ra.statuses} {ra.errors}"
    assert ra.channel.is_joined
    assert without_refs(rb.state()) == {"alice": [{"who": "alice"}]}
    assert rb.leaves("alice") == []

    # Still fully usable: a presence update reaches bob.
    await ra.channel.track({"who": "alice", "again": True})
    await wait_for(lambda: without_refs(rb.state()) == {"alice": [{"who": "alice", "again": True}]})


async def test_channel_is_closed_at_expiry_without_refresh(make_client, room):
    topic = f"shared-{room}"
    await align_to_second()
    exp = int(time.time()) + 2
    alice = await user_client(make_client, user_jwt("alice", expires_in=exp - int(time.time())))
    bob = await user_client(make_client, user_jwt("bob"))

    ra = await joined(alice, topic, private=True, key="alice")
    await ra.channel.track({"who": "alice"})
    rb = await joined(bob, topic, private=True, key="bob")
    await wait_for(lambda: "alice" in rb.state())

    await wait_for(lambda: "CLOSED" in ra.statuses, timeout=6, message=lambda: f"alice statuses {ra.statuses}")
    assert time.time() >= exp
    # realtime-py turns the `system` error into CHANNEL_ERROR, then phx_close into CLOSED.
    assert ra.statuses == ["SUBSCRIBED", "CHANNEL_ERROR", "CLOSED"]
    system = ra.error_payload("CHANNEL_ERROR")
    message = system.pop("message")
    assert system == {"channel": topic, "extension": "system", "status": "error"}
    assert re.fullmatch(r"Token has expired \d+ seconds ago", message), message
    assert ra.channel.is_closed
    assert ra.channel.topic not in alice.channels

    # Bob sees alice leave; his own channel is unaffected.
    await wait_for(lambda: rb.leaves("alice"), message=lambda: f"bob events {rb.events}")
    assert without_refs(rb.state()) == {}
    assert rb.statuses == ["SUBSCRIBED"]

    # No rejoin afterwards (the CHANNEL_ERROR's rejoin timer was reset by the close).
    await asyncio.sleep(1.3)
    assert ra.statuses == ["SUBSCRIBED", "CHANNEL_ERROR", "CLOSED"]
    assert "alice" not in rb.state()

"""A supabase-js peer (vsn 2.0.0, spawned with node) and a realtime-py client (vsn 1.0.0) in one room."""

from __future__ import annotations

import json

import pytest

from conftest import assert_presence_objects, join_room, node_url_for, wait_for, without_refs


@pytest.fixture
def node_peer(roster, spawn_node):
    async def start(room: str, key: str, payload: dict):
        # On a cluster: the next node round-robin, after the test's earlier clients.
        return await spawn_node("presence-peer.js", node_url_for(roster.url), room, key, json.dumps(payload))

    return start


async def test_js_and_python_clients_see_each_other_in_one_room(make_client, room, node_peer):
    py = await make_client()
    rp = await join_room(py, room, key="py-peer")
    await rp.channel.track({"lang": "py"})
    await wait_for(lambda: "py-peer" in rp.state())

    peer = await node_peer(room, "js-peer", {"lang": "js"})
    await wait_for(
        lambda: any(l.get("type") == "tracked" for l in peer.lines),
        timeout=15,
        message=peer.describe,
    )
    assert [l["status"] for l in peer.lines if l.get("type") == "tracked"] == ["ok"], peer.describe()

    expected = {"js-peer": [{"lang": "js"}], "py-peer": [{"lang": "py"}]}
    # Python sees the JS peer ...
    await wait_for(lambda: without_refs(rp.state()) == expected, message=lambda: f"python state {rp.state()}")
    js_join = rp.joins("js-peer")
    assert js_join and js_join[0]["current"] == [] and without_refs({"k": js_join[0]["new"]}) == {"k": [{"lang": "js"}]}
    # ... and the JS peer sees the Python client (and itself).
    await wait_for(
        lambda: peer.last_state() is not None and without_refs(peer.last_state()) == expected,
        message=peer.describe,
    )
    # Both views carry the same server refs.
    js_state = peer.last_state()
    for key in expected:
        assert_presence_objects(js_state[key], f"js view {key}")
    assert js_state == rp.state()

    # Python untracks: the JS peer sees py-peer go.
    await rp.channel.untrack()
    await wait_for(
        lambda: without_refs(peer.last_state() or {}) == {"js-peer": [{"lang": "js"}]},
        message=peer.describe,
    )
    assert any(l.get("type") == "leave" and l.get("key") == "py-peer" for l in peer.lines)

    # The JS peer exits: Python sees js-peer leave.
    assert await peer.close() == 0, peer.describe()
    left = await wait_for(lambda: rp.leaves("js-peer"), message=lambda: f"python events {rp.events}")
    assert without_refs({"k": left[0]["left"]}) == {"k": [{"lang": "js"}]}
    assert left[0]["current"] == []
    await wait_for(lambda: rp.state() == {})

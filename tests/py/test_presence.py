"""realtime-py 2.34.1 (vsn 1.0.0) presence against a real roster."""

from __future__ import annotations

import asyncio
import logging

from conftest import (
    UUID_V1,
    assert_presence_objects,
    join_room,
    wait_for,
    without_refs,
)


async def test_sync_join_leave_callbacks_fire_with_key_current_and_new_or_left(make_client, room):
    a = await make_client()
    b = await make_client()
    ra = await join_room(a, room, key="alice")
    # The first sync comes from the (empty) presence_state after the join.
    assert ra.events[0] == {"event": "sync", "state": {}}

    await ra.channel.track({"user": "alice", "n": 1})
    own = await wait_for(lambda: ra.joins("alice"), message=lambda: f"events {ra.events}")
    assert own[0]["current"] == []
    assert len(own[0]["new"]) == 1
    assert_presence_objects(own[0]["new"], "own join")
    alice_ref = own[0]["new"][0]["presence_ref"]
    assert own[0]["new"] == [{"presence_ref": alice_ref, "user": "alice", "n": 1}]
    assert ra.syncs()[-1]["state"] == {"alice": [{"presence_ref": alice_ref, "user": "alice", "n": 1}]}

    # A late joiner learns about alice from the snapshot: join(alice, [], [meta]) and a sync.
    rb = await join_room(b, room, key="bob")
    b_alice = await wait_for(lambda: rb.joins("alice"))
    assert b_alice[0] == {
        "event": "join",
        "key": "alice",
        "current": [],
        "new": [{"presence_ref": alice_ref, "user": "alice", "n": 1}],
    }
    assert rb.syncs()[0]["state"] == {"alice": [{"presence_ref": alice_ref, "user": "alice", "n": 1}]}

    await rb.channel.track({"user": "bob"})
    a_bob = await wait_for(lambda: ra.joins("bob"), message=lambda: f"events {ra.events}")
    assert a_bob[0]["current"] == []
    assert_presence_objects(a_bob[0]["new"], "bob join")
    bob_ref = a_bob[0]["new"][0]["presence_ref"]
    assert bob_ref != alice_ref
    assert a_bob[0]["new"] == [{"presence_ref": bob_ref, "user": "bob"}]
    b_own = await wait_for(lambda: rb.joins("bob"))
    assert b_own[0]["new"] == [{"presence_ref": bob_ref, "user": "bob"}]

    # B closes its socket: A gets leave(bob, [], [bob meta]) and a sync without bob.
    await b.close()
    left = await wait_for(lambda: ra.leaves("bob"), message=lambda: f"events {ra.events}")
    assert left[0] == {
        "event": "leave",
        "key": "bob",
        "current": [],
        "left": [{"presence_ref": bob_ref, "user": "bob"}],
    }
    assert ra.syncs()[-1]["state"] == {"alice": [{"presence_ref": alice_ref, "user": "alice", "n": 1}]}
    for e in ra.events + rb.events:
        for field in ("current", "new", "left"):
            if field in e:
                assert_presence_objects(e[field], f"{e['event']}.{field}")


async def test_presence_state_shape_is_key_to_list_of_presence_ref_and_fields(make_client, room):
    a = await make_client()
    b = await make_client()
    ra = await join_room(a, room, key="alice")
    rb = await join_room(b, room, key="bob")
    payload = {
        "online_at": "2026-05-01T10:00:05",
        "profile": {"name": "Alice", "tags": ["x", "y"]},
        "count": 3,
        "ratio": 0.5,
        "active": True,
        "nothing": None,
        "text": 'héllo ✓ "quoted"',
    }
    await ra.channel.track(payload)
    await wait_for(lambda: "alice" in rb.state() and "alice" in ra.state())
    for state in (ra.state(), rb.state()):
        assert list(state) == ["alice"]
        assert len(state["alice"]) == 1
        assert_presence_objects(state["alice"], "presence_state()")
        fields = {k: v for k, v in state["alice"][0].items() if k != "presence_ref"}
        assert fields == payload
    assert ra.state()["alice"][0]["presence_ref"] == rb.state()["alice"][0]["presence_ref"]


async def test_track_then_untrack_fires_leave_and_removes_the_key(make_client, room):
    a = await make_client()
    b = await make_client()
    ra = await join_room(a, room, key="alice")
    rb = await join_room(b, room, key="bob")
    await ra.channel.track({"status": "online"})
    await wait_for(lambda: "alice" in rb.state())
    meta = rb.state()["alice"][0]

    await ra.channel.untrack()
    left = await wait_for(lambda: rb.leaves("alice"), message=lambda: f"events {rb.events}")
    assert left[0]["current"] == []
    assert left[0]["left"] == [meta]
    await wait_for(lambda: "alice" not in rb.state() and "alice" not in ra.state())
    assert rb.state() == {}
    assert ra.channel.is_joined
    # Tracking again after an untrack works and is seen again.
    await ra.channel.track({"status": "back"})
    await wait_for(lambda: rb.state().get("alice", [{}])[0].get("status") == "back")


async def test_retrack_with_new_payload_updates_the_single_meta(make_client, room):
    a = await make_client()
    b = await make_client()
    ra = await join_room(a, room, key="alice")
    rb = await join_room(b, room, key="bob")
    await ra.channel.track({"status": "online"})
    await wait_for(lambda: "alice" in rb.state())
    first = rb.state()["alice"][0]

    await ra.channel.track({"status": "away"})
    await wait_for(lambda: any(p["status"] == "away" for p in rb.state().get("alice", [])))
    await asyncio.sleep(0.2)
    after = rb.state()["alice"]
    assert len(after) == 1, f"one meta expected after update: {rb.state()}"
    assert after[0]["status"] == "away"
    assert after[0]["presence_ref"] != first["presence_ref"]
    # The update is a join of the new meta plus a leave of the old one, for the same key.
    assert any(p["status"] == "away" for e in rb.joins("alice") for p in e["new"])
    old_leave = rb.leaves("alice")
    assert old_leave and old_leave[0]["left"] == [first]
    assert old_leave[0]["current"] == after
    assert without_refs(ra.state()) == {"alice": [{"status": "away"}]}


async def test_custom_key_from_config_is_the_presence_key(make_client, room):
    a = await make_client()
    b = await make_client()
    ra = await join_room(a, room, key="carol")
    rb = await join_room(b, room)  # observer without a key
    await ra.channel.track({"who": "a"})
    joined = await wait_for(lambda: [e for e in rb.joins() if any(p.get("who") == "a" for p in e["new"])])
    assert joined[0]["key"] == "carol"
    assert list(rb.state()) == ["carol"]


async def test_default_keys_are_distinct_uuid_v1(make_client, room):
    a = await make_client()
    b = await make_client()
    ra = await join_room(a, room)
    rb = await join_room(b, room)
    await ra.channel.track({"who": "a"})
    await rb.channel.track({"who": "b"})
    await wait_for(lambda: len(ra.state()) == 2 and len(rb.state()) == 2, message=lambda: f"{ra.state()} / {rb.state()}")

    def key_of(state, who):
        return next(k for k, ps in state.items() if any(p.get("who") == who for p in ps))

    key_a, key_b = key_of(ra.state(), "a"), key_of(ra.state(), "b")
    assert UUID_V1.match(key_a), key_a
    assert UUID_V1.match(key_b), key_b
    assert key_a != key_b
    assert key_of(rb.state(), "a") == key_a and key_of(rb.state(), "b") == key_b


async def test_unsubscribe_fires_leave_on_the_other_client(make_client, room):
    a = await make_client()
    b = await make_client()
    ra = await join_room(a, room, key="alice")
    rb = await join_room(b, room, key="bob")
    await rb.channel.track({"v": 2})
    await wait_for(lambda: "bob" in ra.state())
    meta = ra.state()["bob"][0]
    await rb.channel.unsubscribe()
    left = await wait_for(lambda: ra.leaves("bob"))
    assert left[0]["left"] == [meta]
    assert ra.state() == {}
    await wait_for(lambda: rb.channel.is_closed)


async def test_late_joiner_receives_the_full_state(make_client, room):
    recs = []
    for key in ("m1", "m2", "m3"):
        c = await make_client()
        r = await join_room(c, room, key=key)
        await r.channel.track({"name": key})
        recs.append(r)
    await wait_for(lambda: len(recs[0].state()) == 3)
    late = await make_client()
    rl = await join_room(late, room, key="late")
    first = rl.syncs()[0]["state"]
    assert without_refs(first) == {"m1": [{"name": "m1"}], "m2": [{"name": "m2"}], "m3": [{"name": "m3"}]}
    assert first == recs[0].state()
    assert sorted(e["key"] for e in rl.joins()) == ["m1", "m2", "m3"]


async def test_full_session_logs_no_unrecognized_message_format(make_client, room, caplog):
    """Join, track, update, untrack, leave and close: every server frame parses in realtime-py."""
    caplog.set_level(logging.DEBUG, logger="realtime")
    a = await make_client()
    b = await make_client()
    ra = await join_room(a, room, key="alice")
    rb = await join_room(b, room)
    await ra.channel.track({"s": 1})
    await ra.channel.track({"s": 2})
    await rb.channel.track({"s": 3})
    await wait_for(lambda: len(ra.state()) == 2 and ra.state()["alice"][0]["s"] == 2)
    await ra.channel.untrack()
    await wait_for(lambda: "alice" not in rb.state())
    await rb.channel.unsubscribe()
    await wait_for(lambda: len(ra.state()) == 0)
    # (Closing the client is covered by its own test below.)
    # realtime-py logged the frames it received (so the check below is meaningful).
    received = [r.getMessage() for r in caplog.records if r.getMessage().startswith("receive:")]
    assert any("presence_state" in m for m in received)
    assert any("presence_diff" in m for m in received)
    assert any('"topic":"phoenix"' in m.replace(" ", "") for m in received), "heartbeat reply expected"
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Unrecognized message format" in m]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("realtime")]
    assert not errors, errors


async def test_client_close_is_a_clean_websocket_close_and_does_not_reconnect(make_client, room, caplog):
    """realtime-py's close() sends a Close frame; the server must answer with a Close frame
    (RFC 6455 §5.5.1). Otherwise websockets reports 1006, realtime-py logs an ERROR and
    starts its auto-reconnect on a client that was just closed."""
    a = await make_client()
    b = await make_client()
    ra = await join_room(a, room, key="alice")
    rb = await join_room(b, room, key="bob")
    await ra.channel.track({"v": 1})
    await wait_for(lambda: "alice" in rb.state())
    await a.close()
    await wait_for(lambda: rb.leaves("alice"))
    await asyncio.sleep(0.5)
    errors = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("realtime")
    ]
    assert not errors, errors
    assert a._ws_connection is None, "the closed client reconnected by itself"


async def test_a_room_whose_snapshot_is_over_the_1_mib_frame_limit_still_reaches_a_late_joiner(make_client, room):
    """realtime-py's WebSocket refuses frames over 1 MiB (and closes with 1009).
    A 1.2 MB state reaches it as a presence_state and presence_diffs that add up."""
    n = 40
    blob = "q" * (30 * 1024)
    members = []
    for i in range(n):
        c = await make_client()
        r = await join_room(c, room, key=f"m{i}")
        await r.channel.track({"i": i, "blob": blob})
        members.append(r)
    await wait_for(lambda: len(members[-1].channel.presence.state) == n, timeout=20)

    late = await make_client()
    rl = await join_room(late, room, key="late")
    state = await wait_for(
        lambda: rl.channel.presence.state if len(rl.channel.presence.state) == n else None,
        timeout=20,
        message=lambda: f"late joiner sees {len(rl.channel.presence.state)} of {n}",
    )
    assert sorted(state) == sorted(f"m{i}" for i in range(n))
    assert all(len(metas) == 1 and metas[0]["blob"] == blob for metas in state.values())
    # Still connected: its own track reaches a member.
    await rl.channel.track({"late": True})
    await wait_for(lambda: "late" in members[0].channel.presence.state, timeout=10)

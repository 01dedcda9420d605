"""Replace ("quiet") updates with realtime-py unchanged, in one room with a supabase-js peer:
a member joined with config.presence.updates = "replace" updates with one join and no leave;
a classic member in the same room keeps Supabase's join + leave under a new ref."""

from __future__ import annotations

import json

from conftest import join_room, node_url_for, wait_for


async def test_a_replace_update_is_one_join_and_no_leave_for_python_and_js(make_client, room, spawn_node, roster):
    watcher = await join_room(await make_client(), room, key="py-watcher")
    quiet = await join_room(await make_client(), room, key="quiet", updates="replace")
    classic = await join_room(await make_client(), room, key="classic", updates="classic")
    peer = await spawn_node("presence-peer.js", node_url_for(roster.url), room, "js-peer", json.dumps({"lang": "js"}))
    await wait_for(lambda: any(l.get("type") == "tracked" for l in peer.lines), timeout=15, message=peer.describe)

    await quiet.channel.track({"s": "online"})
    await classic.channel.track({"s": "online"})
    await wait_for(lambda: "quiet" in watcher.state() and "classic" in watcher.state())
    quiet_ref = watcher.state()["quiet"][0]["presence_ref"]
    classic_ref = watcher.state()["classic"][0]["presence_ref"]
    await wait_for(
        lambda: {"quiet", "classic"} <= set(peer.last_state() or {}), message=peer.describe
    )
    seen = len(watcher.events)
    js_seen = len(peer.lines)

    await quiet.channel.track({"s": "away"})
    # The two updates come from different sockets, so nothing orders them on the server:
    # let both watchers see the quiet one before the classic one is sent.
    await wait_for(lambda: watcher.state()["quiet"][0].get("s") == "away", message=lambda: f"events {watcher.events[seen:]}")
    await wait_for(
        lambda: ((peer.last_state() or {}).get("quiet") or [{}])[0].get("s") == "away", message=peer.describe
    )
    await classic.channel.track({"s": "away"})
    await wait_for(lambda: watcher.leaves("classic"), message=lambda: f"events {watcher.events[seen:]}")

    after = [e for e in watcher.events[seen:] if e["event"] != "sync"]
    assert [e for e in after if e["key"] == "quiet"] == [
        {
            "event": "join",
            "key": "quiet",
            "current": [{"s": "online", "presence_ref": quiet_ref}],
            "new": [{"s": "away", "presence_ref": quiet_ref}],
        }
    ]
    classic_events = [e for e in after if e["key"] == "classic"]
    assert [e["event"] for e in classic_events] == ["join", "leave"]
    new_classic_ref = classic_events[0]["new"][0]["presence_ref"]
    assert new_classic_ref != classic_ref
    assert classic_events[1]["left"] == [{"s": "online", "presence_ref": classic_ref}]
    assert watcher.state()["quiet"] == [{"s": "away", "presence_ref": quiet_ref}]
    assert watcher.state()["classic"] == [{"s": "away", "presence_ref": new_classic_ref}]

    # The supabase-js peer in the same room: one join, no leave for quiet; join + leave for classic.
    def js_events():
        return [l for l in peer.lines[js_seen:] if l.get("type") in ("join", "leave")]

    await wait_for(lambda: any(l["type"] == "leave" and l["key"] == "classic" for l in js_events()), message=peer.describe)
    assert [(l["type"], l["key"]) for l in js_events()] == [("join", "quiet"), ("join", "classic"), ("leave", "classic")]
    js_quiet = [l for l in js_events() if l["key"] == "quiet"][0]
    assert js_quiet["currentPresences"] == [{"presence_ref": quiet_ref, "s": "online"}]
    assert js_quiet["newPresences"] == [{"presence_ref": quiet_ref, "s": "away"}]
    await wait_for(lambda: (peer.last_state() or {}).get("quiet") == [{"presence_ref": quiet_ref, "s": "away"}])
    assert peer.last_state() == watcher.state()
    assert await peer.close() == 0, peer.describe()

"""A supabase-js peer (vsn 2.0.0, spawned with node) and a realtime-py client (vsn 1.0.0) in one room."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT, assert_presence_objects, join_room, wait_for, without_refs

PEER = REPO_ROOT / "tests" / "js" / "helpers" / "presence-peer.js"


class NodePeer:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict] = []
        self.stderr = b""
        self._reader = asyncio.create_task(self._read())
        self._err_reader = asyncio.create_task(self._read_err())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                self.lines.append(json.loads(raw))
            except json.JSONDecodeError:
                self.lines.append({"type": "garbage", "line": raw.decode(errors="replace")})

    async def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    def last_state(self) -> dict | None:
        syncs = [l for l in self.lines if l.get("type") == "sync"]
        return syncs[-1]["state"] if syncs else None

    def describe(self) -> str:
        return f"peer lines: {self.lines}\npeer stderr: {self.stderr.decode(errors='replace')[-2000:]}"

    async def close(self) -> int:
        if self.proc.stdin and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            return await asyncio.wait_for(self.proc.wait(), 8)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            for t in (self._reader, self._err_reader):
                t.cancel()


@pytest.fixture
async def node_peer(roster):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required for the mixed-room test")
    if not (REPO_ROOT / "tests" / "js" / "node_modules" / "@supabase" / "supabase-js").exists():
        pytest.fail("run `npm ci` in tests/js first")
    peers: list[NodePeer] = []

    async def start(room: str, key: str, payload: dict) -> NodePeer:
        proc = await asyncio.create_subprocess_exec(
            node, str(PEER), roster.url, room, key, json.dumps(payload),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(PEER.parent),
        )
        peer = NodePeer(proc)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        try:
            await peer.close()
        except Exception:
            pass


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

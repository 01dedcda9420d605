"""Shared fixtures for the realtime-py (2.34.1) tests against a real roster.

The server contract: ``$ROSTER_BIN serve --listen 127.0.0.1:0`` prints
``roster listening on http://127.0.0.1:PORT`` (https:// with --tls-cert) on stdout once bound.

Cluster mode (env ``ROSTER_TEST_CLUSTER=1``; mirrors tests/js/helpers/server.js):
``start_roster()`` starts one redis-server on a free port and ``CLUSTER_NODES``
roster nodes sharing it (``--redis``, ``--node-name nodeN``), each with the
settings a single server would get. The handle keeps the single-server
attributes (``url``, ``port``, ``realtime_url``, ``proc`` are node 1's) and adds
``urls``, ``ports``, ``realtime_urls``, ``nodes`` and ``redis``. Clients made
with ``make_client`` (and node peers given ``node_url_for(roster.url)``) are
spread over the nodes round-robin, starting again at node 1 in every test, so
the clients of one test sit on different nodes without the tests knowing.

With ``ROSTER_TEST_CLUSTER=redis-cluster`` every cluster runs on a Redis
Cluster instead: 3 masters (no replicas) on free ports, made with
``redis-cli --cluster create``, the nodes started with ``--redis-cluster``.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import hashlib
import hmac
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from realtime import AsyncRealtimeClient

REPO_ROOT = Path(__file__).resolve().parents[2]
ROSTER_BIN = os.environ.get("ROSTER_BIN") or str(REPO_ROOT / "target" / "debug" / "roster")
PUBLISHABLE_KEY = "sb_publishable_test"
SECRET_KEY = "sb_secret_test"
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123"
UUID_V1 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-1[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
LISTEN_RE = re.compile(r"roster listening on (https?://127\.0\.0\.1:(\d+))")

_CLUSTER_MODE = os.environ.get("ROSTER_TEST_CLUSTER", "").lower()
REDIS_CLUSTER = _CLUSTER_MODE == "redis-cluster"
"""Clusters run on a Redis Cluster (ROSTER_TEST_CLUSTER=redis-cluster), not one redis-server."""
CLUSTER = _CLUSTER_MODE in ("1", "true", "yes") or REDIS_CLUSTER
"""True when the suite runs against a cluster (ROSTER_TEST_CLUSTER=1 or redis-cluster)."""
CLUSTER_NODES = 3
REDIS_SERVER_BIN = os.environ.get("REDIS_SERVER_BIN") or "redis-server"
REDIS_CLI_BIN = os.environ.get("REDIS_CLI_BIN") or "redis-cli"
# Faster cluster timings than the defaults, so dead nodes are noticed within the test timeouts.
CLUSTER_TIMING_ARGS = [
    "--cluster-heartbeat-ms", "200",
    "--cluster-lease-ms", "1200",
    "--cluster-reap-grace-ms", "200",
    "--cluster-settle-ms", "800",
]

_live: set[subprocess.Popen] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        if proc.poll() is None:
            proc.kill()


class RosterServer:
    """A running roster process; `url` is the project URL."""

    cluster = False

    def __init__(
        self,
        port: int = 0,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        config: str | None = None,
    ) -> None:
        """`args` are extra `serve` flags; `config` is TOML text passed with `--config`."""
        if not Path(ROSTER_BIN).exists():
            raise RuntimeError(f"roster binary not found at {ROSTER_BIN} (set ROSTER_BIN or build it)")
        self._env_extra = env or {}
        self._args = list(args or [])
        self._config_dir: str | None = None
        if config is not None:
            self._config_dir = tempfile.mkdtemp(prefix="roster-test-")
            config_path = Path(self._config_dir) / "roster.toml"
            config_path.write_text(config)
            self._args += ["--config", str(config_path)]
        self._output: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        self.port = 0
        full_env = {
            **os.environ,
            "ROSTER_PUBLISHABLE_KEY": PUBLISHABLE_KEY,
            "ROSTER_SECRET_KEY": SECRET_KEY,
            "ROSTER_JWT_SECRET": JWT_SECRET,
            "ROSTER_LOG": "info",
            **self._env_extra,
        }
        self.proc = subprocess.Popen(
            [ROSTER_BIN, "serve", "--listen", f"127.0.0.1:{port}", *self._args],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        _live.add(self.proc)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 10
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"roster did not start listening within 10 s:\n{self.logs()}")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._output.append(line)
            if not self._listening.is_set():
                m = LISTEN_RE.search(line)
                if m:
                    self.url, self.port = m.group(1), int(m.group(2))
                    self._listening.set()

    @property
    def realtime_url(self) -> str:
        return f"{self.url}/realtime/v1"

    @property
    def urls(self) -> list[str]:
        return [self.url]

    @property
    def realtime_urls(self) -> list[str]:
        return [self.realtime_url]

    def logs(self) -> str:
        return "".join(self._output)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 3 s."""
        _stop_process(self.proc)
        if self._config_dir:
            shutil.rmtree(self._config_dir, ignore_errors=True)


def _stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 3 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    _live.discard(proc)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_port() -> int:
    """A free port for a Redis Cluster node: the node also listens on port + 10,000 (its
    cluster bus), so the port must be at most 55,535 and both must be free. Drawn below
    the kernel's ephemeral range so that a port 0 bind elsewhere rarely takes it meanwhile."""
    while True:
        port = random.randrange(20000, 30000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def redis_ping(port: int) -> bool:
    """True when a Redis on `port` answers `PING` with `+PONG` (raw RESP over TCP)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
            return reply.startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throwaway redis-server (no persistence) on a free port; `url` is its redis:// URL."""

    def __init__(self, extra_args: list[str] | None = None) -> None:
        last_err: Exception | None = None
        for _ in range(3):  # the free port may be taken meanwhile
            try:
                cluster_node = "--cluster-enabled" in (extra_args or [])
                self._start(free_cluster_port() if cluster_node else free_port(), extra_args or [])
                return
            except FileNotFoundError as err:
                raise RuntimeError(
                    f"cannot start {REDIS_SERVER_BIN} ({err}): cluster mode needs redis-server "
                    "(apt-get install redis-server, or set REDIS_SERVER_BIN)"
                ) from err
            except RuntimeError as err:
                last_err = err
        assert last_err is not None
        raise last_err

    def _start(self, port: int, extra_args: list[str]) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}"
        self._output: list[str] = []
        cluster_args = [a.replace("{port}", str(port)) for a in extra_args]
        self.proc = subprocess.Popen(
            # --dir and --dbfilename: never load (or write) a dump.rdb of the working directory.
            [REDIS_SERVER_BIN, "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
             "--dir", tempfile.gettempdir(), "--dbfilename", f"roster-test-{os.getpid()}-{port}.rdb", *cluster_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        _live.add(self.proc)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 10
        while not redis_ping(port):
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server on port {port} exited early (code {self.proc.returncode}):\n{self.logs()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {port} did not answer PING within 10 s:\n{self.logs()}")
            time.sleep(0.05)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._output.append(line)

    def logs(self) -> str:
        return "".join(self._output)

    def stop(self) -> None:
        _stop_process(self.proc)


class RedisCluster:
    """A throwaway Redis Cluster: `masters` redis-servers with `--cluster-enabled yes` (no
    replicas, no persistence), joined with `redis-cli --cluster create`; `seeds` is the
    `--redis-cluster` value."""

    cluster = True

    def __init__(self, masters: int = 3) -> None:
        self._dir = tempfile.mkdtemp(prefix="roster-redis-cluster-")
        self.servers: list[RedisServer] = []
        try:
            for _ in range(masters):
                self.servers.append(
                    RedisServer(
                        [
                            "--cluster-enabled", "yes",
                            "--cluster-config-file", os.path.join(self._dir, "nodes-{port}.conf"),
                            "--cluster-node-timeout", "1000",
                            "--dir", self._dir,
                        ]
                    )
                )
            addrs = [f"127.0.0.1:{r.port}" for r in self.servers]
            subprocess.run(
                [REDIS_CLI_BIN, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=30,
            )
            deadline = time.monotonic() + 20
            for r in self.servers:
                while True:
                    info = subprocess.run(
                        [REDIS_CLI_BIN, "-p", str(r.port), "cluster", "info"], capture_output=True, text=True, timeout=5
                    ).stdout
                    if "cluster_state:ok" in info:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"redis cluster node {r.port} not ok within 20 s:\n{info}")
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        self.seeds = ",".join(r.url for r in self.servers)
        self.url = self.seeds

    def logs(self) -> str:
        return "\n".join(f"--- redis {r.port} ---\n{r.logs()}" for r in self.servers)

    def stop(self) -> None:
        for r in self.servers:
            r.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


# Running clusters by their primary (node 1) URL, for node_url_for().
_clusters: dict[str, "RosterCluster"] = {}


class RosterCluster:
    """A redis-server and `nodes` roster nodes sharing it. Same attributes as RosterServer
    (pointing at node 1) plus `urls`, `ports`, `realtime_urls`, `nodes` and `redis`."""

    cluster = True

    def __init__(
        self,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        config: str | None = None,
        nodes: int = CLUSTER_NODES,
    ) -> None:
        self.redis: RedisServer | RedisCluster = RedisCluster() if REDIS_CLUSTER else RedisServer()
        redis_args = ["--redis-cluster", self.redis.seeds] if REDIS_CLUSTER else ["--redis", self.redis.url]
        self.nodes: list[RosterServer] = []
        try:
            for i in range(nodes):
                node_args = [*(args or []), *redis_args, "--node-name", f"node{i + 1}", *CLUSTER_TIMING_ARGS]
                self.nodes.append(RosterServer(env=env, args=node_args, config=config))
        except BaseException:
            for node in self.nodes:
                node.stop()
            self.redis.stop()
            raise
        self.urls = [n.url for n in self.nodes]
        self.ports = [n.port for n in self.nodes]
        self.url, self.port, self.proc = self.urls[0], self.ports[0], self.nodes[0].proc
        self._next = 0
        _clusters[self.url] = self

    @property
    def realtime_url(self) -> str:
        return f"{self.url}/realtime/v1"

    @property
    def realtime_urls(self) -> list[str]:
        return [f"{u}/realtime/v1" for u in self.urls]

    def next_url(self) -> str:
        """The next node's project URL, round-robin."""
        url = self.urls[self._next % len(self.urls)]
        self._next += 1
        return url

    def reset_round_robin(self) -> None:
        self._next = 0

    def logs(self) -> str:
        parts = [f"----- node{i + 1} ({n.url}) -----\n{n.logs()}" for i, n in enumerate(self.nodes)]
        return "\n".join(parts) + f"\n----- redis ({self.redis.url}) -----\n{self.redis.logs()}"

    def stop(self) -> None:
        """Stop every node (in parallel), then Redis."""
        if _clusters.get(self.url) is self:
            del _clusters[self.url]
        threads = [threading.Thread(target=n.stop) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.redis.stop()


def start_roster(cluster: bool = CLUSTER, **kwargs: Any) -> RosterServer | RosterCluster:
    """A RosterServer, or with `cluster` (default: ROSTER_TEST_CLUSTER) a RosterCluster; same kwargs."""
    return RosterCluster(**kwargs) if cluster else RosterServer(**kwargs)


def node_url_for(url: str) -> str:
    """The project URL a new client of `url` should use: the next node round-robin when `url`
    is a running cluster's `url`, else `url` itself."""
    cluster = _clusters.get(url)
    return cluster.next_url() if cluster else url


@pytest.fixture(autouse=True)
def _node_round_robin():
    """Every test's clients start again at a cluster's node 1."""
    for cluster in list(_clusters.values()):
        cluster.reset_round_robin()
    yield


def pytest_report_header(config):
    if REDIS_CLUSTER:
        return f"roster: {CLUSTER_NODES}-node cluster on a 3-master Redis Cluster (ROSTER_TEST_CLUSTER=redis-cluster)"
    if CLUSTER:
        return f"roster: {CLUSTER_NODES}-node cluster sharing one {REDIS_SERVER_BIN} (ROSTER_TEST_CLUSTER=1)"
    return "roster: single server"


@pytest.fixture(scope="module")
def roster():
    server = start_roster()
    try:
        yield server
    finally:
        server.stop()


def make_jwt(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    """An HS256 JWT over `claims`, signed with the test server's JWT secret."""

    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


def user_jwt(sub: str = "user", role: str = "authenticated", expires_in: int = 3600, **claims: Any) -> str:
    """A user token: `role`, `sub` and `exp` = now + `expires_in` seconds (negative = already expired)."""
    now = int(time.time())
    return make_jwt({"sub": sub, "role": role, "iat": now + min(0, expires_in) - 1, "exp": now + expires_in, **claims})


@pytest.fixture
def room() -> str:
    return f"room-{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _no_unrecognized_frames(caplog):
    """realtime-py logs and drops every server frame its models reject."""
    caplog.set_level(logging.DEBUG, logger="realtime")
    yield
    bad = [r.getMessage() for r in caplog.records if "Unrecognized message format" in r.getMessage()]
    assert not bad, "realtime-py could not parse server frames:\n" + "\n".join(bad)


@pytest.fixture
async def make_client(roster):
    """Factory for connected AsyncRealtimeClients; all are closed at teardown.
    On a cluster, each new client goes to the next node round-robin (see node_url_for)."""
    clients: list[AsyncRealtimeClient] = []

    async def make(**kwargs: Any) -> AsyncRealtimeClient:
        client = AsyncRealtimeClient(f"{node_url_for(roster.url)}/realtime/v1", PUBLISHABLE_KEY, **kwargs)
        await asyncio.wait_for(client.connect(), 10)
        clients.append(client)
        return client

    yield make
    for client in clients:
        try:
            await asyncio.wait_for(client.close(), 5)
        except Exception:
            pass


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str | Callable[[], str] | None = None,
) -> Any:
    """Poll `predicate` (sync or async) until truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            msg = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s: {msg or predicate}")
        await asyncio.sleep(interval)


class Recorder:
    """Presence callbacks of one channel, recorded in order (deep copies)."""

    def __init__(self, channel) -> None:
        self.channel = channel
        self.events: list[dict[str, Any]] = []
        self.statuses: list[str] = []
        channel.on_presence_sync(self._on_sync)
        channel.on_presence_join(self._on_join)
        channel.on_presence_leave(self._on_leave)

    @staticmethod
    def _copy(value: Any) -> Any:
        return json.loads(json.dumps(value))

    def _on_sync(self) -> None:
        self.events.append({"event": "sync", "state": self._copy(self.channel.presence_state())})

    def _on_join(self, key, current, new) -> None:
        self.events.append({"event": "join", "key": key, "current": self._copy(current), "new": self._copy(new)})

    def _on_leave(self, key, current, left) -> None:
        self.events.append({"event": "leave", "key": key, "current": self._copy(current), "left": self._copy(left)})

    def on_status(self, status, err) -> None:
        self.statuses.append(str(getattr(status, "value", status)))

    def state(self) -> dict[str, list[dict[str, Any]]]:
        return self._copy(self.channel.presence_state())

    def joins(self, key: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "join" and (key is None or e["key"] == key)]

    def leaves(self, key: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "leave" and (key is None or e["key"] == key)]

    def syncs(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "sync"]


async def join_room(
    client: AsyncRealtimeClient, room: str, key: str | None = None, updates: str | None = None
) -> Recorder:
    """Channel with presence callbacks registered before subscribe; waits for SUBSCRIBED + first sync.
    `updates` sets Roster's config.presence.updates ("replace" or "classic")."""
    params = {"config": {"presence": {"key": key, "enabled": True}}} if key is not None else None
    if updates is not None and params is not None:
        params["config"]["presence"]["updates"] = updates
    channel = client.channel(room, params)
    rec = Recorder(channel)
    await asyncio.wait_for(channel.subscribe(rec.on_status), 10)
    assert rec.statuses and rec.statuses[-1] == "SUBSCRIBED", f"join failed: {rec.statuses}"
    await wait_for(lambda: rec.syncs(), message=f"no presence sync after joining {room} (presence_state missing?)")
    return rec


def without_refs(state: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {k: [{f: v for f, v in p.items() if f != "presence_ref"} for p in ps] for k, ps in sorted(state.items())}


def assert_presence_objects(presences: list[dict[str, Any]], where: str = "") -> None:
    assert isinstance(presences, list), f"{where}: presences must be a list"
    for p in presences:
        assert isinstance(p.get("presence_ref"), str) and p["presence_ref"], f"{where}: bad presence_ref in {p}"
        assert "phx_ref" not in p and "phx_ref_prev" not in p, f"{where}: phx_ref leaked in {p}"


JS_HELPERS = REPO_ROOT / "tests" / "js" / "helpers"


class NodePeer:
    """A node helper script from tests/js/helpers: JSON lines on stdout, commands on stdin."""

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

    def of_type(self, kind: str) -> list[dict]:
        return [l for l in self.lines if l.get("type") == kind]

    def last_state(self) -> dict | None:
        syncs = self.of_type("sync")
        return syncs[-1]["state"] if syncs else None

    async def send(self, command: dict) -> None:
        """Write one JSON command line to the peer's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()

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
async def spawn_node():
    """Factory: `await spawn_node("presence-peer.js", *args)` runs a tests/js/helpers script; all are closed at teardown."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required for the mixed-client tests")
    if not (REPO_ROOT / "tests" / "js" / "node_modules" / "@supabase" / "supabase-js").exists():
        pytest.fail("run `npm ci` in tests/js first")
    peers: list[NodePeer] = []

    async def start(script: str, *args: str) -> NodePeer:
        proc = await asyncio.create_subprocess_exec(
            node, str(JS_HELPERS / script), *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(JS_HELPERS),
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

"""Real backing services for tests: a Mongo wire server and Redis on free ports.

Tests talk to real servers, never mocks. Each server runs as a child process
bound to 127.0.0.1 on a free port with its data in a temporary directory, and
can be stopped and started again on the same port and data, which is how
outage tests take a backend away and bring it back.

Mongo: ``COLLAB_TEST_MONGODB_URL`` (e.g. ``mongodb://127.0.0.1:27017``) points
the tests at an existing MongoDB instead; tests then isolate themselves by
database name (see :func:`with_database`), and the server cannot be stopped.
Without it the ``nx-27017`` server from PyPI (a Mongo wire protocol server over
SQLite) is started. Redis: ``COLLAB_TEST_REDIS_URL`` likewise, else a private
``redis-server`` (``apt-get install redis-server``). Redis Cluster:
``COLLAB_TEST_REDIS_CLUSTER_URL`` (``redis+cluster://host:port,...``), else three
private ``redis-server --cluster-enabled yes`` masters joined by
``redis-cli --cluster create``.

Usage::

    with MongoServer(tmp_path) as mongo:       # started on enter, stopped on exit
        url = with_database(mongo.url, "t1")   # mongodb://127.0.0.1:PORT/t1
        mongo.stop()                            # outage ...
        mongo.start()                           # ... and back, same port and data
        mongo.pause(); mongo.resume()           # a hang (SIGSTOP) rather than a refusal

    url, stop = start_mongo(tmp_path)           # the same without a with-block

    with RedisClusterServer(tmp_path) as cluster:  # redis+cluster://127.0.0.1:P1,...:P3
        cluster.stop(); cluster.start()         # all nodes down, then a new cluster: empty
        cluster.pause(); cluster.resume()       # every node frozen at once, then thawed
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_database(url: str, name: str) -> str:
    """``url`` with its path set to ``/name``, keeping credentials and options."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


class ServiceProcess:
    """One server child process that can be stopped and started again.

    Subclasses say how to launch it (:meth:`argv`) and how to tell that it
    answers (:meth:`ping`). When ``external_url`` is given nothing is launched
    and :meth:`stop`/:meth:`start` are no-ops; ``external`` tells tests that
    need an outage to skip.
    """

    name = "service"
    #: the variable naming an existing server to use instead of launching one
    external_env: str | None = None

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        port: int | None = None,
        *,
        external_url: str | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        if external_url is None and self.external_env:
            external_url = os.environ.get(self.external_env) or None
        self.external = bool(external_url)
        self.port = port or free_port()
        self.dir = Path(tmpdir) / f"{self.name}-{self.port}"
        self.startup_timeout = startup_timeout
        self.url = external_url or self.local_url()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path = self.dir / "server.log"

    # -- to override -------------------------------------------------------

    def local_url(self) -> str:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ping(self) -> None:
        """Return when the server answers; raise any exception otherwise."""
        raise NotImplementedError

    def environ(self) -> dict[str, str] | None:
        """The child's environment; ``None`` inherits ours."""
        return None

    @property
    def workdir(self) -> Path:
        return self.dir

    # -- lifecycle ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.external or (self._proc is not None and self._proc.poll() is None)

    def start(self) -> str:
        """Start (or restart) the server and wait until it answers; return the URL."""
        if self.external or self.running:
            return self.url
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                self.argv(),
                cwd=self.workdir,
                env=self.environ(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._proc.returncode} on port {self.port}:\n"
                    + self.log_tail()
                )
            try:
                self.ping()
                return self.url
            except Exception as exc:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"{self.name} did not answer on port {self.port} within "
                        f"{self.startup_timeout}s ({exc!r}):\n" + self.log_tail()
                    ) from exc
            time.sleep(0.05)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it keeps its port and connections but answers
        nothing, as a hung process or a network partition does (not a refusal)."""
        if not self.external and self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT), with everything it had."""
        if not self.external and self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); its data stays for a restart."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused process would never see the SIGTERM
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def restart(self) -> str:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _executable(name: str, hint: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found; {hint}")
    return found


class MongoServer(ServiceProcess):
    """``nx-27017`` (Mongo wire protocol over SQLite), one SQLite file per database."""

    name = "mongo"
    external_env = "COLLAB_TEST_MONGODB_URL"

    def local_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        exe = _executable("nx-27017", "pip install nx-27017 (into the test venv)")
        return [
            exe,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # per-database files, created on demand: tests isolate by db name
            "--data-dir",
            str(self.dir / "data"),
            # its defaults are shared paths in /tmp that would clash
            "--pid-file",
            str(self.dir / "nx.pid"),
            "--log-file",
            str(self.dir / "nx.log"),
        ]

    def start(self) -> str:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        return super().start()

    def ping(self) -> None:
        import pymongo

        client: pymongo.MongoClient = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        try:
            client.admin.command("ping")
        finally:
            client.close()


class RedisServer(ServiceProcess):
    """A private ``redis-server`` without persistence: a restart comes back empty."""

    name = "redis"
    external_env = "COLLAB_TEST_REDIS_URL"

    def local_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        exe = _executable("redis-server", "install it with: apt-get install -y redis-server")
        return [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
        ]

    def ping(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            client.ping()
        finally:
            client.close()


def start_mongo(tmpdir: str | os.PathLike[str]) -> tuple[str, Callable[[], None]]:
    """Start a Mongo wire server (or use ``COLLAB_TEST_MONGODB_URL``): ``(url, stop)``."""
    server = MongoServer(tmpdir)
    return server.start(), server.stop


def start_redis(tmpdir: str | os.PathLike[str]) -> tuple[str, Callable[[], None]]:
    """Start a private redis-server (or use ``COLLAB_TEST_REDIS_URL``): ``(url, stop)``."""
    server = RedisServer(tmpdir)
    return server.start(), server.stop


class RedisClusterNode(RedisServer):
    """One master of a :class:`RedisClusterServer`: cluster mode, its own bus port and
    ``nodes.conf``, no persistence."""

    name = "redis-cluster-node"
    external_env = None  # never the single Redis of COLLAB_TEST_REDIS_URL

    def __init__(self, tmpdir: str | os.PathLike[str], port: int, bus_port: int, *,
                 node_timeout_ms: int, password: str | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self.bus_port = bus_port
        self.node_timeout_ms = node_timeout_ms
        self.password = password
        super().__init__(tmpdir, port, external_url=None, startup_timeout=startup_timeout)

    @property
    def nodes_conf(self) -> Path:
        return self.dir / "nodes.conf"

    def local_url(self) -> str:
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        argv = [
            *super().argv(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.nodes_conf),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # the bus port is otherwise port + 10000, which a free port need not leave free
            "--cluster-port", str(self.bus_port),
        ]
        if self.password:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        return argv

    def cluster_info(self) -> dict[str, str]:
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5,
                                      decode_responses=True)
        try:
            return client.cluster("INFO")
        finally:
            client.close()


class RedisClusterServer:
    """A private Redis Cluster: ``masters`` redis-server processes in cluster mode on free
    ports, without replicas or persistence.

    :meth:`start` (re)creates the cluster with ``redis-cli --cluster create`` and
    returns once every node says ``cluster_state:ok`` and knows every other node, so a
    restart comes back empty, like :class:`RedisServer`, on the same ports and with the
    same slots per port. :meth:`stop` stops every node; :meth:`pause`/:meth:`resume`
    freeze and thaw them all (SIGSTOP/SIGCONT). ``COLLAB_TEST_REDIS_CLUSTER_URL``
    names an existing cluster instead, which is then never stopped (``external``).
    """

    name = "redis-cluster"
    external_env = "COLLAB_TEST_REDIS_CLUSTER_URL"
    scheme = "redis+cluster"

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        *,
        masters: int = 3,
        # long enough that no node is failed while all are paused for a few seconds
        node_timeout_ms: int = 15_000,
        password: str | None = None,
        external_url: str | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        if external_url is None:
            external_url = os.environ.get(self.external_env) or None
        self.external = bool(external_url)
        self.password = password
        self.startup_timeout = startup_timeout
        ports: set[int] = set()
        while len(ports) < 2 * masters:
            ports.add(free_port())
        chosen = sorted(ports)
        self.dir = Path(tmpdir) / f"{self.name}-{chosen[0]}"
        self.nodes = [
            RedisClusterNode(self.dir, port, bus_port, node_timeout_ms=node_timeout_ms,
                             password=password, startup_timeout=startup_timeout)
            for port, bus_port in zip(chosen[:masters], chosen[masters:], strict=True)
        ]
        self.url = external_url or self.local_url()

    def local_url(self) -> str:
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"{self.scheme}://{auth}{seeds}"

    @property
    def running(self) -> bool:
        return self.external or all(node.running for node in self.nodes)

    def start(self) -> str:
        """Start every node and join them into a new, empty cluster; return the URL."""
        if self.running:
            return self.url
        self.stop()  # a half-running cluster is started over as a whole
        for node in self.nodes:
            node.nodes_conf.unlink(missing_ok=True)  # forget the previous cluster
            node.start()
        self._create()
        self._wait_until_ok()
        return self.url

    def _create(self) -> None:
        exe = _executable("redis-cli", "install it with: apt-get install -y redis-tools")
        argv = [exe, "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas", "0", "--cluster-yes"]
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password  # not on the command line, not in ps
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=self.startup_timeout)
        if done.returncode != 0 or b"[OK] All 16384 slots covered" not in done.stdout:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed ({done.returncode}):\n"
                               + (done.stdout + done.stderr).decode(errors="replace")[-2000:])

    def _wait_until_ok(self) -> None:
        """Until every node has all slots served and knows every other node."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                infos = [node.cluster_info() for node in self.nodes]
                if all(info.get("cluster_state") == "ok"
                       and info.get("cluster_slots_ok") == "16384"
                       and info.get("cluster_known_nodes") == str(len(self.nodes))
                       for info in infos):
                    return
                problem: object = infos
            except Exception as exc:  # noqa: BLE001 - not up yet
                problem = exc
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the cluster was not ok within {self.startup_timeout}s: "
                                   f"{problem!r}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every node (a later :meth:`start` creates the cluster anew, empty)."""
        for node in self.nodes:
            node.stop()

    def pause(self) -> None:
        """Freeze every node (SIGSTOP): connections stay open, nothing answers."""
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        """Thaw every node (SIGCONT), with its data and the cluster as they were."""
        for node in self.nodes:
            node.resume()

    def restart(self) -> str:
        self.stop()
        return self.start()

    def __enter__(self) -> RedisClusterServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_redis_cluster(tmpdir: str | os.PathLike[str]) -> tuple[str, Callable[[], None]]:
    """Start a private 3-master Redis Cluster (or use ``COLLAB_TEST_REDIS_CLUSTER_URL``):
    ``(url, stop)``."""
    server = RedisClusterServer(tmpdir)
    return server.start(), server.stop

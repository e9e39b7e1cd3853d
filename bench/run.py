#!/usr/bin/env python3
"""Side-by-side benchmark: collab (fast broadcast on and off), a bare python-socketio
server on Tornado, and a bare Node socket.io v4 server (the anchor), driven by the
same Node socket.io-client load generator, alternating, several rounds.

usage: python bench/run.py [--rounds 3] [--idle 5000] [--no-big] [--quick]
Installs the pinned npm packages (bench/package.json) on first use. Loopback only;
every server is stopped at the end of its turn; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import jwt

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
CLIENT = "raw"
STORAGE = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_npm() -> None:
    pinned = json.loads((BENCH / "package.json").read_text())["dependencies"]
    ok = True
    for name, version in pinned.items():
        pkg = BENCH / "node_modules" / name / "package.json"
        if not pkg.exists() or json.loads(pkg.read_text())["version"] != version:
            ok = False
    if not ok:
        print("installing", ", ".join(f"{n}@{v}" for n, v in pinned.items()), flush=True)
        # exactly what bench/package-lock.json records (it carries no download addresses:
        # npm takes the packages by name and checks them against its integrity hashes)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH, check=True,
                       timeout=300)


SERVERS = ("collab", "collab-slow", "bare-py", "node")
LABELS = {
    "collab": "collab (fast_broadcast on)",
    "collab-slow": "collab (fast_broadcast off)",
    "bare-py": "bare python-socketio",
    "node": "bare Node socket.io (anchor)",
}


#: server name -> the checkout it runs from (--compare)
COMPARE: dict[str, str] = {}


class Running:
    def __init__(self, name: str, secret: str, workdir: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        env = dict(os.environ)
        if name.startswith("collab"):
            data = workdir / f"{name}-{self.port}"
            data.mkdir()
            env.update({
                "COLLAB_JWT_SECRET": secret,
                "COLLAB_DATA_DIR": str(data),
                "COLLAB_STORAGE_URL": STORAGE or f"sqlite:///{data}/collab.db",
                "COLLAB_REGISTRY_URL": "memory://",
                # the load is the point here: a bucket that never empties (still on the path)
                "COLLAB_RATE_LIMIT_PER_SECOND": "1000000",
                "COLLAB_RATE_LIMIT_BURST": "1000000",
                "COLLAB_USER_RATE_LIMIT_PER_SECOND": "1000000",
                "COLLAB_USER_RATE_LIMIT_BURST": "1000000",
                # every load generator connection comes from 127.0.0.1, many as one user
                "COLLAB_MAX_CONNECTIONS_PER_IP": "1000000",
                "COLLAB_MAX_CONNECTIONS_PER_USER": "0",
                "COLLAB_FAST_BROADCAST": "false" if name == "collab-slow" else "true",
                "COLLAB_LOG_LEVEL": "WARNING",
                "PYTHONPATH": os.pathsep.join(
                    p for p in (os.environ.get("BENCH_PYTHONPATH", ""),
                                COMPARE.get(name, str(ROOT))) if p),
                **(extra_env or {}),
            })
            cmd = [PY, "-m", "collab", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        elif name == "bare-py":
            cmd = [PY, str(BENCH / "bare_socketio.py"), str(self.port), secret]
        elif name == "hocuspocus":
            cmd = ["node", str(BENCH / "hocuspocus.mjs"), str(self.port), secret]
        else:
            cmd = ["node", str(BENCH / "bare_node.mjs"), str(self.port), secret]
        self.log = open(workdir / f"{name}-{self.port}.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start; see {self.log.name}") from None
                time.sleep(0.1)  # a starting process: nothing to await

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def load(server: Running, workdir: Path, tokens: Path, users: list[str], **cfg) -> dict:
    cfg.update(url=server.url, tokens=str(tokens), users=users, server_pid=server.proc.pid,
               client=CLIENT)
    path = workdir / "load.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run(["node", str(BENCH / "load.mjs"), str(path)], cwd=BENCH,
                         capture_output=True, text=True, timeout=cfg.get("hard_limit_s", 120) + 30)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"error": out.stderr[-500:]}
    if "error" in result:
        print(f"  {server.name} {cfg['workload']}: ERROR {result['error']}", flush=True)
    return result


def store_commit_rate(workdir: Path, seconds: float = 3.0) -> float:
    """SqliteStore.update_document in a loop: the store's own ceiling for workload (b)."""
    code = f"""
import asyncio, time
from collab.store.sqlite import SqliteStore
async def main():
    store = SqliteStore("sqlite:///{workdir}/store-{secrets.token_hex(4)}.db")
    await store.open()
    doc = await store.create_document("d", "t", "", "u")
    v, n, end = 0, 0, time.perf_counter() + {seconds}
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        v += 1
        await store.update_document("d", f"update {{v}}", v, "u")
        n += 1
    print(n / (time.perf_counter() - t0))
    await store.close()
asyncio.run(main())
"""
    out = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=int, default=5000, help="connections for the idle-memory test")
    ap.add_argument("--storm", type=int, default=500, help="connections in the connect storm")
    ap.add_argument("--posters", type=int, default=10, help="posting members of the room")
    ap.add_argument("--steady", type=int, default=20000,
                    help="deliveries/s offered in the steady-rate (latency) runs")
    ap.add_argument("--window", type=int, default=30,
                    help="messages each poster keeps in flight (closed loop)")
    ap.add_argument("--client", choices=("raw", "sio"), default="raw",
                    help="receiving members: a minimal client on `ws` (raw) or socket.io-client")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per fan-out run")
    ap.add_argument("--no-big", action="store_true", help="skip the room of 1,000")
    ap.add_argument("--quick", action="store_true", help="1 round, short runs (smoke test)")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR",
                    help="also run collab (fast broadcast on) from the checkout in DIR, "
                         "as server collab@LABEL (e.g. an older commit's git worktree)")
    ap.add_argument("--workloads", default="",
                    help="only these, comma-separated (idle,storm,fanout100,steady100,"
                         "fanout1000,steady1000,docs); default all")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--storage", default="",
                    help="collab's storage URL (default: a fresh SQLite file per server start)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.idle, args.storm, args.no_big = 1, 2.0, 300, 100, True
    servers = [s for s in args.servers.split(",") if s]
    for spec in args.compare:
        label, _, directory = spec.partition("=")
        if not (Path(directory) / "collab" / "__main__.py").is_file():
            print(f"--compare {spec}: no collab package in {directory!r}", file=sys.stderr)
            return 2
        COMPARE[f"collab@{label}"] = str(Path(directory).resolve())
        LABELS[f"collab@{label}"] = f"collab @ {label}"
        servers.insert(servers.index("node") if "node" in servers else len(servers),
                       f"collab@{label}")
    global CLIENT, STORAGE
    CLIENT, STORAGE = args.client, args.storage
    if not shutil.which("node"):
        print("node is required", file=sys.stderr)
        return 2
    ensure_npm()

    workdir = Path(tempfile.mkdtemp(prefix="collab-bench-"))
    secret = secrets.token_urlsafe(48)
    n_users = max(args.idle, args.storm, 1000) + 60
    users = [f"u{i}" for i in range(n_users)]
    exp = int(time.time()) + 86400
    tokens = workdir / "tokens.json"
    tokens.write_text(json.dumps([jwt.encode({"sub": u, "exp": exp}, secret, algorithm="HS256")
                                  for u in users]))
    common = dict(warmup_s=1.5, duration_s=args.duration, sample_every=7, window=args.window)
    workloads = [
        ("idle", dict(workload="idle", clients=args.idle)),
        ("storm", dict(workload="storm", clients=args.storm, concurrency=50)),
        ("fanout100", dict(workload="fanout", clients=100, posters=args.posters, **common)),
        ("steady100", dict(workload="fanout", clients=100, posters=args.posters,
                           rate=args.steady // 100, **common)),
    ]
    if not args.no_big:
        workloads += [
            ("fanout1000", dict(workload="fanout", clients=1000, posters=args.posters, **common)),
            ("steady1000", dict(workload="fanout", clients=1000, posters=args.posters,
                                rate=args.steady // 1000, **common)),
        ]
    workloads.append(("docs", dict(workload="docs", clients=4, warmup_s=1.0,
                                   duration_s=args.duration)))
    if args.workloads:
        wanted = set(args.workloads.split(","))
        workloads = [(w, cfg) for w, cfg in workloads if w in wanted]

    results: dict[str, dict[str, list[dict]]] = {s: {} for s in servers}
    commit_rates: list[float] = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        for rnd in range(args.rounds):
            order = servers if rnd % 2 == 0 else list(reversed(servers))
            for name in order:
                print(f"round {rnd + 1}/{args.rounds}: {name}", flush=True)
                srv = Running(name, secret, workdir)
                try:
                    for wname, cfg in workloads:
                        if wname == "docs" and not name.startswith("collab"):
                            continue  # the bare servers store nothing
                        r = load(srv, workdir, tokens, users, **cfg)
                        results[name].setdefault(wname, []).append(r)
                        time.sleep(0.5)
                finally:
                    srv.stop()
            if any(w == "docs" for w, _ in workloads):
                commit_rates.append(store_commit_rate(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "commit_rates": commit_rates},
                                              indent=1))
    print()
    print(table(results, servers, commit_rates, started, args))
    return 0


def med(runs: list[dict] | None, key: str) -> float | None:
    vals = [r[key] for r in runs or [] if r.get(key) is not None and "error" not in r]
    return statistics.median(vals) if vals else None


ROWS = [
    ("fanout100", "deliveries_per_s", "(a) room of 100, saturated: deliveries/s", True),
    ("fanout100", "server_cpu", "(a) room of 100, saturated: server CPU (cores)", None),
    ("fanout100", "load_cpu", "(a) room of 100, saturated: load generator CPU (cores)", None),
    ("steady100", "deliveries_per_s", "(a) room of 100, steady rate: deliveries/s", True),
    ("steady100", "p50_ms", "(a) room of 100, steady rate: p50 latency ms", False),
    ("steady100", "p99_ms", "(a) room of 100, steady rate: p99 latency ms", False),
    ("fanout1000", "deliveries_per_s", "(a) room of 1,000, saturated: deliveries/s", True),
    ("fanout1000", "server_cpu", "(a) room of 1,000, saturated: server CPU (cores)", None),
    ("fanout1000", "load_cpu", "(a) room of 1,000, saturated: load generator CPU (cores)", None),
    ("steady1000", "deliveries_per_s", "(a) room of 1,000, steady rate: deliveries/s", True),
    ("steady1000", "p50_ms", "(a) room of 1,000, steady rate: p50 latency ms", False),
    ("steady1000", "p99_ms", "(a) room of 1,000, steady rate: p99 latency ms", False),
    ("docs", "updates_per_s", "(b) documents:update round trips/s (4 clients)", True),
    ("docs", "p99_ms", "(b) documents:update p99 ack ms", False),
    ("idle", "kib_per_connection", "(c) idle memory KiB/connection", False),
    ("storm", "connections_per_s", "(d) connect storm with JWT: connections/s", True),
    ("storm", "server_cpu", "(d) connect storm: server CPU (cores)", None),
    ("storm", "load_cpu", "(d) connect storm: load generator CPU (cores)", None),
]


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def table(results, servers, commit_rates, started, args) -> str:
    anchor = "node" if "node" in servers else None
    head = ["figure"] + [LABELS[s] for s in servers]
    if anchor:
        head += [f"{s} / node" for s in servers if s != anchor]
    node_version = subprocess.run(["node", "--version"], capture_output=True,
                                  text=True).stdout.strip()
    receivers = "a minimal ws-based client" if args.client == "raw" else "socket.io-client"
    lines = [
        f"collab bench, {started}; {platform.node()}: {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"node {node_version}; "
        f"medians of {args.rounds} round(s); idle test at {args.idle} connections, "
        f"storm {args.storm} connections (50 in flight); fan-out: {args.posters} posters "
        f"(socket.io-client), saturated = each keeping {args.window} messages in flight "
        f"(closed loop), steady rate = {args.steady:,} deliveries/s offered (open loop), "
        f"receivers: {receivers}, "
        f"{args.duration:.0f} s measured",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for wname, key, label, higher in ROWS:
        vals = [med(results[s].get(wname), key) for s in servers]
        if all(v is None for v in vals):
            continue
        row = [label] + [fmt(v) for v in vals]
        if anchor:
            a = med(results[anchor].get(wname), key)
            for s, v in zip(servers, vals, strict=True):
                if s == anchor:
                    continue
                row.append(f"{v / a:.2f}" if (v is not None and a and higher is not None) else "-")
        lines.append("| " + " | ".join(row) + " |")
    if commit_rates:
        lines.append("")
        lines.append(f"(b) beside: SqliteStore.update_document alone, in a loop: "
                     f"{statistics.median(commit_rates):,.0f} commits/s "
                     f"(median of {len(commit_rates)})")
    lines.append("Ratios: figure / anchor's figure (for latency and memory, higher ratio = worse).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

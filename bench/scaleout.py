#!/usr/bin/env python3
"""Scale-out benchmark: two collab nodes on one Redis, side by side with other checkouts.

usage: python bench/scaleout.py [--rounds 3] [--duration 5] [--compare LABEL=DIR ...]

Workloads, each on a fresh pair of nodes (a private redis-server, one shared
SQLite file as the store):

- isolation: a saturated 50-member chat room entirely on node A (10 posters,
  the load generator of bench/run.py), while node B hosts 50 members in 5
  other rooms, idle. Node B's CPU divided by node A's over the measured
  window: what a node pays for a room it hosts nobody of.
- split: a saturated room of 100 with its members split over both nodes
  (posters on A), deliveries/s counted at every member, beside the same room
  with every member on node A (the cross-node path against the local one).

Prints a Markdown table; with ``--compare`` the other checkout (an older
commit's git worktree) runs the same workloads in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
from run import BENCH, COMPARE, ROOT, Running, ensure_npm, free_port, load

sys.path.insert(0, str(ROOT / "tests"))
from services import RedisServer  # noqa: E402


def pair(name: str, secret: str, workdir: Path, redis_url: str) -> list[Running]:
    store = workdir / f"{name}-{secrets.token_hex(4)}.db"
    env = {"COLLAB_REGISTRY_URL": redis_url, "COLLAB_STORAGE_URL": f"sqlite:///{store}"}
    nodes = []
    try:
        for node_id in ("a", "b"):
            nodes.append(Running(name, secret, workdir,
                                 {**env, "COLLAB_NODE_ID": f"{name}-{node_id}"}))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def hold(node: Running, workdir: Path, tokens: Path, users: list[str], clients: int,
         rooms: int, offset: int) -> subprocess.Popen[str]:
    """Members in rooms of their own on ``node``, until the returned process' stdin closes."""
    cfg = dict(workload="hold", url=node.url, tokens=str(tokens), users=users, clients=clients,
               rooms=rooms, offset=offset, server_pid=node.proc.pid, client="raw",
               hard_limit_s=600)
    path = workdir / f"hold-{node.port}.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen(["node", str(BENCH / "load.mjs"), str(path)], cwd=BENCH,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:  # READY once every member has joined
        if line.strip() == "READY":
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"the held rooms on {node.url} did not get ready")


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_round(name: str, secret: str, workdir: Path, redis_url: str, tokens: Path,
              users: list[str], args: argparse.Namespace) -> dict[str, dict]:
    common = dict(warmup_s=1.5, duration_s=args.duration, sample_every=7, window=args.window,
                  posters=10)
    out: dict[str, dict] = {}
    a, b = pair(name, secret, workdir, redis_url)
    try:
        held = hold(b, workdir, tokens, users, clients=50, rooms=5, offset=200)
        try:
            r = load(a, workdir, tokens, users, workload="fanout", clients=50,
                     watch_pids=[b.proc.pid], **common)
        finally:
            release(held)
        if "error" not in r:
            r["b_over_a"] = r["watch_cpu"][0] / r["server_cpu"] if r["server_cpu"] else None
        out["isolation"] = r
        out["local"] = load(a, workdir, tokens, users, workload="fanout", clients=100,
                            watch_pids=[b.proc.pid], **common)
        out["split"] = load(a, workdir, tokens, users, workload="fanout", clients=100,
                            urls=[a.url, b.url], watch_pids=[b.proc.pid], **common)
    finally:
        for node in (a, b):
            node.stop()
    return out


ROWS = [
    ("isolation", "b_over_a", "isolation: node B CPU / node A CPU"),
    ("isolation", "server_cpu", "isolation: node A CPU (cores)"),
    ("isolation", "deliveries_per_s", "isolation: room of 50 on A, deliveries/s"),
    ("local", "deliveries_per_s", "room of 100, all members on A: deliveries/s"),
    ("split", "deliveries_per_s", "room of 100, members split over A and B: deliveries/s"),
    ("split", "p50_ms", "room of 100 split: p50 latency ms"),
]


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--window", type=int, default=30)
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR")
    ap.add_argument("--json")
    args = ap.parse_args()
    servers = ["collab"]
    for spec in args.compare:
        label, _, directory = spec.partition("=")
        COMPARE[f"collab@{label}"] = str(Path(directory).resolve())
        servers.append(f"collab@{label}")
    if not shutil.which("node"):
        print("node is required", file=sys.stderr)
        return 2
    ensure_npm()
    workdir = Path(tempfile.mkdtemp(prefix="collab-scaleout-"))
    secret = secrets.token_urlsafe(48)
    users = [f"u{i}" for i in range(400)]
    exp = int(time.time()) + 86400
    tokens = workdir / "tokens.json"
    tokens.write_text(json.dumps([jwt.encode({"sub": u, "exp": exp}, secret, algorithm="HS256")
                                  for u in users]))
    redis = RedisServer(workdir, free_port())
    redis.start()
    results: dict[str, dict[str, list[dict]]] = {s: {} for s in servers}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        for rnd in range(args.rounds):
            for name in servers if rnd % 2 == 0 else list(reversed(servers)):
                print(f"round {rnd + 1}/{args.rounds}: {name}", flush=True)
                for wname, r in run_round(name, secret, workdir, redis.url, tokens, users,
                                          args).items():
                    if "error" in r:
                        print(f"  {name} {wname}: ERROR {r['error']}", flush=True)
                    results[name].setdefault(wname, []).append(r)
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    head = ["figure", *servers]
    print(f"\ncollab scale-out bench, {started}; medians of {args.rounds} round(s), "
          f"{args.duration:.0f} s measured, 10 posters x {args.window} in flight\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for wname, key, label in ROWS:
        vals = []
        for s in servers:
            got = [r[key] for r in results[s].get(wname, [])
                   if "error" not in r and r.get(key) is not None]
            vals.append(statistics.median(got) if got else None)
        print("| " + " | ".join([label, *map(fmt, vals)]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

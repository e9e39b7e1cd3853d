#!/usr/bin/env python3
"""Where an idle connection's bytes go: tracemalloc snapshots of a server before and
after bench/load.mjs opens N idle authenticated connections, diffed, per connection.

usage: python bench/memory.py [collab|bare-py] [--clients 2000] [--frames 8] [--top 25]

The server runs with tracemalloc on from the first snapshot (a ``sitecustomize`` put
first on its path takes one on SIGUSR1, after a full collection), so its RSS grows
more than in bench/run.py; the RSS growth per connection is printed beside the traced bytes, and
the difference is what tracemalloc does not see (pymalloc arenas not yet reused,
C allocations outside Python's allocator, the kernel's pages).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH, Running, ensure_npm  # noqa: E402

SITE = '''
import collections, gc, json, os, signal, tracemalloc
def _dump(signum, frame):
    # traced from the first snapshot on: tracing the imports makes the start take minutes
    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ["BENCH_TRACEMALLOC_FRAMES"]))
    path = os.environ["BENCH_SNAPSHOT"] + "." + str(_dump.n)
    _dump.n += 1
    gc.collect()
    tracemalloc.take_snapshot().dump(path)
    counts = collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
    with open(path + ".types", "w") as f:
        json.dump(counts, f)
    with open("/proc/self/status") as f:
        rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
    with open(path + ".done", "w") as f:
        f.write(str(rss))
_dump.n = 0
signal.signal(signal.SIGUSR1, _dump)
'''


def snapshot(srv: Running, base: str, n: int) -> tuple[tracemalloc.Snapshot, dict, int]:
    os.kill(srv.proc.pid, signal.SIGUSR1)
    done = Path(f"{base}.{n}.done")
    deadline = time.monotonic() + 120
    while not done.exists() or not done.read_text():
        if srv.proc.poll() is not None or time.monotonic() > deadline:
            srv.log.flush()
            raise RuntimeError(f"no snapshot: {Path(srv.log.name).read_text()[-2000:]}")
        time.sleep(0.2)  # another process writes it: nothing to await
    snap = tracemalloc.Snapshot.load(f"{base}.{n}")
    types = json.loads(Path(f"{base}.{n}.types").read_text())
    return snap, types, int(done.read_text())


def hold(srv: Running, workdir: Path, tokens: Path, clients: int) -> subprocess.Popen:
    cfg = dict(workload="hold_idle", clients=clients, url=srv.url, tokens=str(tokens),
               users=[], server_pid=srv.proc.pid, client="raw", hard_limit_s=600)
    path = workdir / f"hold-{clients}.json"
    path.write_text(json.dumps(cfg))
    p = subprocess.Popen(["node", str(BENCH / "load.mjs"), str(path)], cwd=BENCH,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if line.strip() != "READY":
        raise RuntimeError(f"load generator: {line!r}")
    return p


def release(p: subprocess.Popen) -> None:
    p.stdin.close()
    p.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("server", nargs="?", default="collab")
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=8, help="traceback depth kept")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--group", choices=("lineno", "filename", "traceback"), default="lineno")
    args = ap.parse_args()
    ensure_npm()
    workdir = Path(tempfile.mkdtemp(prefix="collab-memory-"))
    site = workdir / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    base = str(workdir / "snap")
    os.environ.update(BENCH_PYTHONPATH=str(site), PYTHONPATH=str(site),
                      BENCH_TRACEMALLOC_FRAMES=str(args.frames), BENCH_SNAPSHOT=base)
    secret = secrets.token_urlsafe(48)
    exp = int(time.time()) + 3600
    tokens = workdir / "tokens.json"
    tokens.write_text(json.dumps([jwt.encode({"sub": f"u{i}", "exp": exp}, secret,
                                             algorithm="HS256")
                                  for i in range(args.clients + 60)]))
    srv = Running(args.server, secret, workdir)
    try:
        release(hold(srv, workdir, tokens, 50))  # load the code paths first
        time.sleep(1.5)
        before, types0, rss0 = snapshot(srv, base, 0)
        p = hold(srv, workdir, tokens, args.clients)
        time.sleep(2.0)
        after, types1, rss1 = snapshot(srv, base, 1)
        release(p)
        report(before, after, types0, types1, rss0, rss1, args)
    finally:
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(before, after, types0, types1, rss0, rss1, args) -> None:
    n = args.clients
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(keep), after.filter_traces(keep)
    stats = after.compare_to(before, args.group)
    traced = sum(s.size_diff for s in stats)
    print(f"{args.server}: {n} idle connections; RSS +{(rss1 - rss0) / n:.2f} KiB/connection "
          f"(with tracemalloc on), traced +{traced / n / 1024:.2f} KiB/connection "
          f"({sum(s.count_diff for s in stats) / n:.1f} blocks)")
    print(f"\n-- by {args.group} (bytes and blocks per connection) --")
    for s in stats[:args.top]:
        if args.group == "traceback":
            where = " <- ".join(f"{f.filename.rsplit('/', 2)[-2:][-1]}:{f.lineno}"
                                for f in reversed(s.traceback))
        else:
            f = s.traceback[0]
            where = "/".join(f.filename.rsplit("/", 2)[-2:]) + f":{f.lineno}"
        print(f"{s.size_diff / n:9.1f} B {s.count_diff / n:6.2f}  {where}")
    print("\n-- objects per connection, by type (gc-tracked) --")
    diff = collections.Counter({k: types1.get(k, 0) - types0.get(k, 0) for k in types1})
    for name, d in diff.most_common(args.top):
        if d / n < 0.5:
            break
        print(f"{d / n:6.2f}  {name}")


if __name__ == "__main__":
    sys.exit(main())

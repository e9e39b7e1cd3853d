#!/usr/bin/env python3
"""Where a server's time goes under the room-of-100 fan-out (bench/load.mjs), a connect
storm, or with ``--live`` the live-document load of bench/live.py (bench/live.mjs):
py-spy samples of a collab (or bare python-socketio) server while the load generator
drives it.

usage: python bench/profile.py [collab|collab-slow|bare-py] [--live] [--seconds 6] [--top 30]
       python bench/profile.py collab --workload storm --storm 6000
Needs py-spy (pip install py-spy) and ptrace permission on the server process.
"""

from __future__ import annotations

import argparse
import collections
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH, Running, ensure_npm  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("server", nargs="?", default="collab")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--posters", type=int, default=10)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--live", action="store_true",
                    help="the live-document load of bench/live.py instead of the chat fan-out")
    ap.add_argument("--workload", choices=("fanout", "storm", "docs"), default="fanout",
                    help="docs: 4 clients, documents:update in a closed loop, as bench/run.py")
    ap.add_argument("--storm", type=int, default=6000,
                    help="connections of the storm (50 handshakes in flight)")
    ap.add_argument("--rate", type=int, default=0,
                    help="fan-out at this many messages/s to the room (open loop, as "
                         "bench/run.py's steady rate: 200) instead of saturated")
    ap.add_argument("--metrics", action="store_true",
                    help="instead of sampling with py-spy, print the mean time per event and "
                         "per store operation from the server's /metrics over the window")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    ensure_npm()
    workdir = Path(tempfile.mkdtemp(prefix="collab-profile-"))
    secret = secrets.token_urlsafe(48)
    users = [f"u{i}" for i in range(120 if args.workload == "fanout" else args.storm + 60)]
    exp = int(time.time()) + 3600
    tokens = workdir / "tokens.json"
    tokens.write_text(json.dumps([jwt.encode({"sub": u, "exp": exp}, secret, algorithm="HS256")
                                  for u in users]))
    srv = Running(args.server, secret, workdir)
    try:
        cfg = dict(workload="fanout", clients=100, posters=args.posters, window=args.window,
                   client="raw", warmup_s=1.0,
                   duration_s=args.seconds + 1.5, sample_every=7, url=srv.url,
                   tokens=str(tokens), users=users, server_pid=srv.proc.pid)
        if args.rate:
            cfg["rate"] = args.rate
        script = "live.mjs" if args.live else "load.mjs"
        if args.live:
            cfg.update(server="collab", editors=10, viewers=100, rate=20, drain_s=10,
                       hard_limit_s=120)
        if args.workload == "storm":
            cfg.update(workload="storm", clients=args.storm, concurrency=50)
        elif args.workload == "docs":
            cfg.update(workload="docs", clients=4)
        (workdir / "load.json").write_text(json.dumps(cfg))
        out: dict = {}

        def drive() -> None:
            p = subprocess.run(["node", str(BENCH / script), str(workdir / "load.json")],
                               capture_output=True, text=True, timeout=120)
            out["result"] = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr
        t = threading.Thread(target=drive)
        t.start()
        time.sleep(0.5 if args.workload == "storm" else 3.0)  # connected, joined, warmed up
        if args.metrics:
            before = scrape(srv.url)
            time.sleep(args.seconds)
            after = scrape(srv.url)
            t.join(120)
            print("load:", out.get("result"))
            report_metrics(before, after, args.seconds)
            return 0
        raw = workdir / "profile.txt"
        subprocess.run([spy, "record", "--pid", str(srv.proc.pid), "--duration",
                        str(int(args.seconds)), "--rate", "250", "--format", "raw",
                        "--nonblocking", "--threads", "-o", str(raw)],
                       check=True, capture_output=True, timeout=args.seconds + 60)
        t.join(120)
        print("load:", out.get("result"))
        report(raw, args.top)
    finally:
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def scrape(url: str) -> dict[tuple[str, str], float]:
    """The server's latency histograms: (series, labels) -> value, sums and counts only."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(("collab_handler_latency_seconds_", "collab_store_latency_seconds_")):
            series, _, value = line.rpartition(" ")
            name, _, labels = series.partition("{")
            if name.endswith(("_sum", "_count")):
                found[name, labels.rstrip("}")] = float(value)
    return found


def report_metrics(before: dict, after: dict, seconds: float) -> None:
    """Per event and store operation over the window: calls/s and the mean time of one."""
    print(f"\n{'series':<60} {'calls/s':>9} {'mean ms':>9}")
    for (name, labels), total in sorted(after.items()):
        if not name.endswith("_count"):
            continue
        calls = total - before.get((name, labels), 0.0)
        if calls <= 0:
            continue
        base = name[:-len("_count")]
        spent = after[base + "_sum", labels] - before.get((base + "_sum", labels), 0.0)
        what = base.replace("collab_", "").replace("_latency_seconds", "") + " " + labels
        print(f"{what:<60} {calls / seconds:>9,.0f} {1000 * spent / calls:>9.2f}")


def report(raw: Path, top: int) -> None:
    """Per thread: the event loop's thread is what caps a saturated server."""
    threads: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():  # (py-spy cut a stack short)
            continue
        thread, _, rest = stack.partition(";")
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  for f in rest.split(";")]
        threads[thread].append((frames, int(count)))
    grand = sum(n for samples in threads.values() for _, n in samples)
    for thread, samples in sorted(threads.items(), key=lambda t: -sum(n for _, n in t[1])):
        n_thread = sum(n for _, n in samples)
        print(f"\n== {thread}: {n_thread} samples, {100 * n_thread / grand:.1f}% of all ==")
        report_thread(samples, top)


def report_thread(samples: list[tuple[list[str], int]], top: int) -> None:
    inclusive: collections.Counter = collections.Counter()
    leaf: collections.Counter = collections.Counter()
    total = 0
    for frames, n in samples:
        total += n
        for f in set(frames):
            inclusive[f] += n
        leaf[frames[-1]] += n
    print("\n-- inclusive (share of samples with the function on the stack) --")
    for f, n in inclusive.most_common(top):
        print(f"{100 * n / total:5.1f}%  {f}")
    print("\n-- self --")
    for f, n in leaf.most_common(top):
        print(f"{100 * n / total:5.1f}%  {f}")


if __name__ == "__main__":
    sys.exit(main())

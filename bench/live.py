#!/usr/bin/env python3
"""Live documents benchmark: one Yjs document, 10 editors each typing 20 keystrokes a
second (one Yjs update each, open loop) and 100 live viewers, on collab and on
Hocuspocus (the anchor), alternating, several rounds; medians.

usage: python bench/live.py [--rounds 3] [--duration 10] [--compare LABEL=DIR ...]

collab runs on its default embedded store (a fresh SQLite file per start,
synchronous=FULL): every update is stored before it is acked or relayed.
Hocuspocus 4 runs with its defaults and no persistence extension: it keeps the
document in memory, and its provider's ack (a SyncStatus message per update)
says the server applied the update, not that anything was stored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
from run import BENCH, COMPARE, Running, ensure_npm

LABELS = {"collab": "collab (SQLite, durable before ack)",
          "hocuspocus": "Hocuspocus 4 (anchor, in memory)"}

#: (key, label, higher is better: True, lower: False, no ratio: None)
ROWS = [
    ("typed_per_s", "keystrokes typed/s (offered)", None),
    ("acked_per_s", "acked updates/s (at the editors)", True),
    ("deliveries_per_s", "deliveries/s (keystrokes integrated at the viewers)", True),
    ("p50_ms", "keystroke to a viewer: p50 ms", False),
    ("p99_ms", "keystroke to a viewer: p99 ms", False),
    ("all_p50_ms", "keystroke to every viewer (the last one): p50 ms", False),
    ("all_p99_ms", "keystroke to every viewer (the last one): p99 ms", False),
    ("ack_p50_ms", "editor's ack: p50 ms", False),
    ("ack_p99_ms", "editor's ack: p99 ms", False),
    ("server_cpu", "server CPU (cores)", None),
    ("load_cpu", "load generator CPU (cores)", None),
    ("not_everywhere", "keystrokes of the window some viewer never got", None),
]


def live(server: Running, workdir: Path, tokens: Path, users: list[str], **cfg) -> dict:
    kind = "hocuspocus" if server.name == "hocuspocus" else "collab"
    cfg.update(server=kind, url=server.url, tokens=str(tokens), users=users,
               server_pid=server.proc.pid)
    path = workdir / "live.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run(["node", str(BENCH / "live.mjs"), str(path)], cwd=BENCH,
                         capture_output=True, text=True, timeout=cfg["hard_limit_s"] + 30)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"error": out.stderr[-500:]}
    if "error" in result:
        print(f"  {server.name}: ERROR {result['error']}", flush=True)
    elif not result["converged"] or result["failures"] or result["not_everywhere"]:
        print(f"  {server.name}: converged={result['converged']} failures={result['failures']}"
              f" not_everywhere={result['not_everywhere']}", flush=True)
    return result


def med(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if "error" not in r and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def table(results: dict[str, list[dict]], servers: list[str], started: str,
          args: argparse.Namespace) -> str:
    node_version = subprocess.run(["node", "--version"], capture_output=True,
                                  text=True).stdout.strip()
    anchor = "hocuspocus"
    others = [s for s in servers if s != anchor]
    head = ["figure", *(LABELS[s] for s in servers), *(f"{s} / hocuspocus" for s in others)]
    lines = [
        f"collab live bench, {started}; {platform.node()}: {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, node {node_version}; "
        f"medians of {args.rounds} round(s); {args.editors} editors x {args.rate} keystrokes/s, "
        f"{args.viewers} viewers, {args.duration:.0f} s measured",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for key, label, higher in ROWS:
        vals = [med(results[s], key) for s in servers]
        a = med(results[anchor], key)
        ratios = [f"{v / a:.2f}" if v is not None and a and higher is not None else "-"
                  for v in (med(results[s], key) for s in others)]
        lines.append("| " + " | ".join([label, *map(fmt, vals), *ratios]) + " |")
    lines.append("")
    for s in servers:
        per_round = ", ".join(
            "error" if "error" in r else
            f"{r['deliveries_per_s']:,.0f}/s p99 {r['p99_ms']:.1f} ms"
            + ("" if r["converged"] else " NOT CONVERGED")
            + (f", {r['versions']} versions for {r['keystrokes']} keystrokes"
               if "versions" in r else "")
            for r in results[s])
        lines.append(f"- {s} per round: {per_round}")
    lines.append("Ratios: figure / Hocuspocus' figure (for latency, higher ratio = worse).")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds typed before measuring")
    ap.add_argument("--editors", type=int, default=10)
    ap.add_argument("--viewers", type=int, default=100)
    ap.add_argument("--rate", type=int, default=20, help="keystrokes a second per editor")
    ap.add_argument("--servers", default="collab,hocuspocus")
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR",
                    help="also run collab from the checkout in DIR as collab@LABEL")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    if "hocuspocus" not in servers:
        servers.append("hocuspocus")  # the anchor of every ratio
    for spec in args.compare:
        label, _, directory = spec.partition("=")
        if not (Path(directory) / "collab" / "__main__.py").is_file():
            print(f"--compare {spec}: no collab package in {directory!r}", file=sys.stderr)
            return 2
        COMPARE[f"collab@{label}"] = str(Path(directory).resolve())
        LABELS[f"collab@{label}"] = f"collab @ {label}"
        servers.insert(servers.index("hocuspocus"), f"collab@{label}")
    if not shutil.which("node"):
        print("node is required", file=sys.stderr)
        return 2
    ensure_npm()

    workdir = Path(tempfile.mkdtemp(prefix="collab-live-"))
    secret = secrets.token_urlsafe(48)
    users = [f"u{i}" for i in range(args.editors + args.viewers)]
    exp = int(time.time()) + 86400
    tokens = workdir / "tokens.json"
    tokens.write_text(json.dumps([jwt.encode({"sub": u, "exp": exp}, secret, algorithm="HS256")
                                  for u in users]))
    cfg = dict(editors=args.editors, viewers=args.viewers, rate=args.rate,
               warmup_s=args.warmup, duration_s=args.duration, drain_s=10,
               hard_limit_s=int(args.warmup + args.duration) + 90)
    results: dict[str, list[dict]] = {s: [] for s in servers}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        for rnd in range(args.rounds):
            for name in servers if rnd % 2 == 0 else list(reversed(servers)):
                print(f"round {rnd + 1}/{args.rounds}: {name}", flush=True)
                srv = Running(name, secret, workdir)
                try:
                    results[name].append(live(srv, workdir, tokens, users, **cfg))
                finally:
                    srv.stop()
                time.sleep(0.5)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print()
    print(table(results, servers, started, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

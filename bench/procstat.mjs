// What the load generators read about processes: CPU from /proc/PID/stat, RSS, percentiles.
import { readFileSync } from "node:fs";

const TICK = 100; // clock ticks per second for /proc/PID/stat

/** utime + stime of process ``pid``, in seconds */
export function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / TICK;
}

export function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m[1]);
}

/** this process' own CPU, in seconds */
export function selfCpu() { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; }

/** the p-quantile of an ascending array (null when empty) */
export function pct(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : null;
}

// One colour per user id, the same on every screen: remote carets, selections, names.

function hash(text) {
  let h = 2166136261; // FNV-1a
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 16777619);
  }
  return h >>> 0;
}

function hslToHex(h, s, l) {
  s /= 100;
  l /= 100;
  const k = (n) => (n + h / 30) % 12;
  const a = s * Math.min(l, 1 - l);
  const f = (n) => l - a * Math.max(-1, Math.min(k(n) - 3, Math.min(9 - k(n), 1)));
  return "#" + [f(0), f(8), f(4)].map((x) => Math.round(x * 255).toString(16).padStart(2, "0")).join("");
}

/** {color, colorLight} as y-codemirror.next reads them from awareness (hex strings). */
export function userColor(userId) {
  const hue = hash(String(userId)) % 360;
  const color = hslToHex(hue, 70, 38);
  return { color, colorLight: color + "33" };
}

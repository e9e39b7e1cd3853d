// A tiny element builder: text goes in as text nodes, never as HTML.

/**
 * h("a", {href, testid: "x", onclick}, "text", child) -> an element.
 * Props: "testid" sets data-testid, "className" the class, "on<event>" a listener,
 * null/false leave an attribute out, true sets it empty.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value == null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "testid") {
      el.dataset.testid = value;
    } else if (key === "className") {
      el.className = value;
    } else if (key === "value") {
      el.value = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  el.append(...children.flat(Infinity).filter((c) => c != null && c !== false));
  return el;
}

/** A time as the reader's locale shows it ("" for none). */
export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

/** Ids are [A-Za-z0-9_.:-] (PROTOCOL.md); anything else is escaped, so a link is a link. */
export function routeId(id) {
  return String(id).replace(/[^A-Za-z0-9_.:-]/g, (c) => encodeURIComponent(c));
}

/** A short random id (client_id of a chat message); crypto.randomUUID needs a secure context. */
export function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

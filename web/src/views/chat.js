// A chat (#/chats/<id>): messages (older pages on scrolling up), sending on Enter with
// safe retries, who is typing, who is present. Survives reconnection: it rejoins with
// since_seq and sends what was typed meanwhile.
import { formatTime, h, randomId } from "../dom.js";
import { userColor } from "../colors.js";
import { RETRYABLE } from "../session.js";
import { presenceList } from "./presence.js";

const TYPING_REPEAT_MS = 2000; // "still typing" at most this often
const TYPING_IDLE_MS = 3000; // silence after which we say we stopped
const TYPING_EXPIRE_MS = 6000; // forget another's typing if no word comes
const HISTORY_PAGE = 50;
// a chat left open for days stays this long in the page; older ones page in again
const MAX_SHOWN = 1000;

export function chatView(root, session, { id: chatId }) {
  const socket = session.socket;
  const title = h("h1", null, chatId);
  const banner = h("p", { className: "banner", role: "alert", hidden: true });
  const presence = presenceList(session.userId);
  const older = h("p", { className: "muted older" });
  const messagesEl = h("ol", { className: "messages", testid: "chat-messages", "aria-live": "polite" });
  const outboxEl = h("ol", { className: "outbox", testid: "chat-outbox" });
  const typingEl = h("p", { className: "typing muted", testid: "typing", "aria-live": "polite" });
  const input = h("input", {
    testid: "chat-input", className: "chat-input", autocomplete: "off",
    placeholder: "Write a message, Enter sends", "aria-label": "message", maxlength: 10000,
  });
  const scroller = h("div", { className: "scroller" }, older, messagesEl, outboxEl);
  root.append(h("section", { className: "card chat" },
    h("header", { className: "room-head" }, title, presence.element),
    banner, scroller, typingEl, input));

  const seen = new Map(); // seq -> element
  let oldestSeq = null;
  let newestSeq = 0;
  let hasOlder = false;
  let loadingOlder = false;
  let joined = false;
  let destroyed = false;

  function showBanner(text) {
    banner.textContent = text;
    banner.hidden = !text;
  }

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  }

  function messageElement(message) {
    const mine = message.user_id === session.userId;
    return h("li", { className: mine ? "message mine" : "message", "data-seq": message.seq },
      h("span", { className: "author", style: `color: ${userColor(message.user_id).color}` },
        message.user_id),
      h("span", { className: "text" }, message.content),
      h("time", { datetime: message.created_at }, formatTime(message.created_at)));
  }

  /** Put messages in place by seq, each once (an ack and its broadcast are one message). */
  function addMessages(messages) {
    const stick = nearBottom();
    for (const message of messages) {
      if (message.chat_id !== chatId || seen.has(message.seq)) continue;
      const el = messageElement(message);
      seen.set(message.seq, el);
      if (message.seq > newestSeq) {
        messagesEl.append(el);
        newestSeq = message.seq;
      } else {
        // older than the newest shown: before the first message with a larger seq
        const after = [...messagesEl.children].find((li) => Number(li.dataset.seq) > message.seq);
        messagesEl.insertBefore(el, after ?? null);
      }
      if (oldestSeq === null || message.seq < oldestSeq) oldestSeq = message.seq;
      typers.delete(message.user_id);
    }
    renderTyping();
    if (stick) {
      trim();
      scroller.scrollTop = scroller.scrollHeight;
    }
  }

  /** Drop the oldest shown beyond MAX_SHOWN (only while reading the newest). */
  function trim() {
    while (messagesEl.childElementCount > MAX_SHOWN) {
      const oldest = messagesEl.firstElementChild;
      seen.delete(Number(oldest.dataset.seq));
      oldest.remove();
      hasOlder = true;
    }
    const first = messagesEl.firstElementChild;
    if (first) oldestSeq = Number(first.dataset.seq);
  }

  // -- joining, and rejoining after a reconnection ----------------------------------

  async function join() {
    joined = false;
    try {
      let ack = await session.call("chat:join", newestSeq ? { chat_id: chatId, since_seq: newestSeq }
        : { chat_id: chatId });
      const first = oldestSeq === null;
      title.textContent = ack.chat.title || chatId;
      presence.set(ack.users);
      addMessages(ack.messages);
      if (first) {
        // (seqs start at 1 without gaps: a first message above 1 has older ones before it)
        hasOlder = ack.has_more ?? (ack.messages.length > 0 && ack.messages[0].seq > 1);
        scroller.scrollTop = scroller.scrollHeight;
      }
      // missed more than a page while away: the rest, page by page
      while (ack.has_more && newestSeq && !first && !destroyed) {
        ack = await session.call("chat:join", { chat_id: chatId, since_seq: newestSeq });
        addMessages(ack.messages);
      }
      joined = true;
      showBanner("");
      flush();
      fillScreen();
    } catch (err) {
      if (!RETRYABLE.has(err.code)) {
        showBanner(err.code === "NOT_FOUND" || err.code === "PERMISSION_DENIED"
          ? "This chat does not exist, or you are not a member of it."
          : `Could not open the chat: ${err.message}`);
      }
    }
  }

  // -- older pages, on scrolling up ----------------------------------------------------

  async function loadOlder() {
    if (loadingOlder || !hasOlder || !joined || oldestSeq === null) return;
    loadingOlder = true;
    older.textContent = "Loading older messages...";
    try {
      const ack = await session.call("chat:history",
        { chat_id: chatId, before_seq: oldestSeq, limit: HISTORY_PAGE });
      const before = scroller.scrollHeight;
      addMessages(ack.messages);
      scroller.scrollTop += scroller.scrollHeight - before; // keep what was in view in view
      hasOlder = ack.has_more;
      older.textContent = hasOlder ? "" : "The beginning of the chat.";
    } catch (err) {
      older.textContent = `Could not load older messages: ${err.message}`;
    } finally {
      loadingOlder = false;
    }
    fillScreen();
  }

  /** Until the list overflows, there is no scrolling up to ask for more: ask now. */
  function fillScreen() {
    if (hasOlder && !loadingOlder && scroller.scrollHeight <= scroller.clientHeight) loadOlder();
  }

  scroller.addEventListener("scroll", () => {
    if (scroller.scrollTop < 60) loadOlder();
  });

  // -- sending: an outbox, so nothing typed is lost to a reconnection ---------------------

  const outbox = []; // {client_id, content, el}
  let flushing = false;
  let retryTimer = null;

  function send(content) {
    const item = { client_id: randomId(), content };
    item.el = h("li", { className: "message pending" },
      h("span", { className: "author" }, session.userId),
      h("span", { className: "text" }, content),
      h("span", { className: "muted" }, "sending..."));
    outbox.push(item);
    outboxEl.append(item.el);
    scroller.scrollTop = scroller.scrollHeight;
    flush();
  }

  async function flush() {
    if (flushing || !joined || destroyed) return;
    flushing = true;
    try {
      while (outbox.length && !destroyed) {
        const item = outbox[0];
        try {
          // the same client_id on a retry: the server stores and broadcasts it once
          const ack = await session.call("chat:message",
            { chat_id: chatId, content: item.content, client_id: item.client_id });
          outbox.shift();
          item.el.remove();
          addMessages([ack.message]);
        } catch (err) {
          if (RETRYABLE.has(err.code)) {
            const wait = err.details?.retry_after_ms ?? 1000;
            clearTimeout(retryTimer);
            retryTimer = setTimeout(flush, wait); // also retried on reconnection
            return;
          }
          outbox.shift();
          item.el.classList.add("failed");
          item.el.lastChild.textContent = `not sent: ${err.message}`;
        }
      }
    } finally {
      flushing = false;
    }
  }

  // -- typing -----------------------------------------------------------------------------

  let typingSentAt = 0;
  let idleTimer = null;
  const typers = new Map(); // user_id -> expiry timer

  function sayTyping(typing) {
    if (!joined) return;
    session.call("chat:typing", { chat_id: chatId, typing }).catch(() => {});
  }

  function stopTyping() {
    clearTimeout(idleTimer);
    if (typingSentAt) {
      typingSentAt = 0;
      sayTyping(false);
    }
  }

  input.addEventListener("input", () => {
    if (!input.value) {
      stopTyping();
      return;
    }
    const now = Date.now();
    if (now - typingSentAt > TYPING_REPEAT_MS) {
      typingSentAt = now;
      sayTyping(true);
    }
    clearTimeout(idleTimer);
    idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  });

  input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    event.preventDefault();
    const content = input.value;
    if (!content.trim()) return;
    input.value = "";
    stopTyping();
    send(content);
  });

  function renderTyping() {
    const names = [...typers.keys()].sort();
    typingEl.textContent = !names.length ? ""
      : names.length === 1 ? `${names[0]} is typing...`
        : `${names.join(", ")} are typing...`;
  }

  // -- what the room says -------------------------------------------------------------------

  const handlers = {
    "chat:message": ({ message }) => addMessages([message]),
    "chat:typing": ({ chat_id: id, user_id: userId, typing }) => {
      if (id !== chatId || userId === session.userId) return;
      clearTimeout(typers.get(userId));
      if (typing) {
        typers.set(userId, setTimeout(() => {
          typers.delete(userId);
          renderTyping();
        }, TYPING_EXPIRE_MS));
      } else {
        typers.delete(userId);
      }
      renderTyping();
    },
    "user:joined": ({ chat_id: id, user_id: userId }) => {
      if (id === chatId) presence.add(userId);
    },
    "user:left": ({ chat_id: id, user_id: userId }) => {
      if (id !== chatId) return;
      presence.remove(userId);
      clearTimeout(typers.get(userId));
      typers.delete(userId);
      renderTyping();
    },
    connect: () => join(),
    disconnect: () => {
      joined = false;
    },
  };
  for (const [event, handler] of Object.entries(handlers)) socket.on(event, handler);
  if (session.connected) join();
  input.focus();

  return {
    destroy() {
      destroyed = true;
      for (const [event, handler] of Object.entries(handlers)) socket.off(event, handler);
      clearTimeout(retryTimer);
      clearTimeout(idleTimer);
      for (const timer of typers.values()) clearTimeout(timer);
      if (typingSentAt) sayTyping(false);
      if (session.connected) session.call("chat:leave", { chat_id: chatId }).catch(() => {});
    },
  };
}

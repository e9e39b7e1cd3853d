// A document (#/documents/<id>): CodeMirror 6 bound to the document's Y.Text through
// y-codemirror.next, synced by the Socket.IO provider (clients/js); others' cursors and
// selections from awareness, who is present, the version, and history with restore.
import { EditorView, basicSetup } from "codemirror";
import { Compartment, EditorState } from "@codemirror/state";
import { yCollab } from "y-codemirror.next";
import * as Y from "yjs";
import { Awareness } from "y-protocols/awareness";
import { SocketIOProvider } from "../../../clients/js/src/index.js";
import { userColor } from "../colors.js";
import { formatTime, h } from "../dom.js";
import { presenceList } from "./presence.js";

const HISTORY_PAGE = 20;

const readOnlyWhen = (readOnly) => [
  EditorState.readOnly.of(readOnly),
  EditorView.editable.of(!readOnly),
];

export function documentView(root, session, { id: documentId }) {
  const socket = session.socket;
  const title = h("h1", null, documentId);
  const version = h("span", { className: "version", testid: "version" }, "");
  const roleEl = h("span", { className: "role", testid: "role" }, "");
  const syncEl = h("span", { className: "sync muted", testid: "sync" }, "joining...");
  const banner = h("p", { className: "banner", role: "alert", hidden: true });
  const presence = presenceList(session.userId);
  const editorHost = h("div", { className: "editor-host" },
    h("p", { className: "muted placeholder" }, "Opening the document..."));
  const history = historyPanel(session, documentId);
  root.append(h("div", { className: "document" },
    h("section", { className: "card editor-card" },
      h("header", { className: "room-head" }, title, presence.element),
      h("p", { className: "doc-meta" }, version, " ", roleEl, " ", syncEl),
      banner, editorHost),
    history.element));

  function showBanner(text) {
    banner.textContent = text;
    banner.hidden = !text;
  }

  const doc = new Y.Doc();
  const text = doc.getText("content");
  const awareness = new Awareness(doc);
  // y-codemirror.next draws others' carets and selections from this field
  awareness.setLocalStateField("user", { name: session.userId, ...userColor(session.userId) });
  const undoManager = new Y.UndoManager(text);
  const editable = new Compartment();
  let view = null; // made at the first sync: it opens as the join ack's role allows

  const readOnlyFor = (role) => role === null || role === "viewer";

  function openEditor(role) {
    editorHost.replaceChildren();
    view = new EditorView({
      parent: editorHost,
      state: EditorState.create({
        doc: text.toString(),
        extensions: [
          basicSetup,
          EditorView.lineWrapping,
          yCollab(text, awareness, { undoManager }),
          editable.of(readOnlyWhen(readOnlyFor(role))),
          EditorView.contentAttributes.of({ "data-testid": "editor", "aria-label": "document text" }),
        ],
      }),
    });
  }

  const provider = new SocketIOProvider(socket, documentId, doc, { awareness });
  let joinedOnce = false;

  function applyRole(role) {
    const readOnly = readOnlyFor(role);
    view?.dispatch({ effects: editable.reconfigure(readOnlyWhen(readOnly)) });
    roleEl.textContent = role ? (readOnly ? `${role} (read-only)` : role) : "";
    history.setCanRestore(!readOnly);
  }

  provider.on("role", (role) => {
    // while reconnecting the role is kept (edits stay in the doc and go at the rejoin);
    // null here means a revocation or a refused join
    applyRole(role);
  });
  provider.on("version", (v) => {
    version.textContent = `version ${v}`;
    if (provider.synced) syncEl.textContent = "live"; // (after a "retrying...")
    history.changed(v);
  });
  provider.on("synced", (synced) => {
    syncEl.textContent = synced ? "live" : "offline: edits are kept and sent on reconnection";
    if (!synced) return;
    joinedOnce = true;
    if (view === null) openEditor(provider.role);
    showBanner("");
    version.textContent = `version ${provider.version}`; // (no "version" event for 0)
    const fields = provider.document ?? {};
    title.textContent = fields.title || documentId;
    document.title = `${fields.title || documentId} - collab`;
    history.load(); // (again at each rejoin: versions made while away)
  });
  provider.on("users", (users) => presence.set(users));
  provider.on("error", (error) => {
    if (error.code === "UNAVAILABLE" || error.code === "RATE_LIMITED") {
      // the provider tries again by itself; nothing is lost meanwhile
      syncEl.textContent = "retrying...";
      return;
    }
    if (error.code === "NOT_FOUND" || (error.code === "PERMISSION_DENIED" && !joinedOnce)) {
      showBanner("This document does not exist, or you have no access to it.");
      syncEl.textContent = "";
    } else if (error.code === "PERMISSION_DENIED") {
      showBanner("Your access to this document changed.");
    } else if (error.code === "PAYLOAD_TOO_LARGE") {
      showBanner("That change would make the document too large; it was not saved.");
    } else {
      showBanner(`${error.code}: ${error.message}`);
    }
  });

  const roomEvents = {
    "user:joined": ({ document_id: id, user_id: userId }) => {
      if (id === documentId) presence.add(userId);
    },
    "user:left": ({ document_id: id, user_id: userId }) => {
      if (id === documentId) presence.remove(userId);
    },
  };
  for (const [event, handler] of Object.entries(roomEvents)) socket.on(event, handler);

  return {
    destroy() {
      for (const [event, handler] of Object.entries(roomEvents)) socket.off(event, handler);
      history.destroy();
      provider.destroy(); // documents:leave, and our cursor withdrawn
      view?.destroy();
      undoManager.destroy();
      awareness.destroy();
      doc.destroy();
      document.title = "collab";
    },
  };
}

/** The document's versions, newest last, each viewable and restorable. */
function historyPanel(session, documentId) {
  const list = h("ol", { className: "versions", testid: "history" });
  const older = h("button", { type: "button", className: "more", hidden: true }, "Older versions");
  const preview = h("pre", { className: "preview", testid: "history-preview", hidden: true });
  const state = h("p", { className: "muted" });
  const element = h("section", { className: "card history-card" },
    h("h2", null, "History"), older, list, state, preview);
  let canRestore = false;
  let oldest = null;
  let refreshTimer = null;

  async function load(before = null) {
    try {
      const ack = await session.call("documents:history", before === null
        ? { document_id: documentId, limit: HISTORY_PAGE }
        : { document_id: documentId, before_version: before, limit: HISTORY_PAGE });
      const items = ack.versions.map(entry);
      if (before === null) {
        list.replaceChildren(...items);
        panel.loaded = true;
      } else {
        list.prepend(...items);
      }
      if (ack.versions.length) oldest = ack.versions[0].version;
      older.hidden = !ack.has_more;
      state.textContent = "";
    } catch (err) {
      // offline: the rejoin loads it again
      if (err.code !== "DISCONNECTED") state.textContent = `Could not load the history: ${err.message}`;
    }
  }

  function entry({ version, user_id: userId, created_at: createdAt }) {
    const view = h("button", { type: "button", className: "link" }, "view");
    const restore = h("button", { type: "button", className: "link restore", hidden: !canRestore },
      "restore");
    view.addEventListener("click", async () => {
      try {
        const ack = await session.call("documents:get", { document_id: documentId, version });
        preview.hidden = false;
        preview.textContent = ack.document.content;
        preview.dataset.version = version;
      } catch (err) {
        state.textContent = `Could not show version ${version}: ${err.message}`;
      }
    });
    restore.addEventListener("click", async () => {
      restore.disabled = true;
      try {
        // a new version with that content; it reaches this editor like any change
        const ack = await session.call("documents:restore", { document_id: documentId, version });
        state.textContent = `Restored version ${version} as version ${ack.document.version}.`;
      } catch (err) {
        state.textContent = `Could not restore version ${version}: ${err.message}`;
      } finally {
        restore.disabled = false;
      }
    });
    return h("li", { "data-version": version },
      h("span", null, `version ${version}`),
      h("span", { className: "meta" }, ` ${userId} · ${formatTime(createdAt)} `),
      view, " ", restore);
  }

  older.addEventListener("click", () => {
    if (oldest !== null) load(oldest);
  });

  const panel = {
    element,
    loaded: false,
    load: () => load(null),
    setCanRestore(value) {
      canRestore = value;
      for (const button of list.querySelectorAll(".restore")) button.hidden = !value;
    },
    /** A new version exists: refresh the newest page, at most a few times a second. */
    changed() {
      if (!panel.loaded || refreshTimer !== null) return;
      refreshTimer = setTimeout(() => {
        refreshTimer = null;
        if (session.connected) load(null);
      }, 1000);
    },
    destroy() {
      clearTimeout(refreshTimer);
    },
  };
  return panel;
}

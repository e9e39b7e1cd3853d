// Home (#/): the user's documents and chats, creating them, sharing and inviting.
import { formatTime, h, routeId } from "../dom.js";

const ROLE_CHOICES = [
  ["editor", "can edit"],
  ["viewer", "can view"],
  ["", "no access"],
];

function notice(el, text, kind = "info") {
  el.textContent = text;
  el.dataset.kind = kind;
}

/** A form on one line: fields, a submit button and a place for its outcome. */
function inlineForm({ label, fields, submit, onSubmit, testid }) {
  const outcome = h("span", { className: "outcome", role: "status" });
  const button = h("button", { type: "submit" }, submit);
  const form = h("form", { className: "inline", testid, "aria-label": label },
    ...fields, button, outcome);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    notice(outcome, "");
    try {
      const text = await onSubmit();
      if (text) notice(outcome, text, "ok");
    } catch (err) {
      notice(outcome, err.message, "error");
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

/** A list that loads its pages on demand (documents:list / chat:list cursors). */
function pagedList({ session, event, key, testid, empty, renderItem }) {
  const list = h("ul", { className: "items", testid });
  const more = h("button", { type: "button", className: "more", hidden: true }, "Show more");
  const state = h("p", { className: "muted" });
  let next = null;
  let loading = false;

  async function load(reset) {
    if (loading) return;
    loading = true;
    try {
      const ack = await session.call(event, reset || !next ? {} : { before: next });
      if (reset) list.replaceChildren();
      for (const item of ack[key]) list.append(renderItem(item));
      next = ack.next ?? null;
      more.hidden = !next;
      notice(state, list.childElementCount ? "" : empty);
    } catch (err) {
      notice(state, `Could not load the list: ${err.message}`, "error");
    } finally {
      loading = false;
    }
  }

  more.addEventListener("click", () => load(false));
  return { element: h("div", null, list, state, more), reload: () => load(true) };
}

function documentItem(session, doc) {
  const canShare = doc.role === "owner" || doc.role === "admin";
  const user = h("input", { name: "user_id", placeholder: "user id", required: true,
    autocomplete: "off", "aria-label": "user id to share with" });
  const role = h("select", { name: "role", "aria-label": "role" },
    ROLE_CHOICES.map(([value, text]) => h("option", { value }, text)));
  const share = canShare && h("details", { className: "share" },
    h("summary", null, "Share"),
    inlineForm({
      label: `share ${doc.id}`, testid: "share-form", fields: [user, role], submit: "Share",
      onSubmit: async () => {
        const userId = user.value.trim();
        await session.call("documents:share", {
          document_id: doc.id, user_id: userId, role: role.value || null,
        });
        user.value = "";
        return role.value ? `${userId} ${role.selectedOptions[0].text}` : `${userId} has no access`;
      },
    }));
  return h("li", { "data-id": doc.id },
    h("a", { href: `#/documents/${routeId(doc.id)}` }, doc.title || doc.id),
    h("span", { className: "meta" },
      `${doc.role} · version ${doc.version}`,
      doc.updated_at ? ` · ${formatTime(doc.updated_at)}` : ""),
    share);
}

function chatItem(session, chat) {
  const canInvite = chat.role === "owner" || chat.role === "admin";
  const user = h("input", { name: "user_id", placeholder: "user id", required: true,
    autocomplete: "off", "aria-label": "user id to invite" });
  const invite = canInvite && h("details", { className: "share" },
    h("summary", null, "Invite"),
    inlineForm({
      label: `invite to ${chat.id}`, testid: "invite-form", fields: [user], submit: "Invite",
      onSubmit: async () => {
        const userId = user.value.trim();
        await session.call("chat:invite", { chat_id: chat.id, user_id: userId });
        user.value = "";
        return `${userId} invited`;
      },
    }));
  const last = chat.last_message_at ? ` · last ${formatTime(chat.last_message_at)}` : "";
  return h("li", { "data-id": chat.id },
    h("a", { href: `#/chats/${routeId(chat.id)}` }, chat.title || chat.id),
    h("span", { className: "meta" }, `${chat.role} · ${chat.last_seq} messages${last}`),
    invite);
}

export function homeView(root, session) {
  const documents = pagedList({
    session, event: "documents:list", key: "documents", testid: "document-list",
    empty: "No documents yet.", renderItem: (doc) => documentItem(session, doc),
  });
  const chats = pagedList({
    session, event: "chat:list", key: "chats", testid: "chat-list",
    empty: "No chats yet.", renderItem: (chat) => chatItem(session, chat),
  });

  const docTitle = h("input", { name: "title", placeholder: "title", "aria-label": "new document title",
    testid: "new-document-title", autocomplete: "off" });
  const newDocument = inlineForm({
    label: "new document", testid: "new-document", fields: [docTitle], submit: "New document",
    onSubmit: async () => {
      const ack = await session.call("documents:create", { title: docTitle.value.trim() });
      location.hash = `#/documents/${routeId(ack.document.id)}`;
    },
  });
  const chatTitle = h("input", { name: "title", placeholder: "title", "aria-label": "new chat title",
    testid: "new-chat-title", autocomplete: "off" });
  const members = h("input", { name: "members", placeholder: "members (comma separated)",
    "aria-label": "members", autocomplete: "off" });
  const newChat = inlineForm({
    label: "new chat", testid: "new-chat", fields: [chatTitle, members], submit: "New chat",
    onSubmit: async () => {
      const ids = members.value.split(",").map((m) => m.trim()).filter(Boolean);
      const ack = await session.call("chat:create", { title: chatTitle.value.trim(), members: ids });
      location.hash = `#/chats/${routeId(ack.chat.id)}`;
    },
  });

  const refresh = h("button", { type: "button", className: "link" }, "Refresh");
  root.append(h("div", { className: "home" },
    h("section", { className: "card" },
      h("h1", null, "Documents"), newDocument, documents.element),
    h("section", { className: "card" },
      h("h1", null, "Chats"), newChat, chats.element),
    h("p", { className: "muted" }, refresh)));

  const reload = () => {
    documents.reload();
    chats.reload();
  };
  refresh.addEventListener("click", reload);
  // (re)connected: whatever changed meanwhile shows
  session.socket.on("connect", reload);
  if (session.connected) reload();
  return {
    destroy() {
      session.socket.off("connect", reload);
    },
  };
}

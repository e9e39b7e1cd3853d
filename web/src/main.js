// The web app: sign-in from the URL fragment, one Socket.IO session, views routed by #.
import { forgetToken, storedToken, takeTokenFromUrl } from "./auth.js";
import { h } from "./dom.js";
import { Session, statusText } from "./session.js";
import { chatView } from "./views/chat.js";
import { documentView } from "./views/document.js";
import { homeView } from "./views/home.js";

const viewRoot = document.getElementById("view");
const statusEl = document.getElementById("status");
const whoEl = document.getElementById("who");

let session = null;
let current = null; // the mounted view: {destroy()}

/** "#/documents/x" -> {name: "document", id: "x"}; unknown paths -> not-found. */
export function parseRoute(hash) {
  const path = hash.replace(/^#/, "") || "/";
  let match;
  if ((match = /^\/documents\/([^/]+)$/.exec(path))) {
    return { name: "document", id: decodeURIComponent(match[1]) };
  }
  if ((match = /^\/chats\/([^/]+)$/.exec(path))) {
    return { name: "chat", id: decodeURIComponent(match[1]) };
  }
  if (path === "/") return { name: "home" };
  return { name: "not-found", path };
}

const VIEWS = {
  home: homeView,
  document: documentView,
  chat: chatView,
  "not-found": (root, _session, route) => {
    root.append(h("section", { className: "card" },
      h("h1", null, "Nothing here"),
      h("p", null, `There is no page at ${route.path}. `, h("a", { href: "#/" }, "Home"))));
    return { destroy() {} };
  },
};

function showStatus(status) {
  statusEl.textContent = statusText(status);
  statusEl.dataset.state = status;
  document.body.dataset.connection = status;
  if (status === "signed-out") showSignedOut(session?.expired ? "expired" : "refused");
}

function howToSignIn() {
  return h("p", null,
    "On the machine running collab, run ",
    h("code", null, "collab token YOUR_NAME --url"),
    " and open the URL it prints (it signs you in for this browser tab).");
}

function showSignedOut(why) {
  unmount();
  const reason = {
    none: "You are not signed in.",
    expired: "Your sign-in has expired.",
    refused: "The server did not accept your sign-in.",
  }[why];
  viewRoot.replaceChildren(h("section", { className: "card", testid: "signed-out" },
    h("h1", null, "Sign in to collab"), h("p", null, reason), howToSignIn()));
  if (why !== "none") forgetToken();
}

function unmount() {
  if (current) {
    current.destroy();
    current = null;
  }
  viewRoot.replaceChildren();
}

function route() {
  if (location.hash.startsWith("#token=")) {
    const token = takeTokenFromUrl(); // also replaces the fragment by #/
    if (token) signIn(token);
    else if (!session) showSignedOut("none");
  }
  if (!session || session.status === "signed-out") return;
  unmount();
  const target = parseRoute(location.hash);
  current = VIEWS[target.name](viewRoot, session, target);
}

function signIn(token) {
  if (session) {
    session.signIn(token);
  } else {
    session = new Session(token);
    session.addEventListener("status", (event) => showStatus(event.detail));
  }
  whoEl.textContent = session.userId ? `signed in as ${session.userId}` : "";
  showStatus(session.status);
}

function start() {
  window.addEventListener("hashchange", route);
  const token = takeTokenFromUrl() ?? storedToken();
  if (!token) {
    statusEl.textContent = statusText("signed-out");
    statusEl.dataset.state = "signed-out";
    showSignedOut("none");
    return;
  }
  signIn(token);
  route();
}

start();

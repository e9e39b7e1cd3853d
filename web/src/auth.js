// The sign-in token: taken from #token=... once, then kept in sessionStorage (this tab only).

const KEY = "collab.token";

/** The token in the address bar's fragment, if any: stored, and the fragment replaced by #/. */
export function takeTokenFromUrl() {
  const match = /^#token=([^&]*)/.exec(location.hash);
  if (!match) return null;
  // out of the address bar (and the tab's history) before anything else happens
  history.replaceState(null, "", location.pathname + location.search + "#/");
  const token = decodeURIComponent(match[1]).trim();
  if (!token) return null;
  sessionStorage.setItem(KEY, token);
  return token;
}

export function storedToken() {
  return sessionStorage.getItem(KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
}

/** The token's claims, unverified (the server verifies; this is for showing who you are). */
export function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      Array.from(atob(part), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    const claims = JSON.parse(json);
    return typeof claims === "object" && claims ? claims : null;
  } catch {
    return null;
  }
}

// One Socket.IO connection for the whole page, its status, and acknowledged calls.
import { io } from "socket.io-client";
import { claimsOf } from "./auth.js";

/** A failed call: the server's SocketError, or one of ours (TIMEOUT, DISCONNECTED). */
export class CallError extends Error {
  constructor({ code, message, details }) {
    super(message || code);
    this.code = code;
    this.details = details;
  }
}

/** Codes after which the same call may simply be tried again later. */
export const RETRYABLE = new Set(["TIMEOUT", "DISCONNECTED", "UNAVAILABLE", "RATE_LIMITED"]);

const STATUS_TEXT = {
  connecting: "connecting...",
  connected: "connected",
  reconnecting: "reconnecting...",
  disconnected: "disconnected",
  "signed-out": "signed out",
};

/** The socket's path beside the page, so the app also works under a proxy's prefix. */
function socketPath() {
  const dir = location.pathname.replace(/[^/]*$/, "");
  return dir + "socket.io/";
}

export class Session extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    this.claims = claimsOf(token) ?? {};
    this.status = "connecting";
    this._tokenRejected = false;
    this._retry = null;
    this.socket = io(location.origin, {
      path: socketPath(),
      // read at every (re)connection, so a new sign-in in this tab takes effect
      auth: (cb) => cb({ token: this.token }),
      transports: ["websocket", "polling"],
      tryAllTransports: true, // long-polling where a proxy lets no WebSocket through
      reconnectionDelay: 500,
      reconnectionDelayMax: 5000,
    });
    const socket = this.socket;
    socket.on("connect", () => {
      this._tokenRejected = false;
      this._setStatus("connected");
    });
    socket.on("disconnect", (reason) => this._disconnected(reason));
    socket.on("connect_error", (err) => this._refused(err));
    socket.io.on("reconnect_attempt", () => this._setStatus("reconnecting"));
    socket.on("error", (error) => {
      // the server says so before it drops a connection whose token expired
      if (error?.code === "UNAUTHORIZED") this._tokenRejected = true;
    });
  }

  get userId() {
    return this.claims.sub ?? "";
  }

  get connected() {
    return this.socket.connected;
  }

  /** Whether the token's exp has passed (by this machine's clock). */
  get expired() {
    return typeof this.claims.exp === "number" && this.claims.exp * 1000 <= Date.now();
  }

  /** Use another token from now on (a new #token=... in this tab): reconnect with it. */
  signIn(token) {
    this.token = token;
    this.claims = claimsOf(token) ?? {};
    clearTimeout(this._retry);
    this.socket.disconnect();
    this._setStatus("connecting");
    this.socket.connect();
  }

  close() {
    clearTimeout(this._retry);
    this.socket.disconnect();
  }

  /**
   * Emit ``event`` and resolve with its success ack; reject with a CallError for a
   * failure ack, a timeout, or when not connected (nothing is queued behind the
   * user's back: a call either reaches the server now or fails now).
   */
  async call(event, payload = {}, timeoutMs = 10000) {
    if (!this.socket.connected) {
      throw new CallError({ code: "DISCONNECTED", message: "Not connected to the server" });
    }
    let ack;
    try {
      ack = await this.socket.timeout(timeoutMs).emitWithAck(event, payload);
    } catch {
      throw new CallError({ code: "TIMEOUT", message: `No answer to ${event} in time` });
    }
    if (!ack || ack.ok !== true) {
      throw new CallError(ack?.error ?? { code: "INTERNAL_ERROR", message: "Malformed answer" });
    }
    return ack;
  }

  _setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: status }));
  }

  _disconnected(reason) {
    if (reason === "io client disconnect") {
      this._setStatus("disconnected");
      return;
    }
    if (reason === "io server disconnect") {
      // the server closed us on purpose: an expired token, or a shutdown (a restart)
      if (this._tokenRejected || this.expired) {
        this._setStatus("signed-out");
        return;
      }
      this._setStatus("reconnecting");
      this._scheduleConnect();
      return;
    }
    this._setStatus("reconnecting"); // the manager reconnects by itself
  }

  _refused(err) {
    if (this.socket.active) {
      // a transport failure (the server is down or restarting): the manager retries
      this._setStatus("reconnecting");
      return;
    }
    // refused by the server at the handshake
    if (err?.data?.code === "UNAUTHORIZED") {
      this._setStatus("signed-out");
      return;
    }
    this._setStatus("reconnecting"); // e.g. a connection limit: try again later
    this._scheduleConnect(2000);
  }

  _scheduleConnect(delay = 250) {
    clearTimeout(this._retry);
    this._retry = setTimeout(() => {
      if (!this.socket.connected) this.socket.connect();
    }, delay);
  }
}

export function statusText(status) {
  return STATUS_TEXT[status] ?? status;
}

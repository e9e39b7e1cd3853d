// The anchor: a bare socket.io v4 server doing the same room broadcast as collab.
// usage: node bare_node.mjs PORT SECRET
import { createServer } from "node:http";
import { createHmac, timingSafeEqual } from "node:crypto";
import { Server } from "socket.io";

const port = Number(process.argv[2]);
const secret = process.argv[3];

function verifyHS256(token) {
  // the same checks collab makes on an HS256 token: signature, alg, sub, exp
  const parts = String(token || "").split(".");
  if (parts.length !== 3) return null;
  const header = JSON.parse(Buffer.from(parts[0], "base64url"));
  if (header.alg !== "HS256") return null;
  const mac = createHmac("sha256", secret).update(parts[0] + "." + parts[1]).digest();
  const sig = Buffer.from(parts[2], "base64url");
  if (sig.length !== mac.length || !timingSafeEqual(sig, mac)) return null;
  const claims = JSON.parse(Buffer.from(parts[1], "base64url"));
  if (!claims.sub || !claims.exp || claims.exp * 1000 < Date.now()) return null;
  return claims;
}

const http = createServer((req, res) => {
  if (req.url === "/healthz") { res.writeHead(200); res.end("ok"); return; }
  res.writeHead(404); res.end();
});
const io = new Server(http, { serveClient: false });
let seq = 0;

io.use((socket, next) => {
  const claims = verifyHS256(socket.handshake.auth && socket.handshake.auth.token);
  if (!claims) return next(new Error("unauthorized"));
  socket.data.user = claims.sub;
  next();
});

io.on("connection", (socket) => {
  socket.on("chat:create", (data, ack) => ack({ ok: true, chat: { id: "bench", members: data.members } }));
  socket.on("chat:join", (data, ack) => {
    socket.join("chat_" + data.chat_id);
    ack({ ok: true, chat: { id: data.chat_id }, users: [], messages: [] });
  });
  socket.on("chat:message", (data, ack) => {
    seq += 1;
    const message = {
      id: String(seq), chat_id: data.chat_id, seq, user_id: socket.data.user,
      content: data.content, created_at: new Date().toISOString(),
    };
    io.to("chat_" + data.chat_id).emit("chat:message", { message });
    ack({ ok: true, message });
  });
});

http.listen(port, "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));

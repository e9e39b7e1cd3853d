// The anchor of bench/live.py: Hocuspocus (@hocuspocus/server 4) with its defaults and no
// persistence extension, so documents live in memory only (its onStoreDocument, debounced
// by 2 s, has nothing to call), and the same HS256 JWT check collab makes.
// usage: node hocuspocus.mjs PORT SECRET
import { createHmac, timingSafeEqual } from "node:crypto";
import { Server } from "@hocuspocus/server";

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

const server = new Server({
  port,
  address: "127.0.0.1",
  quiet: true,
  async onAuthenticate({ token }) {
    const claims = verifyHS256(token);
    if (!claims) throw new Error("unauthorized");
    return { user: claims.sub };
  },
  async onRequest({ request, response }) {
    if (request.url === "/healthz") {
      response.writeHead(200);
      response.end("ok");
      throw null; // answered: Hocuspocus' default handler must not write again
    }
  },
});
await server.listen();

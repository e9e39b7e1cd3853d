// What the provider tests share: sockets to the server tests/test_js_client.py started,
// documents made through the protocol, and waiting on events instead of sleeping.

import assert from 'node:assert/strict'
import { io } from 'socket.io-client'
import * as Y from 'yjs'
import { Awareness } from 'y-protocols/awareness'
import { SocketIOProvider } from '../src/index.js'

export const TIMEOUT_MS = 5000

function env (name) {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set: run these tests through tests/test_js_client.py`)
  return value
}

/** Everything one test opened, closed by ``close`` (from ``t.after``). */
export class Session {
  constructor () {
    this.sockets = []
    this.providers = []
    this.awarenesses = []
  }

  /**
   * A connected socket for ``user`` (alice, bob, carol, dave; root, an admin), one Manager each
   * like a browser tab; reconnecting quickly after a transport drop.
   */
  async connect (user, { url = env('COLLAB_URL'), ...options } = {}) {
    const socket = io(url, {
      auth: { token: env(`COLLAB_TOKEN_${user.toUpperCase()}`) },
      transports: ['websocket'],
      forceNew: true,
      reconnectionDelay: 20,
      reconnectionDelayMax: 100,
      timeout: TIMEOUT_MS,
      ...options
    })
    this.sockets.push(socket)
    if (options.autoConnect !== false) await next(socket, 'connect')
    return socket
  }

  /** A provider on a fresh Y.Doc (and an Awareness without its 30-second timeout). */
  bind (socket, documentId, { doc = new Y.Doc(), awareness } = {}) {
    if (awareness === undefined) {
      awareness = new Awareness(doc)
      this.awarenesses.push(awareness)
    }
    const provider = new SocketIOProvider(socket, documentId, doc, { awareness })
    this.providers.push(provider)
    return provider
  }

  close () {
    for (const provider of this.providers) provider.destroy()
    for (const awareness of this.awarenesses) awareness.destroy()
    for (const socket of this.sockets) socket.disconnect()
  }
}

/** The successful result of an acknowledged event; fails the test on ``{ok: false}``. */
export async function request (socket, event, payload) {
  const ack = await socket.timeout(TIMEOUT_MS).emitWithAck(event, payload)
  assert.equal(ack.ok, true, `${event} failed: ${JSON.stringify(ack.error)}`)
  return ack
}

/**
 * A document owned by ``owner``'s user (alice), shared as ``roles`` ({user: role}).
 * Its id is unique per call, so test files never meet each other's documents.
 */
export async function makeDocument (owner, { content = '', roles = {} } = {}) {
  const { document } = await request(owner, 'documents:create', { title: 'provider test', content })
  for (const [user, role] of Object.entries(roles)) {
    await request(owner, 'documents:share', { document_id: document.id, user_id: user, role })
  }
  return document
}

/** The next ``event`` from ``emitter`` (socket.io, lib0 Observable, Y.Doc) whose arguments pass ``accept``. */
export function next (emitter, event, accept = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, handler)
      reject(new Error(`no ${event} within ${TIMEOUT_MS} ms`))
    }, TIMEOUT_MS)
    function handler (...args) {
      if (!accept(...args)) return
      clearTimeout(timer)
      emitter.off(event, handler)
      resolve(args)
    }
    emitter.on(event, handler)
  })
}

/**
 * Resolves once ``check()`` is true, testing it now and after each of ``sources``
 * ([emitter, event] pairs) fires.
 */
export function until (check, sources, what = 'the condition') {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer)
      for (const [emitter, event] of sources) emitter.off(event, test)
    }
    const timer = setTimeout(() => {
      done()
      reject(new Error(`${what} did not hold within ${TIMEOUT_MS} ms`))
    }, TIMEOUT_MS)
    function test () {
      if (!check()) return
      done()
      resolve()
    }
    for (const [emitter, event] of sources) emitter.on(event, test)
    test()
  })
}

/** Resolves when ``provider`` is synced (now or later). */
export function synced (provider) {
  return until(() => provider.synced, [[provider, 'synced']], `${provider.documentId} synced`)
}

/** The events ``socket`` sends, by name, for checks that something was NOT sent. */
export function outgoing (socket) {
  const sent = []
  socket.onAnyOutgoing((event, payload) => sent.push({ event, payload }))
  return sent
}

export const text = (provider) => provider.doc.getText('content').toString()

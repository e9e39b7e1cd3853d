// The stock y-websocket provider for the Python tests (tests/harness.py YjsProviders).
//
// One JSON request per stdin line ({id, op, ...}), answered by one stdout line ({id, ok,
// ...}). What the providers see in between goes out as event lines ({event, name, ...}):
// connection status, sync, closes with their code and reason, the text after every
// document update, awareness states. Providers are named, so one process plays several
// clients. The provider is used as an application would: WebSocketPolyfill (ws, with an
// Authorization header for `bearer`), params {token}, BroadcastChannel off so that two
// providers in this process talk through the server only.

import { createInterface } from 'node:readline'
import * as Y from 'yjs'
import * as authProtocol from 'y-protocols/auth'
import { WebsocketProvider, messageAuth } from 'y-websocket'
import WebSocket from 'ws'

const clients = new Map()

const out = (line) => process.stdout.write(JSON.stringify(line) + '\n')

function client (name) {
  const found = clients.get(name)
  if (found === undefined) throw new Error(`no provider ${name}`)
  return found
}

function withBearer (token) {
  return class extends WebSocket {
    constructor (url, protocols) {
      super(url, protocols, { headers: { Authorization: `Bearer ${token}` } })
    }
  }
}

const states = (awareness) => Object.fromEntries(awareness.getStates())

const ops = {
  open ({ name, url, room, token, bearer, state, client_id: clientID }) {
    const doc = new Y.Doc()
    if (clientID !== undefined) doc.clientID = clientID
    const text = doc.getText('content')
    const provider = new WebsocketProvider(url, room, doc, {
      connect: false,
      params: token === undefined ? {} : { token },
      WebSocketPolyfill: bearer === undefined ? WebSocket : withBearer(bearer),
      disableBc: true
    })
    const event = (kind, fields) => out({ event: kind, name, ...fields })
    provider.on('status', ({ status }) => event('status', { status }))
    provider.on('sync', (synced) => event('sync', { synced }))
    provider.on('connection-close', (e) => event('connection-close', {
      code: e ? e.code : null, reason: e ? e.reason : ''
    }))
    provider.on('closed', ({ code, reason }) => event('closed', { code, reason }))
    provider.on('connection-error', (e) => event('connection-error', {
      message: e && e.message ? e.message : String(e)
    }))
    // y-protocols/auth's permission-denied, which the provider only prints
    provider.messageHandlers[messageAuth] = (_encoder, decoder, p) =>
      authProtocol.readAuthMessage(decoder, p.doc, (_doc, reason) =>
        event('permission-denied', { reason }))
    doc.on('update', () => event('text', { text: text.toString() }))
    provider.awareness.on('change', () => event('awareness', { states: states(provider.awareness) }))
    if (state !== undefined) provider.awareness.setLocalState(state)
    clients.set(name, { doc, text, provider })
    provider.connect()
    return { client_id: doc.clientID }
  },
  insert ({ name, index, text: inserted }) {
    const { text } = client(name)
    text.insert(index, inserted)
    return { text: text.toString() }
  },
  delete ({ name, index, length }) {
    const { text } = client(name)
    text.delete(index, length)
    return { text: text.toString() }
  },
  text ({ name }) {
    return { text: client(name).text.toString() }
  },
  set_awareness ({ name, state }) {
    client(name).provider.awareness.setLocalState(state)
    return {}
  },
  states ({ name }) {
    return { states: states(client(name).provider.awareness) }
  },
  // what an application does with a fresh token after a 4401 close
  reconnect ({ name, token }) {
    const { provider } = client(name)
    provider.params = { token }
    provider.connect()
    return {}
  },
  // the network goes: no close frame, no awareness removal from the client
  cut ({ name }) {
    const { provider } = client(name)
    provider.shouldConnect = false
    provider.ws.terminate()
    return {}
  },
  destroy ({ name }) {
    client(name).provider.destroy()
    clients.delete(name)
    return {}
  }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
for await (const line of lines) {
  if (!line.trim()) continue
  let request = {}
  try {
    request = JSON.parse(line)
    out({ id: request.id, ok: true, ...ops[request.op](request) })
  } catch (err) {
    out({ id: request.id, ok: false, error: String(err && err.stack ? err.stack : err) })
  }
}
for (const { provider } of clients.values()) provider.destroy()
process.exit(0)

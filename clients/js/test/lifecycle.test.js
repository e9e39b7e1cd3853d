// destroy(): leaves the document, stops listening, withdraws the awareness state.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as Y from 'yjs'
import { Awareness } from 'y-protocols/awareness'
import { SocketIOProvider } from '../src/index.js'
import { Session, makeDocument, next, outgoing, request, synced, text, until } from './helpers.js'

const PROVIDER_EVENTS = ['connect', 'disconnect', 'error', 'documents:yupdate', 'documents:awareness']

test('destroy leaves: user:left for the others, no more events either way', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const bob = await s.connect('bob')
  const document = await makeDocument(alice, { content: 'doc', roles: { bob: 'editor' } })
  const a = s.bind(alice, document.id)
  await synced(a)
  const listening = Object.fromEntries(PROVIDER_EVENTS.map((e) => [e, bob.listeners(e).length]))
  const b = s.bind(bob, document.id)
  await synced(b)

  const sent = outgoing(bob)
  const left = next(alice, 'user:left', (presence) => presence.user_id === 'bob')
  const unsynced = next(b, 'synced', (state) => state === false)
  b.destroy()
  const [presence] = await left
  assert.deepEqual(presence, { user_id: 'bob', document_id: document.id })
  await unsynced
  assert.equal(b.destroyed, true)
  assert.deepEqual(sent.map(({ event }) => event).filter((e) => e === 'documents:leave'), ['documents:leave'])
  for (const event of PROVIDER_EVENTS) assert.equal(bob.listeners(event).length, listening[event], event)

  // bob's later edits stay local; alice's no longer reach bob's doc
  b.doc.getText('content').insert(0, 'after destroy ')
  a.doc.getText('content').insert(3, '!')
  await until(() => a.version === 1, [[a, 'version']], "alice's edit stored")
  assert.deepEqual(sent.filter(({ event }) => event === 'documents:yupdate'), [])
  assert.equal(text(b), 'after destroy doc')
  const { document: stored } = await request(alice, 'documents:get', { document_id: document.id })
  assert.equal(stored.content, 'doc!')
  b.destroy() // twice is harmless
})

test('destroy keeps an Awareness it was given, and destroys one it made', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const document = await makeDocument(alice)
  const doc = new Y.Doc()
  const given = new Awareness(doc)
  t.after(() => given.destroy())
  given.setLocalState({ user: 'alice' })
  const withGiven = new SocketIOProvider(alice, document.id, doc, { awareness: given })
  await synced(withGiven)
  assert.equal(withGiven.awareness, given)
  withGiven.destroy()
  assert.equal(given.getLocalState(), null) // our state withdrawn ...
  given.setLocalState({ user: 'alice again' }) // ... but the Awareness still works
  assert.equal(given.getLocalState().user, 'alice again')

  const made = new SocketIOProvider(alice, document.id, new Y.Doc())
  await synced(made)
  let destroyed = false
  made.awareness.on('destroy', () => { destroyed = true })
  made.destroy()
  assert.equal(destroyed, true)
})

test('a destroyed provider does not rejoin when the socket reconnects', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const document = await makeDocument(alice)
  const provider = s.bind(alice, document.id)
  await synced(provider)
  provider.destroy()
  const sent = outgoing(alice)
  const reconnected = next(alice, 'connect')
  alice.io.engine.close()
  await reconnected
  await request(alice, 'documents:get', { document_id: document.id }) // a round trip after connect
  assert.deepEqual(sent.map(({ event }) => event), ['documents:get'])
})

test('users: the room as each join ack lists it, announced with "users"', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const bob = await s.connect('bob')
  const document = await makeDocument(alice, { roles: { bob: 'viewer' } })
  const a = s.bind(alice, document.id)
  assert.deepEqual(a.users, [])
  const [first] = await next(a, 'users')
  assert.deepEqual(first, ['alice'])
  const b = s.bind(bob, document.id)
  const [both] = await next(b, 'users')
  assert.deepEqual([...both].sort(), ['alice', 'bob'])
  assert.deepEqual(b.users, both)
})

test('destroy right after typing sends what was typed before it leaves', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const bob = await s.connect('bob')
  const document = await makeDocument(alice, { content: '', roles: { bob: 'editor' } })
  const a = s.bind(alice, document.id)
  await synced(a)
  const b = s.bind(bob, document.id)
  await synced(b)
  // the first keystroke goes out at once; the others wait for its ack, merged
  for (const ch of 'typed then gone') b.doc.getText('content').insert(b.doc.getText('content').length, ch)
  b.destroy()
  await until(() => text(a) === 'typed then gone', [[a.doc, 'update']], "bob's keystrokes at alice")
  const head = await request(alice, 'documents:get', { document_id: document.id })
  assert.equal(head.document.content, 'typed then gone')
})

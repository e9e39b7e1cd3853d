// Documents bound over two sockets converge, and resync after a reconnection.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as Y from 'yjs'
import { Session, makeDocument, next, request, synced, text, until } from './helpers.js'

test('the join applies the stored state and sets role, version and document', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const document = await makeDocument(alice, { content: 'hello' })
  const provider = s.bind(alice, document.id)
  const [state] = await next(provider, 'synced')
  assert.equal(state, true)
  assert.equal(text(provider), 'hello')
  assert.equal(provider.role, 'owner')
  assert.equal(provider.version, 0)
  assert.equal(provider.document.id, document.id)
  assert.equal(provider.document.title, 'provider test')
})

test('two docs on two sockets: concurrent edits converge, and the server has them', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const bob = await s.connect('bob')
  const document = await makeDocument(alice, { content: 'ab', roles: { bob: 'editor' } })
  const a = s.bind(alice, document.id)
  const b = s.bind(bob, document.id)
  await Promise.all([synced(a), synced(b)])
  assert.equal(b.role, 'editor')

  // both edit the same place before either hears of the other
  a.doc.getText('content').insert(1, 'ALICE')
  b.doc.getText('content').insert(1, 'BOB')
  const converged = () => text(a) === text(b) && text(a).length === 10
  await until(converged, [[a.doc, 'update'], [b.doc, 'update']], 'convergence')
  assert.match(text(a), /^a(ALICEBOB|BOBALICE)b$/)

  // two accepted changes: versions 1 and 2, known to both providers
  await until(() => a.version === 2 && b.version === 2, [[a, 'version'], [b, 'version']], 'version 2')
  const { document: stored } = await request(alice, 'documents:get', { document_id: document.id })
  assert.equal(stored.content, text(a))
  assert.equal(stored.version, 2)
})

test('a provider made before the socket connects joins at connect, once', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const document = await makeDocument(alice, { content: 'x' })
  const later = await s.connect('alice', { autoConnect: false })
  const joins = []
  later.onAnyOutgoing((event) => { if (event === 'documents:join') joins.push(event) })
  const provider = s.bind(later, document.id)
  provider.doc.getText('content').insert(0, 'early') // concurrent with the stored 'x'
  later.connect()
  await synced(provider)
  await until(() => provider.version === 1, [[provider, 'version']], 'version 1')
  assert.equal(joins.length, 1)
  assert.match(text(provider), /^(earlyx|xearly)$/)
  const { document: stored } = await request(alice, 'documents:get', { document_id: document.id })
  assert.equal(stored.content, text(provider))
})

test('reconnection resyncs both ways: offline edits reach the server, missed ones arrive', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const bob = await s.connect('bob')
  const document = await makeDocument(alice, { content: '0123456789', roles: { bob: 'editor' } })
  const a = s.bind(alice, document.id)
  const b = s.bind(bob, document.id)
  await Promise.all([synced(a), synced(b)])

  // the transport drops (not a deliberate disconnect): the Manager reconnects by itself
  const lost = next(a, 'synced', (state) => state === false)
  alice.io.engine.close()
  await lost
  assert.equal(alice.connected, false)
  a.doc.getText('content').insert(0, 'offline ')   // made while disconnected
  b.doc.getText('content').insert(10, ' missed')   // made while alice could not hear
  await until(() => b.version === 1, [[b, 'version']], 'bob stored')

  await next(a, 'synced', (state) => state === true)
  const expected = 'offline 0123456789 missed'
  await until(() => text(a) === expected && text(b) === expected,
    [[a.doc, 'update'], [b.doc, 'update']], 'both texts after the resync')
  await until(() => a.version === 2 && b.version === 2, [[a, 'version'], [b, 'version']], 'version 2')

  // and a newcomer loads exactly that from the server
  const fresh = s.bind(await s.connect('bob'), document.id)
  await synced(fresh)
  assert.equal(text(fresh), expected)
})

test('edits made while a join is in flight are sent from its ack', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const document = await makeDocument(alice, { content: 'base' })
  const doc = new Y.Doc()
  const provider = s.bind(alice, document.id, { doc })
  assert.equal(provider.synced, false) // the join's ack has not come yet
  doc.getText('content').insert(0, 'pending') // concurrent with the stored 'base'
  await synced(provider)
  await until(() => provider.version === 1, [[provider, 'version']], 'version 1')
  assert.match(text(provider), /^(basepending|pendingbase)$/)
  const { document: stored } = await request(alice, 'documents:get', { document_id: document.id })
  assert.equal(stored.content, text(provider))
})

test('over HTTP long-polling too: binary updates both ways', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice', { transports: ['polling'] })
  const bob = await s.connect('bob')
  const document = await makeDocument(alice, { content: 'poll', roles: { bob: 'editor' } })
  const a = s.bind(alice, document.id)
  const b = s.bind(bob, document.id)
  await Promise.all([synced(a), synced(b)])
  assert.equal(alice.io.engine.transport.name, 'polling')
  a.doc.getText('content').insert(4, 'ing')
  await until(() => text(b) === 'polling', [[b.doc, 'update']], "alice's edit at bob")
  b.doc.getText('content').insert(0, 'long-')
  await until(() => text(a) === 'long-polling', [[a.doc, 'update']], "bob's edit at alice")
})

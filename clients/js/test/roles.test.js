// Roles and refusals: a viewer's provider never sends its edits; refusals reach "error".

import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as Y from 'yjs'
import { Session, makeDocument, next, outgoing, request, synced, text, until } from './helpers.js'

const sentUpdates = (sent) => sent.filter(({ event }) => event === 'documents:yupdate')

test('a viewer opens read-only: role "viewer", its edits never sent, others\' applied', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const carol = await s.connect('carol')
  const document = await makeDocument(alice, { content: 'shared', roles: { carol: 'viewer' } })
  const sent = outgoing(carol)
  const doc = new Y.Doc()
  doc.getText('content').insert(0, 'before join ') // the join's exchange must not send it either
  const c = s.bind(carol, document.id, { doc })
  const [role] = await next(c, 'role')
  assert.equal(role, 'viewer')
  await synced(c)
  assert.equal(c.role, 'viewer')
  c.doc.getText('content').insert(0, 'viewer edit ')

  const a = s.bind(alice, document.id)
  await synced(a)
  a.doc.getText('content').insert(6, '!')
  await until(() => c.version === 1 && text(c).includes('shared!'), [[c, 'version']], "alice's edit at carol")
  assert.deepEqual(sentUpdates(sent), [])
  const { document: stored } = await request(alice, 'documents:get', { document_id: document.id })
  assert.equal(stored.content, 'shared!')
  assert.equal(stored.version, 1)
})

test('an editor downgraded to viewer: the refused update is an "error", then role "viewer"', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const bob = await s.connect('bob')
  const document = await makeDocument(alice, { content: 'text', roles: { bob: 'editor' } })
  const b = s.bind(bob, document.id)
  await synced(b)
  assert.equal(b.role, 'editor')
  await request(alice, 'documents:share', { document_id: document.id, user_id: 'bob', role: 'viewer' })

  const refused = next(b, 'error')
  const downgraded = next(b, 'role', (role) => role === 'viewer')
  b.doc.getText('content').insert(0, 'not allowed ')
  const [error] = await refused
  assert.equal(error.code, 'PERMISSION_DENIED')
  await downgraded
  await synced(b) // joined again, read-only now
  const sent = outgoing(bob)
  b.doc.getText('content').insert(0, 'still not ')
  assert.deepEqual(sentUpdates(sent), [])
  const { document: stored } = await request(alice, 'documents:get', { document_id: document.id })
  assert.equal(stored.content, 'text')
  assert.equal(stored.version, 0)
})

test('a revoked member: the server\'s error reaches "error", the provider stops', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const bob = await s.connect('bob')
  const document = await makeDocument(alice, { roles: { bob: 'editor' } })
  const b = s.bind(bob, document.id)
  await synced(b)
  const revoked = next(b, 'error')
  const unsynced = next(b, 'synced', (state) => state === false)
  await request(alice, 'documents:share', { document_id: document.id, user_id: 'bob', role: null })
  const [error] = await revoked
  assert.equal(error.code, 'PERMISSION_DENIED')
  assert.deepEqual(error.details, { document_id: document.id })
  await unsynced
  assert.equal(b.role, null)
  const sent = outgoing(bob)
  b.doc.getText('content').insert(0, 'gone')
  assert.deepEqual(sentUpdates(sent), [])
})

test('a document that does not exist: NOT_FOUND as "error", never synced', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const bob = await s.connect('bob')
  const provider = s.bind(bob, 'no-such-document')
  const [error] = await next(provider, 'error')
  assert.equal(error.code, 'NOT_FOUND')
  assert.equal(typeof error.message, 'string')
  assert.equal(provider.synced, false)
  assert.equal(provider.role, null)
  assert.equal(provider.document, null)
})

test('an update over the content limit: PAYLOAD_TOO_LARGE as "error", nothing stored', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const document = await makeDocument(alice, { content: 'small' })
  const a = s.bind(alice, document.id)
  await synced(a)
  const refused = next(a, 'error')
  a.doc.getText('content').insert(0, 'x'.repeat(600 * 1024)) // over 512 KiB, under the 1 MB packet
  const [error] = await refused
  assert.equal(error.code, 'PAYLOAD_TOO_LARGE')
  assert.equal(typeof error.details.limit, 'number')
  const { document: stored } = await request(alice, 'documents:get', { document_id: document.id })
  assert.equal(stored.content, 'small')
  assert.equal(stored.version, 0)
})

test('an admin without a role on the document joins as "admin" and may edit', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const document = await makeDocument(alice, { content: 'audit' })
  const root = s.bind(await s.connect('root'), document.id)
  await synced(root)
  assert.equal(root.role, 'admin')
  root.doc.getText('content').insert(5, 'ed')
  await until(() => root.version === 1, [[root, 'version']], 'the admin\'s edit stored')
  const { document: stored } = await request(alice, 'documents:get', { document_id: document.id })
  assert.equal(stored.content, 'audited')
})

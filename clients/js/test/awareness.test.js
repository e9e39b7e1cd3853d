// Awareness: relayed between live members, given to newcomers, removed when a member goes.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as decoding from 'lib0/decoding'
import { removeAwarenessStates } from 'y-protocols/awareness'
import { Session, makeDocument, next, synced, until } from './helpers.js'

/** The client ids an awareness update carries (y-protocols' encoding). */
function clientsOf (update) {
  const decoder = decoding.createDecoder(update)
  const ids = []
  for (let n = decoding.readVarUint(decoder); n > 0; n--) {
    ids.push(decoding.readVarUint(decoder))
    decoding.readVarUint(decoder) // clock
    decoding.readVarString(decoder) // state (JSON)
  }
  return ids
}

const stateOf = (provider, other) => provider.awareness.getStates().get(other.doc.clientID)
const changed = (provider) => [[provider.awareness, 'change']]

test('local states reach the others; a newcomer gets them in its join ack', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const bob = await s.connect('bob')
  const document = await makeDocument(alice, { roles: { bob: 'editor', carol: 'viewer' } })
  const a = s.bind(alice, document.id)
  const b = s.bind(bob, document.id)
  a.awareness.setLocalState({ user: 'alice', cursor: 0 }) // before the join: sent at its ack
  await Promise.all([synced(a), synced(b)])
  await until(() => stateOf(b, a)?.user === 'alice', changed(b), "bob sees alice's state")

  b.awareness.setLocalStateField('user', 'bob')
  await until(() => stateOf(a, b)?.user === 'bob', changed(a), "alice sees bob's state")
  a.awareness.setLocalStateField('cursor', 5)
  await until(() => stateOf(b, a)?.cursor === 5, changed(b), "bob sees alice's new cursor")

  // a viewer joins later: both states at once, from the ack alone
  const c = s.bind(await s.connect('carol'), document.id)
  await synced(c)
  assert.equal(stateOf(c, a)?.cursor, 5)
  assert.equal(stateOf(c, b)?.user, 'bob')
})

test('a provider announces only its own client id, never states it received', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const bob = await s.connect('bob')
  const document = await makeDocument(alice, { roles: { bob: 'editor' } })
  const sent = []
  bob.onAnyOutgoing((event, payload) => {
    if (event === 'documents:awareness') sent.push(clientsOf(payload.update))
  })
  const a = s.bind(alice, document.id)
  const b = s.bind(bob, document.id)
  await Promise.all([synced(a), synced(b)])
  a.awareness.setLocalState({ user: 'alice' })
  await until(() => stateOf(b, a) !== undefined, changed(b), "bob sees alice's state")
  b.awareness.setLocalState({ user: 'bob' })
  await until(() => stateOf(a, b) !== undefined, changed(a), "alice sees bob's state")
  // alice's state timing out at bob's (a throttled tab) is bob's own business
  removeAwarenessStates(b.awareness, [a.doc.clientID], 'timeout')
  assert.equal(stateOf(b, a), undefined)
  b.awareness.setLocalStateField('cursor', 3)
  await until(() => stateOf(a, b)?.cursor === 3, changed(a), "bob's cursor at alice")
  assert.ok(sent.length > 0)
  assert.deepEqual([...new Set(sent.flat())], [b.doc.clientID])
})

test('destroy and disconnect remove the state from the others at once', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const bob = await s.connect('bob')
  const carol = await s.connect('carol')
  const document = await makeDocument(alice, { roles: { bob: 'editor', carol: 'viewer' } })
  const a = s.bind(alice, document.id)
  const b = s.bind(bob, document.id)
  const c = s.bind(carol, document.id)
  await Promise.all([synced(a), synced(b), synced(c)])
  b.awareness.setLocalState({ user: 'bob' })
  c.awareness.setLocalState({ user: 'carol' })
  await until(() => stateOf(a, b) !== undefined && stateOf(a, c) !== undefined, changed(a), 'both states')

  b.destroy()
  await until(() => stateOf(a, b) === undefined, changed(a), "bob's state removed after destroy")
  assert.ok(stateOf(a, c) !== undefined)

  // the server removes what carol's connection announced (no 30-second timeout)
  const gone = next(a.awareness, 'change', ({ removed }) => removed.includes(c.doc.clientID))
  carol.disconnect()
  await gone
  assert.equal(stateOf(a, c), undefined)
})

test("a dropped connection forgets the others' states until its rejoin brings them back", async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const alice = await s.connect('alice')
  const bob = await s.connect('bob')
  const document = await makeDocument(alice, { roles: { bob: 'editor' } })
  const a = s.bind(alice, document.id)
  const b = s.bind(bob, document.id)
  await Promise.all([synced(a), synced(b)])
  b.awareness.setLocalState({ user: 'bob' })
  await until(() => stateOf(a, b) !== undefined, changed(a), "bob's state")

  const lost = next(a, 'synced', (state) => state === false)
  alice.io.engine.close()
  await lost
  assert.equal(stateOf(a, b), undefined)
  assert.deepEqual(a.awareness.getStates().has(a.doc.clientID), true) // (its own stays)
  await next(a, 'synced', (state) => state === true)
  assert.equal(stateOf(a, b)?.user, 'bob')
})

// Refusals that may succeed later (RATE_LIMITED) are retried; nothing is lost meanwhile.
// Against a second server with a tight rate limit: COLLAB_URL_LIMITED (2 events a
// second, bursts of 3), started by tests/test_js_client.py.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import { Session, makeDocument, next, request, synced, text, until } from './helpers.js'

test('a rate-limited update is sent again after retry_after_ms, merged with later edits', async (t) => {
  const s = new Session()
  t.after(() => s.close())
  const url = process.env.COLLAB_URL_LIMITED
  assert.ok(url, 'COLLAB_URL_LIMITED is not set')
  const owner = await s.connect('alice', { url })
  const document = await makeDocument(owner, { content: 'limited' }) // 1 event
  const alice = await s.connect('alice', { url })
  const a = s.bind(alice, document.id) // its join: 1 event of alice's burst of 3
  await synced(a)
  // spend what is left of the burst, and more
  const gets = await Promise.all([1, 2, 3, 4].map(() =>
    alice.emitWithAck('documents:get', { document_id: document.id })))
  assert.ok(gets.some((ack) => !ack.ok && ack.error.code === 'RATE_LIMITED'))

  const limited = next(a, 'error')
  a.doc.getText('content').insert(7, ' one')
  const [error] = await limited
  assert.equal(error.code, 'RATE_LIMITED')
  assert.ok(error.details.retry_after_ms > 0)
  a.doc.getText('content').insert(11, ' two') // waits for the retry, and goes with it
  await until(() => a.version > 0, [[a, 'version']], 'the retried update stored')
  assert.equal(text(a), 'limited one two')
  const { document: stored } = await request(owner, 'documents:get', { document_id: document.id })
  assert.equal(stored.content, 'limited one two')
  assert.equal(stored.version, 1) // one merged update, one version
})

// A typed use of @collab/client and of the protocol, checked by `tsc --noEmit`
// (never run). Each @ts-expect-error line is a mistake the declarations must catch:
// tsc fails if one of them compiles.

import { io } from 'socket.io-client'
import * as Y from 'yjs'
import { Awareness } from 'y-protocols/awareness'
import {
  SocketIOProvider,
  type AckOf,
  type CollabSocket,
  type ConnectRefusal,
  type DocumentAccess,
  type SocketError
} from '@collab/client'

const socket: CollabSocket = io('http://127.0.0.1:8000', { auth: { token: 'a JWT' } })

socket.on('connect_error', (err) => {
  const refusal = err as ConnectRefusal
  if (refusal.data?.code === 'UNAUTHORIZED') console.log('sign in again:', refusal.data.message)
})

// -- acks are typed per event, and narrowed by ok --------------------------------
socket.emit('documents:join', { document_id: 'report' }, (ack) => {
  if (ack.ok) {
    const title: string = ack.document.title
    const role: DocumentAccess = ack.role
    const users: string[] = ack.users
    console.log(title, role, users)
  } else {
    describe(ack.error)
  }
})

socket.emit('documents:join', { document_id: 'report', state_vector: Y.encodeStateVector(new Y.Doc()) },
  (ack) => {
    if (ack.ok && ack.update !== undefined) Y.applyUpdate(new Y.Doc(), new Uint8Array(ack.update))
  })

async function listing (): Promise<void> {
  const page = await socket.timeout(5000).emitWithAck('documents:list', { limit: 20 })
  if (page.ok) {
    for (const row of page.documents) console.log(row.id, row.role, row.version, row.updated_at)
    if (page.next !== undefined) await socket.emitWithAck('documents:list', { before: page.next })
  }
  const chats = await socket.emitWithAck('chat:list', {})
  if (chats.ok) for (const chat of chats.chats) console.log(chat.last_seq, chat.last_message_at ?? 'none')
  const history: AckOf<'documents:history'> =
    await socket.emitWithAck('documents:history', { document_id: 'report', before_version: 10 })
  if (history.ok) console.log(history.versions.map((v) => v.version), history.has_more)
  const old = await socket.emitWithAck('documents:get', { document_id: 'report', version: 3 })
  if (old.ok) console.log(old.document.content)
  await socket.emitWithAck('documents:restore', { document_id: 'report', version: 3 })
  const refreshed = await socket.emitWithAck('auth:refresh', { token: 'a fresh JWT' })
  if (refreshed.ok) console.log(refreshed.expires_at)
  const sent = await socket.emitWithAck('chat:message', { chat_id: 'general', content: 'hi', client_id: 'c1' })
  if (sent.ok) console.log(sent.message.seq)
  const joined = await socket.emitWithAck('chat:join', { chat_id: 'general', since_seq: 4 })
  if (joined.ok) console.log(joined.messages.length, joined.has_more, joined.chat.members)
  await socket.emitWithAck('chat:typing', { chat_id: 'general', typing: true })
  await socket.emitWithAck('documents:share', { document_id: 'report', user_id: 'bob', role: null })
}

// -- errors narrow by code -------------------------------------------------------
function describe (error: SocketError): string {
  switch (error.code) {
    case 'VERSION_CONFLICT':
      return `now at ${error.details.current_version}: ${error.details.document.content}`
    case 'RATE_LIMITED':
      return `retry in ${error.details.retry_after_ms} ms`
    case 'PAYLOAD_TOO_LARGE':
      return `at most ${error.details.limit}`
    case 'INTERNAL_ERROR':
      return `report ${error.details.error_id}`
    case 'INVALID_INPUT':
      return JSON.stringify(error.details ?? {})
    case 'PERMISSION_DENIED':
      return error.details !== undefined && 'document_id' in error.details
        ? `lost ${error.details.document_id}`
        : error.message
    case 'UNAUTHORIZED':
    case 'NOT_FOUND':
    case 'ALREADY_EXISTS':
    case 'UNAVAILABLE':
      return error.message
    default: {
      const unreachable: never = error // the union is closed
      return unreachable
    }
  }
}

// -- server events ---------------------------------------------------------------
socket.on('documents:yupdate', ({ document_id: id, update, version, user_id: user }) => {
  console.log(id, new Uint8Array(update).length, version, user)
})
socket.on('user:joined', (presence) => {
  if ('document_id' in presence) console.log(presence.user_id, 'opened', presence.document_id)
})
socket.on('chat:message', ({ message }) => console.log(message.client_id ?? 'no client id'))
socket.on('error', (error) => console.log(describe(error)))

// -- the provider ----------------------------------------------------------------
const doc = new Y.Doc()
const provider = new SocketIOProvider(socket, 'report', doc, { awareness: new Awareness(doc) })
provider.on('synced', (synced: boolean) => console.log('synced', synced, provider.version))
provider.on('role', (role) => { if (role === 'viewer') console.log('read-only') })
provider.on('version', (version: number) => console.log(version))
provider.on('error', (error) => console.log(describe(error)))
provider.awareness.setLocalStateField('user', { name: 'Alice' })
const title: string | undefined = provider.document?.title
console.log(title, provider.role, provider.synced)
provider.destroy()

// -- mistakes the declarations catch ---------------------------------------------
// @ts-expect-error: no such event
socket.emit('documents:delete', { document_id: 'report' }, () => {})
// @ts-expect-error: document_id is required
socket.emit('documents:join', {}, () => {})
// @ts-expect-error: version is a number
socket.emit('documents:update', { document_id: 'report', content: 'x', version: '2' }, () => {})
// @ts-expect-error: owner cannot be granted by sharing
socket.emit('documents:share', { document_id: 'report', user_id: 'bob', role: 'owner' }, () => {})
socket.emit('documents:update', { document_id: 'report', content: 'x', version: 2 }, (ack) => {
  // @ts-expect-error: a failed ack has no document; narrow on ack.ok first
  console.log(ack.document)
})
// @ts-expect-error: the provider emits no such event
provider.on('connected', () => {})
// @ts-expect-error: synced is read-only
provider.synced = true
void listing()

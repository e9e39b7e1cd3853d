// SocketIOProvider: one Y.Doc and one Awareness bound to one collab document over an
// existing socket.io-client socket (PROTOCOL.md, "Live documents: Yjs").
//
// The socket is the application's: the provider never connects, disconnects or
// authenticates it, and it listens only to the events of its own document.

import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'
import { ObservableV2 } from 'lib0/observable'

// codes after which the same request may succeed later (PROTOCOL.md, the error table)
const RETRYABLE = new Set(['UNAVAILABLE', 'RATE_LIMITED'])
const FIRST_RETRY_MS = 250
const MAX_RETRY_MS = 10000

// Socket.IO binary attachments arrive as Buffer in Node (a Uint8Array already)
// and as ArrayBuffer in browsers
const bytes = (data) => data instanceof Uint8Array ? data : new Uint8Array(data)

// a Yjs update (format v1) that holds nothing: no structs, an empty delete set
const isEmptyUpdate = (update) => update.length === 2 && update[0] === 0 && update[1] === 0

export class SocketIOProvider extends ObservableV2 {
  /**
   * @param {import('socket.io-client').Socket} socket connected or not; the provider
   *   joins on every "connect", so it also resyncs after each reconnection
   * @param {string} documentId
   * @param {Y.Doc} doc
   * @param {{awareness?: awarenessProtocol.Awareness}} [options]
   */
  constructor (socket, documentId, doc, { awareness } = {}) {
    super()
    this.socket = socket
    this.documentId = documentId
    this.doc = doc
    this._ownsAwareness = awareness === undefined
    this.awareness = awareness ?? new awarenessProtocol.Awareness(doc)
    this.synced = false
    this.role = null
    this.version = 0
    this.document = null
    // who is in the document's room, as the latest join ack listed them (the app
    // follows user:joined / user:left from there)
    this.users = []
    this.destroyed = false
    // one join per connection: acks of an older one (before a disconnect or a
    // newer join) are ignored, because their state vector no longer describes us
    this._session = 0
    // at most one documents:yupdate in flight; what the doc makes meanwhile is
    // merged into one pending update, so a fast typist costs one event per round trip
    this._inFlight = null
    this._pending = null
    this._retryTimer = null
    this._retryMs = FIRST_RETRY_MS
    // a refused documents:yupdate rejoins once to learn the new role, not in a loop
    this._roleRechecked = false

    this._onDocUpdate = (update, origin) => {
      if (origin !== this) this._queue(update)
    }
    this._onAwarenessUpdate = ({ added, updated, removed }, origin) => {
      // only our own state: not those the server sent us (origin this), nor the
      // others' that the Awareness's 30-second timeout removed here, which would
      // remove live members' cursors everywhere
      if (origin === this) return
      const own = this.awareness.clientID
      if (added.includes(own) || updated.includes(own) || removed.includes(own)) this._sendAwareness([own])
    }
    this._onConnect = () => this._join()
    this._onDisconnect = () => this._stop()
    this._onYUpdate = (data) => {
      if (data.document_id !== this.documentId) return
      Y.applyUpdate(this.doc, bytes(data.update), this)
      this._setVersion(data.version)
    }
    this._onSocketError = (error) => {
      // a revocation: the server took this connection out of the document's room
      const details = error && error.details
      if (error.code !== 'PERMISSION_DENIED' || !details || details.document_id !== this.documentId) return
      this._stop()
      this._setRole(null)
      this.emit('error', [error])
    }
    this._onAwareness = (data) => {
      if (data.document_id !== this.documentId) return
      awarenessProtocol.applyAwarenessUpdate(this.awareness, bytes(data.update), this)
    }

    doc.on('update', this._onDocUpdate)
    this.awareness.on('update', this._onAwarenessUpdate)
    socket.on('connect', this._onConnect)
    socket.on('disconnect', this._onDisconnect)
    socket.on('documents:yupdate', this._onYUpdate)
    socket.on('documents:awareness', this._onAwareness)
    socket.on('error', this._onSocketError)
    // an emit on a disconnected socket would be buffered and sent at connect, next
    // to the join "connect" triggers: join now only if the socket is up
    if (socket.connected) this._join()
  }

  /** Join live: send our state vector; the ack brings what we lack and what the server lacks. */
  _join () {
    if (this.destroyed) return
    this._clearRetry()
    const session = ++this._session
    this._inFlight = null
    this._pending = null
    this._setSynced(false) // (a rejoin on a live connection: synced again at its ack)
    this.socket.emit('documents:join', {
      document_id: this.documentId,
      state_vector: Y.encodeStateVector(this.doc)
    }, (ack) => {
      if (session !== this._session || this.destroyed) return
      if (!ack || !ack.ok) {
        this._failed(ack, () => this._join())
        return
      }
      this._retryMs = FIRST_RETRY_MS
      this.document = ack.document
      this.users = Array.isArray(ack.users) ? ack.users : []
      this._setRole(ack.role)
      this._setVersion(ack.document.version)
      Y.applyUpdate(this.doc, bytes(ack.update), this)
      if (ack.awareness) {
        awarenessProtocol.applyAwarenessUpdate(this.awareness, bytes(ack.awareness), this)
      }
      // what we have and the server lacks: edits made offline or before this ack
      const missing = Y.encodeStateAsUpdate(this.doc, bytes(ack.state_vector))
      this.synced = true // (what _queue and _sendAwareness wait for; announced below)
      if (!isEmptyUpdate(missing)) this._queue(missing)
      if (this.awareness.getLocalState() !== null) this._sendAwareness([this.awareness.clientID])
      this.emit('users', [this.users])
      this.emit('synced', [true])
    })
  }

  _canWrite () {
    return this.synced && this.role !== 'viewer' && this.socket.connected && !this.destroyed
  }

  /** Send ``update`` now, or merge it into the pending one while another is in flight. */
  _queue (update) {
    if (!this._canWrite()) return // kept in the doc; the next join's exchange sends it
    this._pending = this._pending === null ? update : Y.mergeUpdates([this._pending, update])
    this._flush()
  }

  _flush () {
    if (this._inFlight !== null || this._pending === null || this._retryTimer !== null) return
    if (!this._canWrite()) return
    const update = this._pending
    const session = this._session
    this._pending = null
    this._inFlight = update
    this.socket.emit('documents:yupdate', { document_id: this.documentId, update }, (ack) => {
      if (session !== this._session || this.destroyed) return
      this._inFlight = null
      if (ack && ack.ok) {
        this._retryMs = FIRST_RETRY_MS
        this._roleRechecked = false
        this._setVersion(ack.version)
        this._flush()
        return
      }
      if (ack && ack.error && RETRYABLE.has(ack.error.code)) {
        // not stored: send it again, with whatever came meanwhile
        this._pending = this._pending === null ? update : Y.mergeUpdates([update, this._pending])
        this._failed(ack, () => this._flush())
        return
      }
      // refused for good (too large, undecodable, a lost role): the server has none of it
      this._pending = null
      this._failed(ack, null)
      if (ack && ack.error && ack.error.code === 'PERMISSION_DENIED' && !this._roleRechecked) {
        // our role changed since the join: join again to learn it (a viewer's provider
        // then stops sending; a revoked one gets the join's refusal as "error")
        this._roleRechecked = true
        this._join()
      }
    })
  }

  _sendAwareness (clients) {
    if (!this.synced || !this.socket.connected || this.destroyed || clients.length === 0) return
    const update = awarenessProtocol.encodeAwarenessUpdate(this.awareness, clients)
    const session = this._session
    this.socket.emit('documents:awareness', { document_id: this.documentId, update }, (ack) => {
      // awareness is ephemeral: the next local change or renewal sends the state again
      if (session === this._session && !this.destroyed && !(ack && ack.ok)) this._failed(ack, null)
    })
  }

  /** Surface a failed ack as "error"; schedule ``retry`` if its code says it may succeed later. */
  _failed (ack, retry) {
    const error = ack && ack.error
      ? ack.error
      : { code: 'INTERNAL_ERROR', message: 'The server sent no acknowledgement result' }
    this.emit('error', [error])
    if (retry === null || !RETRYABLE.has(error.code)) return
    const hinted = error.details && Number(error.details.retry_after_ms)
    const delay = hinted > 0 ? hinted : this._retryMs
    this._retryMs = Math.min(this._retryMs * 2, MAX_RETRY_MS)
    this._clearRetry()
    const session = this._session
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null
      if (session === this._session && !this.destroyed) retry()
    }, delay)
  }

  _clearRetry () {
    if (this._retryTimer !== null) clearTimeout(this._retryTimer)
    this._retryTimer = null
  }

  /**
   * No longer a live member (the connection went, or access was revoked): nothing
   * in flight will be acked, and the next join (at "connect") resyncs.
   */
  _stop () {
    this._session++
    this._clearRetry()
    this._inFlight = null
    this._pending = null
    this._setSynced(false)
    this._forgetOthers()
  }

  /**
   * Drop the others' awareness states: stale until the next join's ack brings the
   * current ones. Not by removeAwarenessStates, which raises each one's clock, so
   * that the same states in that ack (same clocks) would be refused as old.
   */
  _forgetOthers () {
    const others = []
    for (const id of this.awareness.getStates().keys()) {
      if (id !== this.awareness.clientID) others.push(id)
    }
    if (others.length === 0) return
    for (const id of others) {
      this.awareness.states.delete(id)
      this.awareness.meta.delete(id)
    }
    const change = { added: [], updated: [], removed: others }
    this.awareness.emit('change', [change, this])
    this.awareness.emit('update', [change, this])
  }

  _setSynced (synced) {
    if (this.synced === synced) return
    this.synced = synced
    this.emit('synced', [synced])
  }

  _setRole (role) {
    role = role ?? null
    if (this.role === role) return
    this.role = role
    this.emit('role', [role])
  }

  _setVersion (version) {
    // versions only grow; an ack can arrive after a newer broadcast
    if (typeof version !== 'number' || version <= this.version) return
    this.version = version
    this.emit('version', [version])
  }

  /** Leave the document, stop listening, and withdraw our awareness state. */
  destroy () {
    if (this.destroyed) return
    if (this.synced && this.awareness.getLocalState() !== null) {
      // tells the others at once (the server would also remove it at the leave)
      awarenessProtocol.removeAwarenessStates(this.awareness, [this.awareness.clientID], 'destroy')
    }
    if (this._pending !== null && this._canWrite()) {
      // edits made since the update in flight: sent before the leave, which the server
      // handles after them (one connection's events run in order), or they would be
      // gone with the doc of a page that moves on
      this.socket.emit('documents:yupdate', { document_id: this.documentId, update: this._pending },
        () => {})
    }
    if (this.socket.connected) {
      this.socket.emit('documents:leave', { document_id: this.documentId }, () => {})
    }
    this.destroyed = true
    this._session++
    this._clearRetry()
    this._inFlight = null
    this._pending = null
    this._setSynced(false)
    this.doc.off('update', this._onDocUpdate)
    this.awareness.off('update', this._onAwarenessUpdate)
    this.socket.off('connect', this._onConnect)
    this.socket.off('disconnect', this._onDisconnect)
    this.socket.off('documents:yupdate', this._onYUpdate)
    this.socket.off('documents:awareness', this._onAwareness)
    this.socket.off('error', this._onSocketError)
    if (this._ownsAwareness) this.awareness.destroy()
    super.destroy()
  }
}

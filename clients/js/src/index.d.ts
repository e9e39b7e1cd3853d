// Types for @collab/client and for the collab wire protocol (docs: PROTOCOL.md, v2).
//
// Hand-written, true to the server (collab/schemas.py, collab/handlers/*.py). A
// socket typed as ``CollabSocket`` checks every event name, payload and ack:
//
//   const socket: CollabSocket = io(url, { auth: { token } })
//   socket.emit('documents:join', { document_id: 'report' }, (ack) => {
//     if (ack.ok) console.log(ack.document.title); else console.error(ack.error.code)
//   })

import type { Socket } from 'socket.io-client'
import type * as Y from 'yjs'
import type { Awareness } from 'y-protocols/awareness'
import { ObservableV2 } from 'lib0/observable'

// -- values ----------------------------------------------------------------------

/** A resource id: 1 to 128 characters from ``[A-Za-z0-9_.:-]``. */
export type Id = string
/** A user id: a token's ``sub`` (1 to 256 characters). */
export type UserId = string
/** An ISO 8601 UTC time with milliseconds, e.g. ``2026-01-02T03:04:05.678Z``. */
export type Timestamp = string
/** An opaque paging cursor: a page's ``next``, passed back as ``before``. */
export type Cursor = string

/**
 * Bytes as sent: a Socket.IO binary attachment (a Yjs update, state vector or
 * awareness update, format v1).
 */
export type Binary = Uint8Array
/**
 * Bytes as received: a ``Buffer`` (a Uint8Array) in Node, an ``ArrayBuffer`` in
 * browsers; wrap it: ``new Uint8Array(received)``.
 */
export type ReceivedBinary = Uint8Array | ArrayBuffer

/** A stored role on a document. */
export type DocumentRole = 'owner' | 'editor' | 'viewer'
/** What a join answers: the stored role, or ``admin`` for a token with the admin role. */
export type DocumentAccess = DocumentRole | 'admin'
/** What ``documents:share`` may grant (``null`` revokes). */
export type SharedRole = 'editor' | 'viewer'
export type ChatRole = 'owner' | 'member'
export type ChatAccess = ChatRole | 'admin'

// -- resources -------------------------------------------------------------------

export interface Document {
  id: Id
  title: string
  /** The ``Y.Text`` named ``content`` as a string. */
  content: string
  /** 0 at creation, +1 with each accepted change. */
  version: number
  created_by: UserId
  created_at: Timestamp
  updated_by: UserId
  updated_at: Timestamp
}

export interface Chat {
  id: Id
  title: string
  created_by: UserId
  created_at: Timestamp
  /** The owner first, then the others in the order they were added. */
  members: UserId[]
}

export interface Message {
  id: Id
  chat_id: Id
  /** Per chat, from 1, without gaps, in commit order. */
  seq: number
  user_id: UserId
  content: string
  created_at: Timestamp
  /** Present when the sender gave one (safe retries). */
  client_id?: Id
}

/** One entry of ``documents:history``. Version 0 is the creation. */
export interface VersionEntry {
  version: number
  user_id: UserId
  created_at: Timestamp
}

/** One row of ``documents:list``. */
export interface DocumentListing {
  id: Id
  title: string
  role: DocumentRole
  version: number
  updated_at: Timestamp
}

/** One row of ``chat:list``. */
export interface ChatListing {
  id: Id
  title: string
  role: ChatRole
  /** 0 for a chat without messages. */
  last_seq: number
  /** null for a chat without messages. */
  last_message_at: Timestamp | null
}

/** A document's access list: user id to role (the owner included). */
export type Acl = Record<UserId, DocumentRole>

// -- errors ----------------------------------------------------------------------

/** The closed set of error codes: switch on ``error.code``. */
export type ErrorCode =
  | 'UNAUTHORIZED'
  | 'INVALID_INPUT'
  | 'PERMISSION_DENIED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'VERSION_CONFLICT'
  | 'RATE_LIMITED'
  | 'PAYLOAD_TOO_LARGE'
  | 'UNAVAILABLE'
  | 'INTERNAL_ERROR'

/** Validation messages per field (marshmallow's shape: nested for nested fields). */
export interface FieldErrors {
  [field: string]: string[] | FieldErrors
}

interface ErrorBody<C extends ErrorCode, D> {
  code: C
  /** Human readable; never exception text. */
  message: string
  details: D
}
interface ErrorWithoutDetails<C extends ErrorCode> {
  code: C
  message: string
  details?: undefined
}

/**
 * A failure, in a ``{ok: false}`` ack and in the ``error`` event. A discriminated
 * union: ``switch (error.code)`` narrows ``details``.
 */
export type SocketError =
  | ErrorWithoutDetails<'UNAUTHORIZED' | 'NOT_FOUND' | 'ALREADY_EXISTS' | 'UNAVAILABLE'>
  /** ``details``: per-field messages, when a payload failed validation. */
  | (Omit<ErrorBody<'INVALID_INPUT', FieldErrors>, 'details'> & { details?: FieldErrors })
  /**
   * In an ack, no details. As an ``error`` event after a revocation (the server
   * also took the connection out of the room): which resource.
   */
  | (Omit<ErrorBody<'PERMISSION_DENIED', never>, 'details'> &
      { details?: { document_id: Id } | { chat_id: Id } })
  | ErrorBody<'VERSION_CONFLICT', { current_version: number, document: Document }>
  /** ``limit`` is there when the user holds too many connections. */
  | ErrorBody<'RATE_LIMITED', { retry_after_ms: number, limit?: number }>
  | ErrorBody<'PAYLOAD_TOO_LARGE', { limit: number }>
  | ErrorBody<'INTERNAL_ERROR', { error_id: string }>

/** ``connect_error``'s error when the server refused the handshake. */
export interface ConnectRefusal extends Error {
  data?: ErrorWithoutDetails<'UNAUTHORIZED'>
}

// -- acknowledgements ------------------------------------------------------------

export type AckSuccess<R> = { ok: true } & R
export interface AckFailure {
  ok: false
  error: SocketError
}
/** Every client-to-server event is acknowledged with one of these. */
export type Ack<R> = AckSuccess<R> | AckFailure
export type AckCallback<R> = (ack: Ack<R>) => void
/** An empty result: ``{ok: true}``. */
export type Empty = Record<never, never>

// -- payloads and results, client to server --------------------------------------

export interface DocumentCreatePayload {
  /** Generated when omitted; ``ALREADY_EXISTS`` when taken. */
  document_id?: Id
  title?: string
  content?: string
}
export interface DocumentCreateResult { document: Document }

export interface DocumentSharePayload {
  document_id: Id
  user_id: UserId
  /** ``null`` revokes (and takes the user's connections out of the room). */
  role: SharedRole | null
}
export interface DocumentShareResult { document_id: Id, acl: Acl }

export interface DocumentJoinPayload {
  document_id: Id
  /**
   * Present (even empty): a live member, synced by Yjs state vectors, sent
   * ``documents:yupdate`` and ``documents:awareness``. Absent: a plain (v1)
   * member, sent ``documents:updated``.
   */
  state_vector?: Binary
}
export interface DocumentJoinResult {
  /** As stored; for a live join, ``content`` and ``version`` of the state ``update`` completes. */
  document: Document
  /** The distinct users in the room, across nodes. */
  users: UserId[]
  role: DocumentAccess
  /** Live joins only: everything the joiner's state vector lacks (Yjs sync step 2). */
  update?: ReceivedBinary
  /** Live joins only: the server's state vector, to compute what it lacks. */
  state_vector?: ReceivedBinary
  /** Live joins only: the other members' awareness states, as one update. */
  awareness?: ReceivedBinary
}

export interface DocumentRef { document_id: Id }

export interface DocumentUpdatePayload {
  document_id: Id
  content: string
  /** The version this update makes: the stored version + 1, or ``VERSION_CONFLICT``. */
  version: number
}
export interface DocumentUpdateResult { document: Document }

export interface DocumentYUpdatePayload {
  document_id: Id
  /** A Yjs update (format v1). */
  update: Binary
}
export interface DocumentYUpdateResult {
  /** The version it made, or the current one when it brought nothing new. */
  version: number
}

export interface DocumentAwarenessPayload {
  document_id: Id
  /** A y-protocols awareness update. */
  update: Binary
}

export interface DocumentHistoryPayload {
  document_id: Id
  before_version?: number
  /** Default 50, capped at 200. */
  limit?: number
}
export interface DocumentHistoryResult {
  /** Oldest first. */
  versions: VersionEntry[]
  has_more: boolean
}

export interface DocumentGetPayload {
  document_id: Id
  /** Omitted: the current document. */
  version?: number
}
export interface DocumentGetResult { document: Document }

export interface DocumentRestorePayload {
  document_id: Id
  version: number
}
export interface DocumentRestoreResult { document: Document }

export interface ListPayload {
  before?: Cursor
  /** Default 50, capped at 200. */
  limit?: number
}
export interface DocumentListResult {
  /** Newest activity first. */
  documents: DocumentListing[]
  /** Absent on the last page. */
  next?: Cursor
}
export interface ChatListResult {
  chats: ChatListing[]
  next?: Cursor
}

export interface ChatCreatePayload {
  chat_id?: Id
  title?: string
  members?: UserId[]
}
export interface ChatResult { chat: Chat }

export interface ChatInvitePayload { chat_id: Id, user_id: UserId }

export interface ChatJoinPayload {
  chat_id: Id
  /** The messages after this seq (oldest first); without it, the latest page. */
  since_seq?: number
}
export interface ChatJoinResult {
  chat: Chat
  users: UserId[]
  /** Oldest first. */
  messages: Message[]
  /**
   * With ``since_seq``: newer messages exist beyond this page; without: older
   * ones exist (a page is bounded by count and by bytes).
   */
  has_more: boolean
}

export interface ChatRef { chat_id: Id }

export interface ChatMessagePayload {
  chat_id: Id
  /** Non-empty; at most 10,000 characters by default. */
  content: string
  /** A repeated one returns the stored message, neither stored nor broadcast again. */
  client_id?: Id
}
export interface ChatMessageResult { message: Message }

export interface ChatHistoryPayload {
  chat_id: Id
  before_seq?: number
  limit?: number
}
export interface ChatHistoryResult {
  /** Oldest first. */
  messages: Message[]
  has_more: boolean
}

export interface ChatTypingPayload { chat_id: Id, typing: boolean }

export interface AuthRefreshPayload {
  /** A fresh JWT for the same ``sub``. */
  token: string
}
export interface AuthRefreshResult { expires_at: Timestamp }

/** Every client-to-server event, with its payload and its ack. */
export interface ClientToServerEvents {
  'documents:create': (payload: DocumentCreatePayload, ack: AckCallback<DocumentCreateResult>) => void
  'documents:share': (payload: DocumentSharePayload, ack: AckCallback<DocumentShareResult>) => void
  'documents:join': (payload: DocumentJoinPayload, ack: AckCallback<DocumentJoinResult>) => void
  'documents:leave': (payload: DocumentRef, ack: AckCallback<Empty>) => void
  'documents:update': (payload: DocumentUpdatePayload, ack: AckCallback<DocumentUpdateResult>) => void
  'documents:list': (payload: ListPayload, ack: AckCallback<DocumentListResult>) => void
  'documents:yupdate': (payload: DocumentYUpdatePayload, ack: AckCallback<DocumentYUpdateResult>) => void
  'documents:awareness': (payload: DocumentAwarenessPayload, ack: AckCallback<Empty>) => void
  'documents:history': (payload: DocumentHistoryPayload, ack: AckCallback<DocumentHistoryResult>) => void
  'documents:get': (payload: DocumentGetPayload, ack: AckCallback<DocumentGetResult>) => void
  'documents:restore': (payload: DocumentRestorePayload, ack: AckCallback<DocumentRestoreResult>) => void
  'chat:create': (payload: ChatCreatePayload, ack: AckCallback<ChatResult>) => void
  'chat:invite': (payload: ChatInvitePayload, ack: AckCallback<ChatResult>) => void
  'chat:join': (payload: ChatJoinPayload, ack: AckCallback<ChatJoinResult>) => void
  'chat:leave': (payload: ChatRef, ack: AckCallback<Empty>) => void
  'chat:message': (payload: ChatMessagePayload, ack: AckCallback<ChatMessageResult>) => void
  'chat:history': (payload: ChatHistoryPayload, ack: AckCallback<ChatHistoryResult>) => void
  'chat:typing': (payload: ChatTypingPayload, ack: AckCallback<Empty>) => void
  'chat:list': (payload: ListPayload, ack: AckCallback<ChatListResult>) => void
  'auth:refresh': (payload: AuthRefreshPayload, ack: AckCallback<AuthRefreshResult>) => void
}

/** Every client-to-server event name. */
export type ClientEventName = keyof ClientToServerEvents
/** The payload of a client-to-server event. */
export type PayloadOf<E extends ClientEventName> = Parameters<ClientToServerEvents[E]>[0]
/** The ack of a client-to-server event. */
export type AckOf<E extends ClientEventName> = Parameters<Parameters<ClientToServerEvents[E]>[1]>[0]

// -- server to client ------------------------------------------------------------

/** ``user:joined`` / ``user:left``: who, and in which document or chat. */
export type Presence = { user_id: UserId, document_id: Id } | { user_id: UserId, chat_id: Id }

export interface DocumentUpdated {
  document: Document
  user_id: UserId
}
export interface DocumentYUpdated {
  document_id: Id
  update: ReceivedBinary
  /** The version this update made. */
  version: number
  user_id: UserId
}
export interface DocumentAwarenessUpdated {
  document_id: Id
  update: ReceivedBinary
}
export interface ChatMessageEvent { message: Message }
export interface ChatTypingEvent {
  chat_id: Id
  user_id: UserId
  typing: boolean
}

/** Every server-to-client event. */
export interface ServerToClientEvents {
  /** A user's first connection entered the room (not sent to that connection). */
  'user:joined': (presence: Presence) => void
  /** A user's last connection left the room, disconnected or lost access. */
  'user:left': (presence: Presence) => void
  /** To plain (v1) members: a change, with the whole new document. */
  'documents:updated': (event: DocumentUpdated) => void
  /** To live members: a change as a Yjs update, in version order. */
  'documents:yupdate': (event: DocumentYUpdated) => void
  /** To live members: awareness changes (and removals when a member goes). */
  'documents:awareness': (event: DocumentAwarenessUpdated) => void
  /** To the whole room, the sender included. */
  'chat:message': (event: ChatMessageEvent) => void
  'chat:typing': (event: ChatTypingEvent) => void
  /**
   * To one connection: every failed ack's error again, a revocation
   * (``PERMISSION_DENIED`` with the resource) and an expired token
   * (``UNAUTHORIZED``, then disconnected).
   */
  error: (error: SocketError) => void
}

export type ServerEventName = keyof ServerToClientEvents

/** A socket.io-client socket typed with the whole protocol. */
export type CollabSocket = Socket<ServerToClientEvents, ClientToServerEvents>

// -- the provider ----------------------------------------------------------------

export interface SocketIOProviderOptions {
  /** The Awareness to relay; created (and destroyed with the provider) when absent. */
  awareness?: Awareness
}

export interface SocketIOProviderEvents {
  /** true once a live join's ack was applied and our missing part sent; false when the socket drops. */
  synced: (synced: boolean) => void
  /** The newest version this provider knows (acks and ``documents:yupdate``). */
  version: (version: number) => void
  /** The role from the latest join ack (null before one). */
  role: (role: DocumentAccess | null) => void
  /** A failed ack of the provider's own events (join, yupdate, awareness), or a revocation. */
  error: (error: SocketError) => void
}

/**
 * Binds ``doc`` and an Awareness to document ``documentId`` over ``socket``,
 * joining live on construction (when connected) and on every ``connect``, so a
 * reconnection resyncs by state vectors and edits made offline are sent then.
 */
export class SocketIOProvider extends ObservableV2<SocketIOProviderEvents> {
  constructor (
    /** Any socket.io-client socket (a ``CollabSocket`` or an untyped one). */
    socket: Socket<any, any>,
    documentId: Id,
    doc: Y.Doc,
    options?: SocketIOProviderOptions
  )

  readonly socket: CollabSocket
  readonly documentId: Id
  readonly doc: Y.Doc
  readonly awareness: Awareness
  /** true after the live join's ack was applied and our missing part sent. */
  readonly synced: boolean
  /** From the latest join ack; ``viewer``: local edits are never sent. */
  readonly role: DocumentAccess | null
  /** The newest version this provider knows. */
  readonly version: number
  /** The document fields from the latest join ack, or null before one. */
  readonly document: Document | null
  readonly destroyed: boolean

  /** Leaves the document, stops listening, and withdraws our awareness state. */
  destroy (): void
}

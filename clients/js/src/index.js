// @collab/client: bind Yjs documents to a collab server over Socket.IO.
export { SocketIOProvider } from './provider.js'

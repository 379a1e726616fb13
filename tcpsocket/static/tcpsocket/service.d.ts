// Type declarations of the tcpsocket JavaScript client library.
//
// Classic scripts (shared/core.js, shared/session.js, tcpsocket/service.js)
// define the globals `lib_session` and `lib_tcpsocket`, declared below in
// `declare global`. The ES modules (shared/session.mjs, tcpsocket/service.mjs)
// export the same objects: `import { lib_session, lib_tcpsocket } from
// ".../tcpsocket/service.mjs"` (service.mjs also has `lib_tcpsocket` as its
// default export).

/** Rejection value of every call made while the session is not connected,
 * or on an object of a previous connection. */
export interface SessionClosedError {
  reason: "session_closed";
}

/** Rejection value of a failed TcpSocket / TcpSocketManager method. */
export interface CallFailure {
  reason: "call_failure";
  value: { message: string };
}

/** A response the library could not decode. */
export interface ProtocolError {
  reason: "protocol_error";
  message: string;
}

/** Rejection value of GetService (TcpSocketManager.get). */
export interface GetServiceError {
  reason: "UnknownService" | "FingerprintMismatch" | "MissingPermission" | "InternalError";
  /** The service name asked for. */
  name: string;
  /** Only for InternalError. */
  message?: string;
}

export type SessionError = SessionClosedError | ProtocolError;

/** Argument of onsessionconnectionerror. */
export interface ConnectionErrorInfo {
  reason: "token_refused" | "connection_failed";
  code?: number;
  message?: string;
}

/** Argument of onsessiondisconnected (the WebSocket close code and reason). */
export interface DisconnectInfo {
  code: number;
  reason: string;
}

export interface SessionState {
  onsessionconnected?: (this: SessionState) => void;
  onsessiondisconnected?: (this: SessionState, info: DisconnectInfo) => void;
  onsessionconnectionerror?: (this: SessionState, info: ConnectionErrorInfo) => void;
}

export declare class Session {
  constructor();
  /** True while the WebSocket is open and the token was accepted. */
  readonly connected: boolean;
  /** Connection counter; objects created on an older connection are dead. */
  readonly generation: number;
  /**
   * Connect to `ws[s]://host[:port]/ws`. A host without a port uses the port
   * of the daemon that served session.js (8081 if unknown).
   */
  open(kind: "websocket", host: string, token: string, sessionstate: SessionState, lazyReconnect?: boolean): void;
  /** Connect to an explicit ws:// or wss:// URL. */
  open_url(url: string, token: string, sessionstate: SessionState, lazyReconnect?: boolean): void;
  /** Close for good (no reconnection); pending calls reject with session_closed. */
  close(): void;
  /** HasService(name). */
  has_service(name: string): Promise<boolean>;
  /** GetService(name, fingerprint) -> the new service id. */
  get_service(name: string, fingerprint: string): Promise<number>;
  enable_event(service: number, object: number, event: number, generation?: number): Promise<boolean>;
  disable_event(service: number, object: number, event: number, generation?: number): Promise<boolean>;
  release_object(service: number, object: number, generation?: number): Promise<boolean>;
}

/** The wire codec (protocol.md part A); mostly for tests and tools. */
export interface Core {
  readonly DecodeError: new (message: string) => Error;
  readonly Fields: new () => Fields;
  readonly Reader: new (bytes: Uint8Array) => Reader;
  toUint8Array(data: BinaryData): Uint8Array;
  readonly KIND_REQUEST: 0;
  readonly KIND_RESPONSE: 1;
  readonly KIND_EVENT: 2;
  readonly KIND_PERMISSION_ERROR: 3;
  encodeHandshake(token: string): Uint8Array;
  decodeHandshakeAck(bytes: BinaryData): boolean;
  encodeRequest(service: number, object: number, requestId: number | bigint, content: Fields): Uint8Array;
  encodeResponse(service: number, object: number, requestId: number | bigint, content: Fields): Uint8Array;
  encodeEvent(service: number, object: number, content: Fields): Uint8Array;
  decodeBaseMessage(bytes: BinaryData): BaseMessage;
  decodeCoreResponse(content: Uint8Array):
    | { tag: 0; result: GetServiceError["reason"] | "Success"; serviceId: number | null; message: string | null }
    | { tag: 1 | 2 | 3 | 4; success: boolean };
}

export interface Fields {
  u(value: number | bigint, max?: number | bigint): this;
  u32(value: number): this;
  i(value: number | bigint): this;
  bool(value: boolean): this;
  str(value: string): this;
  bytes(value: BinaryData): this;
  nested(fields: Fields): this;
  size(): number;
  encode(): Uint8Array;
}

export interface Reader {
  pos: number;
  remaining(): number;
  u16(): number;
  u32(): number;
  u64(): number | bigint;
  i64(): number | bigint;
  bool(): boolean;
  str(): string;
  bytesView(): Uint8Array;
  bytesCopy(): Uint8Array;
  end(): void;
}

export interface BaseMessage {
  service: number;
  object: number;
  kind: 0 | 1 | 2 | 3;
  requestId: number | bigint | null;
  permission: string | null;
  message: string | null;
  content: Uint8Array;
}

export interface LibSession {
  readonly Session: typeof Session;
  readonly core: Core;
  /** The WebSocket URL `open("websocket", host, ...)` would use. */
  websocketUrl(host: string): string;
  /** URL session.js was loaded from ("" if unknown). */
  readonly scriptUrl: string;
  readonly DEFAULT_PORT: 8081;
}

/** What send() accepts: bytes, or a string sent as UTF-8. */
export type BinaryData = ArrayBuffer | ArrayBufferView | string;

export type CLOSE_EVENT = 0;
export type DATA_EVENT = 1;
export type DRAIN_EVENT = 2;
export type ERROR_EVENT = 3;
export type TcpSocketEvent = CLOSE_EVENT | DATA_EVENT | DRAIN_EVENT | ERROR_EVENT;

/** Value delivered to a listener of each event. */
export interface TcpSocketEventValue {
  0: undefined;
  1: Uint8Array;
  2: boolean;
  3: string;
}

export type TcpSocketListener<E extends TcpSocketEvent> =
  | ((this: TcpSocket, value: TcpSocketEventValue[E]) => void)
  | { handleEvent(value: TcpSocketEventValue[E]): void };

interface EventConstants {
  readonly CLOSE_EVENT: CLOSE_EVENT;
  readonly DATA_EVENT: DATA_EVENT;
  readonly DRAIN_EVENT: DRAIN_EVENT;
  readonly ERROR_EVENT: ERROR_EVENT;
}

export interface SocketAddress {
  host: string;
  port: number | bigint;
}

export declare class TcpSocket implements EventConstants {
  private constructor();
  readonly CLOSE_EVENT: CLOSE_EVENT;
  readonly DATA_EVENT: DATA_EVENT;
  readonly DRAIN_EVENT: DRAIN_EVENT;
  readonly ERROR_EVENT: ERROR_EVENT;
  readonly service_id: number;
  readonly object_id: number;
  /** true while under the daemon's high-water mark; after false wait for DRAIN. */
  send(data: BinaryData): Promise<boolean>;
  suspend(): Promise<void>;
  resume(): Promise<void>;
  close(): Promise<void>;
  /** ReleaseObject: the daemon closes and forgets the socket. */
  release(): Promise<boolean>;
  addEventListener<E extends TcpSocketEvent>(event: E, listener: TcpSocketListener<E>): void;
  removeEventListener<E extends TcpSocketEvent>(event: E, listener: TcpSocketListener<E>): void;
}

export declare class TcpSocketManager implements EventConstants {
  private constructor();
  static readonly SERVICE_NAME: "TcpSocketManager";
  static readonly FINGERPRINT: string;
  static readonly CLOSE_EVENT: CLOSE_EVENT;
  static readonly DATA_EVENT: DATA_EVENT;
  static readonly DRAIN_EVENT: DRAIN_EVENT;
  static readonly ERROR_EVENT: ERROR_EVENT;
  /** GetService("TcpSocketManager"): rejects with GetServiceError or SessionClosedError. */
  static get(session: Session): Promise<TcpSocketManager>;
  readonly CLOSE_EVENT: CLOSE_EVENT;
  readonly DATA_EVENT: DATA_EVENT;
  readonly DRAIN_EVENT: DRAIN_EVENT;
  readonly ERROR_EVENT: ERROR_EVENT;
  readonly service_id: number;
  /** Resolves once connected; rejects with CallFailure (value.message says why). */
  open(addr: SocketAddress): Promise<TcpSocket>;
  /** Listen to the events of every socket this manager opened (`this` is the socket). */
  addEventListener<E extends TcpSocketEvent>(event: E, listener: TcpSocketListener<E>): void;
  removeEventListener<E extends TcpSocketEvent>(event: E, listener: TcpSocketListener<E>): void;
}

export interface LibTcpSocket extends EventConstants {
  readonly TcpSocketManager: typeof TcpSocketManager;
  readonly TcpSocket: typeof TcpSocket;
  readonly SERVICE_NAME: "TcpSocketManager";
  readonly FINGERPRINT: string;
}

export declare const lib_session: LibSession;
export declare const lib_tcpsocket: LibTcpSocket;
export default lib_tcpsocket;

declare global {
  /** Defined by the classic scripts shared/core.js + shared/session.js. */
  var lib_session: LibSession;
  /** Defined by the classic script tcpsocket/service.js (or apps/service.js). */
  var lib_tcpsocket: LibTcpSocket;
}

// Type declarations of the tcpsocket JavaScript client library (api-daemon's
// runtime API, plus our additions; doc/javascript.md).
//
// The same URLs serve both generations:
// - classic <script src> of shared/core.js, shared/session.js and
//   tcpsocket/service.js (or apps/service.js) define the globals
//   `ExternalAPI`, `lib_session` and `lib_tcpsocket`, declared in
//   `declare global` below;
// - `import` of them gives ES modules: `import { Session } from
//   ".../shared/session.js"`, `import { TcpSocketManager } from
//   ".../tcpsocket/service.js"`.

/** Result of Session.open / open_url / reconnect. */
export interface OpenResult {
  success: boolean;
  /** "success", "Invalid token", "Unsupported url. Url should be a valid websocket url", ... */
  cause: string;
}

/** A call made while the session is not connected, or pending when it ended. */
export interface SessionClosedError {
  reason: "session_closed";
  /** "zombie session (message was …)", "client closed session", "daemon restarting",
   * "connection lost" or "an object of an earlier connection". */
  value: string;
}

/** The error variant of a method: `value` is `{}` as in api-daemon; `message` is the daemon's reason. */
export interface CallFailure {
  method_name: "Open" | "Close" | "Resume" | "Send" | "Suspend";
  reason: "call_failure";
  value: Record<string, never>;
  message?: string;
}

/** The daemon answered with a permission error (BaseMessage kind 3). */
export interface PermissionFailure {
  method_name?: string;
  reason: "permission_error";
  value: { request?: number; permission: string; message: string };
}

/** release() when the daemon no longer knows the object (and always for a service object). */
export interface ReleaseFailure {
  reason: "call_failure";
  value: "No such object";
}

/** TcpSocketManager.get() rejects with one of these strings ("Internal:<message>" too). */
export type GetServiceError = "UnknownService" | "FingerprintMismatch" | "MissingPermission" | `Internal:${string}`;

/** Argument of onsessionconnectionerror (our addition; api-daemon passes none). */
export interface ConnectionErrorInfo {
  reason: "token_refused" | "connection_failed";
  code?: number;
  message?: string;
}

/** Argument of onsessiondisconnected (our addition): the WebSocket close code and reason. */
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
  requests: Map<number, unknown>;
  request_id: number;
  next_id: number;
  tracked: Map<number, unknown>;
  tracked_events: Map<string, unknown>;
  /** True while the WebSocket is open and the token was accepted. */
  connected: boolean;
  /** True while lazy reconnection is trying. */
  reconnecting: boolean;
  objectRegistry: FinalizationRegistry<{ id: number; service: number }>;
  /** Service id -> service name. */
  services: Record<number, string>;
  /** Connection counter (ours); objects of an earlier connection are stale. */
  readonly generation: number;
  /**
   * Connect to `ws[s]://host[:port]/ws`. `host` defaults to "localhost:8081"; without a
   * port, the port of the daemon that served session.js. With `lazy_reconnect`, a lost or
   * failed connection is retried (250 ms doubling to 5 s) until it succeeds.
   */
  open(kind: "websocket", host: string | undefined, token: string, state: SessionState, lazy_reconnect?: boolean): OpenResult;
  open_url(url: string, token: string, state: SessionState, lazy_reconnect?: boolean): OpenResult;
  /** Close for good: pending calls reject, onsessiondisconnected follows the WebSocket's close. */
  close(): void;
  is_connected(): boolean;
  /** A new connection to the same URL now. */
  reconnect(): OpenResult;
  has_service(name: string): Promise<boolean>;
  /** GetService -> the new service id (TcpSocketManager.get is what apps use). */
  get_service(name: string, fingerprint: string): Promise<number>;
}

/** A TcpSocket listener: a function called with `this` = the socket, or an object with handleEvent. */
export type Listener<T> = ((this: TcpSocket, value: T) => void) | { handleEvent(value: T): void };

interface EventConstants {
  readonly CLOSE_EVENT: 0;
  readonly DATA_EVENT: 1;
  readonly DRAIN_EVENT: 2;
  readonly ERROR_EVENT: 3;
}

interface SessionObjectBase {
  /** Object id: 0 for a service instance, the socket id for a socket. */
  id: number;
  session: Session;
  service_id: number;
  wrapper_payload_message: unknown;
  event_callbacks: Record<string, unknown[]>;
  /** ReleaseObject: resolves with undefined; rejects with ReleaseFailure. */
  release(): Promise<undefined>;
  dispatchEvent(event_id: number, value: unknown): void;
}

export interface TcpSocket extends SessionObjectBase, EventConstants {
  /** The same as `id` (our earlier name). */
  readonly object_id: number;
  /** Bytes: any typed array or DataView (its bytes), an ArrayBuffer, or a string (UTF-8).
   * Resolves false when the sender should wait for DRAIN. Throws for other types. */
  send(data: ArrayBufferView | ArrayBuffer | string): Promise<boolean>;
  /** Stop reading from the remote; n suspends need n resumes. */
  suspend(): Promise<{}>;
  resume(): Promise<{}>;
  /** Graceful close; CLOSE follows. */
  close(): Promise<{}>;
  /** STARTTLS (sockets opened with TLS options only, e.g. `useSecureTransport: false`):
   * what was sent before goes in the clear, what follows encrypted. Rejects with CallFailure
   * (method_name "UpgradeToSecure") and the reason: unknown authority, name mismatch... */
  upgradeToSecure(options?: UpgradeOptions): Promise<TlsInfo>;
  /** Set on sockets opened with TLS options (SecureTcpSocketManager); undefined otherwise. */
  readonly remoteAddress?: string;
  readonly remotePort?: number;
  readonly localAddress?: string;
  readonly localPort?: number;
  /** What TLS negotiated (updated by upgradeToSecure); undefined on a TcpSocketManager socket. */
  readonly tls?: TlsInfo;
  addEventListener(event: 0, listener: Listener<{}>): void;
  addEventListener(event: 1, listener: Listener<Uint8Array>): void;
  addEventListener(event: 2, listener: Listener<boolean>): void;
  addEventListener(event: 3, listener: Listener<string>): void;
  removeEventListener(event: number, listener: Listener<any>): void;
}

export interface SocketAddress {
  host: string;
  /** Coerced like api-daemon's runtime: "7878" is 7878, anything not numeric 0. */
  port: number | string;
}

/** TLS to the remote, run by the daemon, which always verifies the certificate. Any of these
 * options makes open() use the SecureTcpSocketManager service (protocol section E). */
export interface SecureSocketOptions {
  /** TLS from the first byte (IMAPS, SMTPS); false: plain, upgradable with upgradeToSecure(). */
  useSecureTransport?: boolean;
  /** Name sent with SNI and verified in the certificate (default: the host). */
  serverName?: string;
  /** ALPN protocols offered, e.g. ["imap"]. */
  alpnProtocols?: string[];
  /** TCP_NODELAY (default true). */
  noDelay?: boolean;
  /** SO_KEEPALIVE (default false). */
  keepAlive?: boolean;
}

export interface UpgradeOptions {
  serverName?: string;
  alpnProtocols?: string[];
}

export interface TlsInfo {
  secure: boolean;
  /** e.g. "TLSv1.3"; "" on a plain socket. */
  version: string;
  /** The ALPN protocol chosen, "" if none. */
  alpn: string;
  /** The peer certificate's subject (RFC 4514), e.g. "CN=imap.example.org". */
  peerSubject: string;
}

/** A TcpSocketManager instance (object 0 of its service). */
export interface TcpSocketFactory extends SessionObjectBase, EventConstants {
  /** Resolves once connected; rejects with CallFailure (method_name "Open"). */
  open(addr: SocketAddress & SecureSocketOptions): Promise<TcpSocket>;
  /** Ours: a listener for that event of every socket of this manager, `this` = the socket. */
  addEventListener(event: 0, listener: Listener<{}>): void;
  addEventListener(event: 1, listener: Listener<Uint8Array>): void;
  addEventListener(event: 2, listener: Listener<boolean>): void;
  addEventListener(event: 3, listener: Listener<string>): void;
  removeEventListener(event: number, listener: Listener<any>): void;
}

export declare const TcpSocketManager: {
  /** GetService("TcpSocketManager"): rejects with a GetServiceError string or SessionClosedError. */
  get(session: Session): Promise<TcpSocketFactory>;
  readonly SERVICE_NAME: "TcpSocketManager";
  readonly FINGERPRINT: string;
} & EventConstants;

declare global {
  /** core.js as a classic script. */
  const ExternalAPI: { core: Record<string, unknown> };
  /** session.js as a classic script. */
  const lib_session: { Session: typeof Session; websocketUrl(host: string): string; scriptUrl: string };
  /** tcpsocket/service.js (or apps/service.js) as a classic script. */
  const lib_tcpsocket: { TcpSocketManager: typeof TcpSocketManager };
}

// Type declarations for web/sdk.js, the Portcullis web SDK 1.0.0.
// As a <script>: the global `Portcullis`; as a CommonJS module: its exports.
// Needs the DOM library (fetch, WebSocket, Blob).

export as namespace Portcullis;

/** "1.0.0" */
export const version: string;

/** Creates a client for one deployment. Start-up (restoring a stored refresh
 *  token, or completing a built-in login redirect) begins at once; "ready"
 *  fires when it is over. */
export function create(options: Options): Client;

/** Every error of the SDK. */
export class PortcullisError extends Error {
  readonly name: "PortcullisError";
  /** The server's `error` ("invalid_grant", ...), or the SDK's own:
   *  "network_error", "invalid_state", "login_required", "invalid_auth_code",
   *  "auth_code_failed", "no_refresh_token", "login_unavailable",
   *  "not_open", "destroyed", "http_<status>", ... */
  code: string;
  /** HTTP status; 0 when there is none. */
  status: number;
  /** Seconds, from Retry-After (429, 503). */
  retryAfter?: number;
}

/** What the site's AuthProvider `getAuthCode` resolves with: the LATEST code. */
export interface AuthCode {
  authCode: string;
  /** Exactly the redirect_uri of the authorization request. */
  redirectUri: string;
  nonce?: string;
  maxAge?: number;
  /** PKCE verifier, when the site's login used PKCE. */
  codeVerifier?: string;
  /** The `iss` of the authorization response (RFC 9207). */
  iss?: string;
}

/** Alternative: an ID token from an implicit login (no refresh token results). */
export interface IdTokenGrant {
  idToken: string;
  nonce: string;
}

export interface Options {
  deploymentId: string;
  /** Where portcullis answers /.auth/. Default: the origin of the <script src>
   *  that loaded sdk.js, else location.origin. */
  baseUrl?: string;
  /** `forceUpdate` is true when the previous session is dead (a new login
   *  may be needed). */
  getAuthCode?: (args: { forceUpdate: boolean }) => Promise<AuthCode | IdTokenGrant> | AuthCode | IdTokenGrant;
  /** The site re-runs its login; called when refreshing fails and no new code
   *  can be had. After it resolves, getAuthCode is called (when given). */
  reAuthenticate?: () => Promise<void> | void;
  /** For login(). Default: location.origin + location.pathname. */
  redirectUri?: string;
  /** Where the refresh token is kept (default "session"). The JWT is only ever
   *  kept in memory. */
  storage?: "session" | "local" | "memory";
  /** Seconds before expiry at which the JWT is refreshed (default 60; a JWT
   *  living less than twice that is refreshed at half its life). */
  refreshMargin?: number;
  /** Subprotocols offered besides the token (default ["chat.v1"]). */
  protocols?: string[];
  fetch?: typeof fetch;
  WebSocket?: typeof WebSocket;
}

export interface ReadyEvent {
  authenticated: boolean;
}
export interface AuthenticatedEvent {
  /** Expiry of the JWT, in milliseconds since the epoch. */
  expiresAt: number;
}
export interface LoggedOutEvent {
  /** "logout" (logout() here or in another tab), "revoked" (the session was
   *  ended by the server: close code 4002). */
  reason: string;
}
export interface ErrorEvent {
  error: PortcullisError;
}

export interface ClientEvents {
  /** Once, after start-up; also delivered to handlers added later. */
  ready: ReadyEvent;
  /** A code exchange begins. */
  authenticating: Record<string, never>;
  /** After a login (code exchange), and when a session starts again (a stored
   *  refresh token restored, a dead session recovered). Not on the routine
   *  refreshes of a running session, nor on reconnections. */
  authenticated: AuthenticatedEvent;
  /** Here and in every other tab of the site. */
  loggedOut: LoggedOutEvent;
  /** A refresh failed. */
  tokenError: ErrorEvent;
  /** No usable code: getAuthCode failed, a login redirect came back wrong. */
  authError: ErrorEvent;
  /** A request to the server failed (code exchange, logout). */
  error: ErrorEvent;
}

export interface Client {
  on<K extends keyof ClientEvents>(event: K, handler: (payload: ClientEvents[K]) => void): this;
  off<K extends keyof ClientEvents>(event: K, handler: (payload: ClientEvents[K]) => void): this;
  /** Completes a built-in login redirect (?code&state of this page), else
   *  exchanges the code from getAuthCode. */
  getTokens(): Promise<AuthenticatedEvent>;
  /** Refreshes now, with the latest stored refresh token (it rotates). When the
   *  refresh token is dead: getAuthCode({forceUpdate: true}), else the site's
   *  reAuthenticate; rejects when neither gives a new session. */
  refreshToken(): Promise<AuthenticatedEvent>;
  /** Ends the session everywhere; loggedOut fires in every tab of the site. A
   *  401 from the server counts as success. */
  logout(): Promise<void>;
  /** The site's reAuthenticate, then getTokens when getAuthCode is given;
   *  without reAuthenticate, login(). */
  reAuthenticate(): Promise<void>;
  /** Built-in login: leaves the page for the provider (code flow, PKCE S256);
   *  the next page load completes it. */
  login(): Promise<void>;
  /** The current JWT, or null when there is none or it has expired. */
  readonly token: string | null;
  readonly authenticated: boolean;
  /** Opens the messaging WebSocket (default url: the deployment's
   *  messagingEndpoint) and keeps it open until close() or logout. */
  connect(url?: string, options?: { protocols?: string[] }): Socket;
  /** Stops timers, listeners, sockets and the cross-tab channel. */
  destroy(): void;
}

export interface SocketEvent {
  type: string;
  target: Socket;
}
export interface SocketMessageEvent extends SocketEvent {
  data: any;
}
export interface SocketCloseEvent extends SocketEvent {
  code: number;
  reason: string;
  wasClean: boolean;
}
export interface SocketErrorEvent extends SocketEvent {
  error?: PortcullisError;
}
/** A connection closed and another will be opened after `delay` ms. */
export interface SocketReconnectingEvent extends SocketEvent {
  code: number;
  reason: string;
  /** 1 for the first reconnection in a row. */
  attempt: number;
  delay: number;
}
export interface SocketEvents {
  /** Every time a connection opens. */
  open: SocketEvent;
  message: SocketMessageEvent;
  /** Once, when the socket is done (close(), logout, 4002, no token). */
  close: SocketCloseEvent;
  error: SocketErrorEvent;
  reconnecting: SocketReconnectingEvent;
}

/** A WebSocket-like object that reconnects: close 4001 → fresh token and
 *  reconnect; 4002 → logged out, done; others → backoff and reconnect. */
export interface Socket {
  /** 0 connecting (or waiting to reconnect), 1 open, 2 closing, 3 closed. */
  readonly readyState: 0 | 1 | 2 | 3;
  /** The subprotocol the server chose. */
  readonly protocol: string;
  binaryType: "blob" | "arraybuffer";
  onopen: ((this: Socket, ev: SocketEvent) => void) | null;
  onmessage: ((this: Socket, ev: SocketMessageEvent) => void) | null;
  onclose: ((this: Socket, ev: SocketCloseEvent) => void) | null;
  onerror: ((this: Socket, ev: SocketErrorEvent) => void) | null;
  onreconnecting: ((this: Socket, ev: SocketReconnectingEvent) => void) | null;
  /** Throws a PortcullisError "not_open" unless readyState is 1. */
  send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
  addEventListener<K extends keyof SocketEvents>(type: K, listener: (this: Socket, ev: SocketEvents[K]) => void): void;
  removeEventListener<K extends keyof SocketEvents>(type: K, listener: (this: Socket, ev: SocketEvents[K]) => void): void;
}

// Type declarations of edgepush-client (hand-written; the modules are plain ES modules).

/** A u64 on the wire: a number up to 2^53 - 1, a bigint above. */
export type U64 = number | bigint;

/** The payload of an event (docs/PROTOCOL.md §4.2). */
export type Value =
  | { kind: 'Number'; value: number }
  | { kind: 'Fields'; fields: [string, number][] }
  | { kind: 'Text'; text: string }
  | { kind: 'Bytes'; bytes: Uint8Array };

export type SyncMode = 'Snapshot' | 'Replay';

/** Server to client. */
export type ServerMsg =
  | { type: 'Hello'; version: number; server: string; epoch: U64; heartbeat_ms: number; max_filters: number; broker_up: boolean }
  | { type: 'Topic'; id: number; name: string }
  | { type: 'Event'; topic: number; seq: U64; ts_ms: U64; value: Value }
  | { type: 'Synced'; id: number; seq: U64; mode: SyncMode }
  | { type: 'Ack'; req: number }
  | { type: 'Error'; code: number; req: number; message: string }
  | { type: 'Broker'; up: boolean }
  | { type: 'Pong'; nonce: number }
  | { type: 'Heartbeat'; ts_ms: U64 }
  | { type: 'Lagged'; skipped: number }
  | { type: 'Past'; topic: number; points: Point[] }
  | { type: 'HistoryDone'; id: number; seq: U64; truncated: boolean };

/** One earlier event of a topic, in a Past (docs/PROTOCOL.md §6.13). */
export interface Point {
  seq: U64;
  ts_ms: U64;
  value: Value;
}

/** The answer to Follower.history(). */
export interface HistoryAnswer {
  id: number;
  /** The server's seq when the answer was made. */
  seq: U64;
  /** Some points were left out by the server's bounds (the newest were kept). */
  truncated: boolean;
  /** Per topic its points, oldest first; topics ordered by their newest point. */
  topics: { topic: string; points: Point[] }[];
}

export interface Resume {
  epoch: U64;
  last_seq: U64;
}

/** Client to server. */
export type ClientMsg =
  | { type: 'Subscribe'; id: number; filters: string[]; resume: Resume | null }
  | { type: 'Unsubscribe'; id: number }
  | { type: 'Publish'; req: number; topic: string; payload: Uint8Array; retain: boolean }
  | { type: 'Ping'; nonce: number }
  | { type: 'History'; id: number; filters: string[]; per_topic: number };

/** Thrown by decodeAll on bytes that are not ServerMsg values. */
export class DecodeError extends Error {}

/** Every ServerMsg of one binary WebSocket message, in order. Throws DecodeError. */
export function decodeAll(bytes: Uint8Array | ArrayBuffer): ServerMsg[];

/** One ClientMsg, as one binary WebSocket message. */
export function encodeClient(msg: ClientMsg): Uint8Array;

/** The WebSocket subprotocol the follower offers. */
export const SUBPROTOCOL: 'edgepush.v1';

/** A delay in ms drawn uniformly from [0, min(cap, base × 2^attempt)]. */
export function backoffDelay(attempt: number, base?: number, cap?: number, random?: () => number): number;

/** `url` with `?token=` (percent-encoded) in place of any token it had. */
export function withToken(url: string, token?: string | null): string;

/** A WebSocket constructor: the browser's, Node's global one, or the `ws` package's. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => any;

export interface FollowerOptions {
  /** MQTT topic filters. Default ['#']. */
  filters?: string[];
  /** Access token, sent as ?token= in the URL. */
  token?: string | null;
  /** Backoff base delay in ms. Default 500. */
  base?: number;
  /** Backoff cap in ms. Default 30000. */
  cap?: number;
  /** The WebSocket constructor. Default: the global WebSocket, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** A source of uniform numbers in [0, 1) for the jitter. Default Math.random. */
  random?: () => number;
}

export interface FollowerEvents {
  /** Hello received and the Subscribe sent; `resumed` when it offered a resume. */
  connected: { epoch: U64; resumed: boolean; newEpoch: boolean; server: string; heartbeat_ms: number; broker_up: boolean };
  /** A new event (never one already delivered in this epoch). */
  event: { topic: string; seq: U64; ts_ms: U64; value: Value; inAnswer: boolean };
  /** The Subscribe answer is complete. */
  synced: { id: number; seq: U64; mode: SyncMode };
  /** The answer was a snapshot: earlier events may be missing; `topics` are those it covered. */
  snapshot: { seq: U64; topics: string[] };
  /** `skipped` events were dropped by the server; the latest of each topic follows. */
  lagged: { skipped: number };
  /** The gateway's broker link changed. */
  broker: { up: boolean };
  /** Nothing received for 2.5 heartbeat intervals: the follower reconnects. */
  stale: { silentMs: number };
  /** The connection ended or could not be made; the next attempt is in `retryIn` ms. */
  disconnected: { reason: string; code: number | null; retryIn: number };
  /** A server Error (kind 'server'), a protocol error such as a bad frame (kind 'protocol'), or no WebSocket (kind 'setup'). */
  error: { kind: 'server' | 'protocol' | 'setup'; message: string; code?: number; req?: number };
  /** Earlier events of one topic, from an answer to history(). Not live. */
  past: { topic: string; points: Point[] };
  /** Every decoded ServerMsg, before the follower handles it. */
  message: ServerMsg;
  /** close() was called. */
  closed: Record<string, never>;
}

export type FollowerState = 'connecting' | 'live' | 'stale' | 'reconnecting' | 'closed';

export class Follower extends EventTarget {
  constructor(url: string, options?: FollowerOptions);
  /** The URL connected to, token included. */
  readonly url: string;
  readonly filters: string[];
  readonly state: FollowerState;
  /** The current socket, or null between connections. */
  readonly ws: any;
  /** The server's epoch, from its last Hello. */
  readonly epoch: U64 | null;
  /** The resume point: the seq of the last Synced or live event. */
  readonly lastSeq: U64;
  readonly heartbeatMs: number;
  readonly server: string | null;
  readonly broker: boolean | null;
  /** Date.now() of the last message received. */
  readonly lastRx: number;
  /** Date.now() of the next connection attempt while reconnecting. */
  readonly retryAt: number;
  readonly names: Map<number, string>;
  readonly stats: { connects: number; replays: number; snapshots: number; lagged: number; losses: number; resent: number };
  /** Calls fn(detail) for every event of `type`; returns a function that stops it. */
  on<K extends keyof FollowerEvents>(type: K, fn: (detail: FollowerEvents[K]) => void): () => void;
  addEventListener<K extends keyof FollowerEvents>(type: K, listener: (e: CustomEvent<FollowerEvents[K]>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  /** Follows other filters: a new Subscribe, no resume, answered by a snapshot whose values are all delivered (again). */
  setFilters(filters: string[]): void;
  /** Publishes through the gateway; resolves on Ack, rejects on Error (with .code) or a lost connection. */
  publish(topic: string, payload: string | Uint8Array, options?: { retain?: boolean }): Promise<void>;
  /** Up to `perTopic` (default 60, the server caps it at 64) recent events per topic the filters (default: the follower's) match; rejects on Error (with .code, e.g. 403, 429) or a lost connection. Never moves the resume point. */
  history(filters?: string[], perTopic?: number): Promise<HistoryAnswer>;
  /** A round trip through the server's request queue; resolves to the time in ms. */
  ping(): Promise<number>;
  /** Reconnects now if waiting out the backoff delay. */
  retryNow(): void;
  /** Closes the connection for good. */
  close(): void;
}

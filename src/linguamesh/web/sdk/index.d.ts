// Types of the LinguaMesh client SDK. The messages are those of docs/protocol.md (their
// JSON Schemas: docs/schema/); the fields a client reads most are typed here.

export const PROTOCOL_VERSION: 1;
export const RATE: 16000;
export const CHUNK_SAMPLES: 320;

export interface ErrorInfo { code: string; message: string; retryable?: boolean }
export interface SessionInitAck {
  type: "session_init_ack"; session_id: string; resume_token: string; view_token?: string;
  replayed?: number; seq?: number;
  /** what to know before speaking: a target language no node serves now (code no_available_node) */
  warnings?: ErrorInfo[]; [field: string]: unknown;
}
export interface JobStatus {
  type: "job_status"; seq: number; utterance_index: number; tgt_lang: string; node_id?: string | null;
  status: "queued" | "dispatched" | "running" | "retrying" | string; queue_position?: number | null;
  reason?: string | null; detail?: string | null;
}
export interface AsrPartial {
  type: "asr_partial"; seq: number; utterance_index: number; text: string; stable?: number;
  translation?: string | null; tgt_lang?: string | null;
}
export interface Timings { total_ms?: number; asr_ms?: number; nmt_ms?: number; tts_ms?: number; [stage: string]: number | undefined }
export interface TranslationResult {
  type: "translation_result"; seq: number; utterance_index: number; job_id: string; trace_id?: string;
  status: "ok" | "failed"; text_asr: string; text_translated: string; tgt_lang: string; node_id?: string | null;
  tts_audio?: string | null; tts_format?: string | null; tts_sample_rate?: number | null;
  audio_seconds?: number | null; spoken_at?: number | null; timings?: Timings; error?: ErrorInfo | null;
}
export interface ServerError { type: "error"; seq?: number; code: string; message: string; ref?: string | null }
export interface SessionClosed { type: "session_closed"; seq?: number; [field: string]: unknown }
export interface Reconnect { type: "reconnect"; delay_ms?: number; url?: string | null }

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "offline";

export interface SessionEventMap {
  connection: CustomEvent<{ state: ConnectionState }>;
  open: CustomEvent<{ ack: SessionInitAck; resumed: boolean }>;
  status: CustomEvent<JobStatus>;
  caption: CustomEvent<AsrPartial>;
  result: CustomEvent<TranslationResult>;
  error: CustomEvent<ServerError>;
  lost: CustomEvent<{ message: string }>;
  closed: CustomEvent<SessionClosed>;
  restarting: CustomEvent<Reconnect>;
  "utterance-end": CustomEvent<{ seq: number }>;
}

export interface Storage { getItem(key: string): string | null; setItem(key: string, value: string): void; removeItem(key: string): void }
export function memoryStorage(): Storage;
export class SessionStore {
  constructor(storage?: Storage, key?: string);
  load(): { session_id: string; resume_token: string; view_token?: string; src: string; tgt: string; chunkSeq?: number } | null;
  save(fields: Record<string, unknown>): void;
  clear(): void;
  get(name: string): unknown;
  set(name: string, value: unknown): void;
}

export interface SessionOptions {
  url: string; src: string; tgt: string; tts?: boolean; partials?: boolean;
  endOfSpeech?: "server" | "client"; room?: string; roomKey?: string; token?: string;
  /** the event's name and who speaks: shown to viewers and in transcripts (120 characters each) */
  title?: string; presenter?: string;
  store?: SessionStore; WebSocket?: unknown; retry?: { initialMs?: number; maxMs?: number };
}

export class Session extends EventTarget {
  constructor(options: SessionOptions);
  readonly url: string; readonly base: string;
  src: string; tgt: string; state: ConnectionState; ack: SessionInitAck | null;
  lastSeq: number; chunkSeq: number;
  readonly sessionId: string | null; readonly viewToken: string | null; readonly connected: boolean;
  start(): Promise<SessionInitAck>;
  restore(): boolean;
  sendAudio(samples: Float32Array): void;
  endUtterance(): void;
  sendUtterance(index: number, bytes: Uint8Array, format?: "pcm16" | "wav" | null): void;
  streamAudio(samples: Float32Array, options?: { speed?: number; onProgress?: (fraction: number) => void; signal?: AbortSignal }): Promise<void>;
  send(message: Record<string, unknown>): void;
  acknowledge(seq?: number): void;
  close(): Promise<void>;
  disconnect(stay?: boolean): void;
  transcriptUrl(lang: string, format?: "srt" | "vtt" | "txt"): string;
  roomTranscriptUrl(lang: string, format?: "srt" | "vtt" | "txt"): string;
  viewerUrl(lang?: string): string;
  addEventListener<K extends keyof SessionEventMap>(type: K, listener: (ev: SessionEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

export interface ViewerEventMap {
  state: CustomEvent<{ state: "connected" | "reconnecting" | "lost" | "failed" | "ended" }>;
  result: CustomEvent<TranslationResult & { seq: number }>;
  draft: CustomEvent<AsrPartial & { seq: number }>;
  ended: CustomEvent<SessionClosed & { seq: number }>;
  listener: CustomEvent<{ type: "listener"; lang: string; status: "ok" | "unservable" | "over_quota" | "not_granted" | string; message: string }>;
}
export class ViewerStream extends EventTarget {
  constructor(options: { base?: string; sessionId: string; token: string; types?: string[]; audio?: boolean; lang?: string; EventSource?: unknown });
  sessionId: string; token: string; lastSeq: number; state: string; lang: string;
  url(): string; open(): void; close(): void;
  addEventListener<K extends keyof ViewerEventMap>(type: K, listener: (ev: ViewerEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

export interface Clip { play(): Promise<void> | void; pause(): void; addEventListener(type: "ended", l: () => void): void; removeEventListener(type: "ended", l: () => void): void }
export class PlaybackQueue extends EventTarget {
  constructor(options?: { maxLagMs?: number });
  current: { index: number; clip: Clip } | null; readonly waiting: number; held: boolean; maxLagMs: number;
  /** clips skipped since the last one played */
  skipped: number;
  add(index: number, clip: Clip): void; skip(): void; stop(): void; hold(): void; release(): void;
}
export function clipFromResult(result: TranslationResult): HTMLAudioElement;
/** what a page says of `n` clips skipped since the last one played ("" for none) */
export function skippedNote(n: number): string;

export class Microphone extends EventTarget {
  constructor(options?: { workletUrl?: string; constraints?: MediaTrackConstraints });
  readonly open: boolean; level: number;
  start(): Promise<void>; stop(): Promise<void>;
}
export function decodeFile(file: Blob): Promise<Float32Array>;

export class Chunker { constructor(size?: number); push(samples: Float32Array): Uint8Array[]; flush(): Uint8Array }
export class Resampler { constructor(fromRate: number); push(input: Float32Array): Float32Array }
export class EnergyVad { constructor(o?: { on?: number; off?: number; hangMs?: number }); speaking: boolean; push(block: Float32Array): "start" | "end" | null }
export function resampleAll(samples: Float32Array, fromRate: number): Float32Array;
export function toPcm16(samples: Float32Array): Uint8Array;
export function b64(bytes: Uint8Array): string;
export function unb64(text: string): Uint8Array;
export function roomIds(store: SessionStore): { room: string; key: string };
export function roomOf(key: string): string;
export function currentSession(base: string, room: string, accessToken?: string | null, fetchImpl?: typeof fetch): Promise<{ session_id: string; view_token: string; title?: string; presenter?: string } | null>;

// LinguaMesh client SDK (docs/js-client.md). ES modules, no dependencies: served by every
// scheduler at /static/sdk/index.js, and published as the npm package in clients/js.
export { Session, PROTOCOL_VERSION } from "./session.js";
export { ViewerStream } from "./viewer.js";
export { PlaybackQueue, clipFromResult, skippedNote } from "./playback.js";
export { Microphone, decodeFile } from "./microphone.js";
export { Chunker, CHUNK_SAMPLES } from "./chunker.js";
export { SessionStore, memoryStorage } from "./storage.js";
export { roomIds, roomOf, currentSession } from "./rooms.js";
export { RATE, Resampler, EnergyVad, resampleAll, toPcm16, b64, unb64 } from "./audio.js";

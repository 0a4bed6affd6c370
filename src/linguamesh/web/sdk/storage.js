// Where a session's resume state is kept so that a reload (or a new process) resumes it:
// { session_id, resume_token, view_token, src, tgt, chunkSeq }. Any object with
// getItem/setItem/removeItem works: window.sessionStorage (one tab), localStorage, or
// memoryStorage() in node and tests.

export function memoryStorage() {
  const items = new Map();
  return {
    getItem: (k) => (items.has(k) ? items.get(k) : null),
    setItem: (k, v) => { items.set(k, String(v)); },
    removeItem: (k) => { items.delete(k); },
  };
}

export class SessionStore {
  constructor(storage = globalThis.sessionStorage ?? memoryStorage(), key = "linguamesh.session") {
    this.storage = storage;
    this.key = key;
  }

  load() {
    try {
      const saved = JSON.parse(this.storage.getItem(this.key) || "null");
      return saved && saved.session_id ? saved : null;
    } catch (e) {
      return null;
    }
  }

  save(fields) {
    this.storage.setItem(this.key, JSON.stringify({ ...(this.load() || {}), ...fields }));
  }

  clear() {
    this.storage.removeItem(this.key);
  }

  // small values beside the session (the room's key, say)
  get(name) {
    try { return JSON.parse(this.storage.getItem(`${this.key}.${name}`) || "null"); } catch (e) { return null; }
  }

  set(name, value) {
    this.storage.setItem(`${this.key}.${name}`, JSON.stringify(value));
  }
}

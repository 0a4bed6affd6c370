// Shared by the SDK's tests: the scheduler under test and small waits.
export const URL_ = process.env.LINGUAMESH_URL || "";
export const HTTP = URL_.replace(/^ws/, "http");
export const needsServer = URL_ ? {} : { skip: "LINGUAMESH_URL is not set (tests/integration/test_js_sdk.py sets it)" };

// a 220 Hz tone at 16 kHz (the test engines transcribe its length)
export function tone(seconds) {
  const out = new Float32Array(Math.round(seconds * 16000));
  for (let i = 0; i < out.length; i++) out[i] = 0.1 * Math.sin((2 * Math.PI * 220 * i) / 16000);
  return out;
}

// the detail of the next `type` event of `target`
export function next(target, type, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} event in ${timeoutMs} ms`)), timeoutMs);
    target.addEventListener(type, (e) => { clearTimeout(timer); resolve(e.detail); }, { once: true });
  });
}

// every `type` event's detail, as they come
export function collect(target, type) {
  const seen = [];
  target.addEventListener(type, (e) => seen.push(e.detail));
  return seen;
}

export async function until(check, timeoutMs = 10000, what = "the condition") {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

// Language names for codes, in the reader's language: "Spanish (es)".

export function langName(code) {
  try {
    return `${new Intl.DisplayNames([navigator.language || "en"], { type: "language" }).of(code)} (${code})`;
  } catch (e) {
    return code;
  }
}

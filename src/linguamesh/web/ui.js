// Shared page helpers: the element lookup, the connection badge, the notice bar.
export const $ = (id) => document.getElementById(id);

const LABELS = {
  ready: "ready", connected: "connected", connecting: "connecting…",
  reconnecting: "connection lost — reconnecting…", offline: "not connected",
};

export function setConn(state, label) {
  const el = $("conn");
  el.dataset.state = state;
  el.querySelector(".label").textContent = label || LABELS[state] || state;
}

// one notice at a time; an error notice stays until dismissed or until things work again,
// a sticky one until dismissed
export const notices = { error: false, sticky: false };

export function notice(text, error = false, sticky = false) {
  const el = $("notice");
  el.hidden = !text;
  el.classList.toggle("error", error);
  notices.error = Boolean(text) && error;
  notices.sticky = Boolean(text) && sticky;
  if (!text) { el.replaceChildren(); return; }
  const msg = document.createElement("span");
  msg.textContent = text;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "dismiss";
  close.setAttribute("aria-label", "Dismiss this message");
  close.textContent = "×";
  close.addEventListener("click", () => notice(null));
  el.replaceChildren(msg, close);
}

export function spaced(nodes) {
  return nodes.flatMap((n, i) => (i ? [document.createTextNode(" "), n] : [n]));
}

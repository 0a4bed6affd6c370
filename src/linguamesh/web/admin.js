// Operator page: polls /api/v1/admin/overview every second.
import { $ } from "./ui.js";
const token = new URLSearchParams(location.search).get("token") || "";

function cell(value) {
  const td = document.createElement("td");
  if (value instanceof Node) td.append(value);
  else td.textContent = value ?? "";
  return td;
}

// a job id links to the job's record (its attempts, timings and error); a trace id to the
// job view too, with the command that shows the whole timeline from the logs
function jobLink(jobId, label) {
  if (!jobId) return "";
  const a = document.createElement("a");
  a.href = `/api/v1/jobs/${encodeURIComponent(jobId)}${token ? `?token=${encodeURIComponent(token)}` : ""}`;
  a.textContent = label || jobId;
  return a;
}

function traceCell(jobId, traceId) {
  if (!traceId) return "";
  const a = jobLink(jobId, traceId);
  a.title = `linguamesh trace ${traceId} <log files>`;
  return a;
}

function fill(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(
    ...rows.map((cols) => {
      const tr = document.createElement("tr");
      tr.append(...cols.map(cell));
      return tr;
    }),
  );
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell("none");
    td.colSpan = $(id).querySelectorAll("th").length;
    tr.append(td);
    body.append(tr);
  }
}

// a latency in ms, as people read it ("–" when there is none yet)
function duration(ms) {
  if (ms == null) return "–";
  if (ms >= 10000) return `${(ms / 1000).toFixed(0)} s`;
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

function minutes(seconds) {
  return seconds < 90 ? `${Math.round(seconds)} s` : `${Math.round(seconds / 60)} min`;
}

async function refresh() {
  try {
    const res = await fetch(`/api/v1/admin/overview${token ? `?token=${encodeURIComponent(token)}` : ""}`);
    const data = await res.json();
    if (!res.ok) throw new Error(data.error ? data.error.message : res.statusText);
    $("notice").hidden = true;
    const conn = $("conn");
    // the header's dot is the cluster's health, not only this page's connection
    conn.dataset.state = { ok: "connected", warn: "reconnecting", bad: "offline" }[(data.health || {}).status] || "connected";
    const instances = Object.keys(data.instances || {}).length || 1;
    const missing = (data.unanswered || []).length ? ` · no answer from ${data.unanswered.join(", ")}` : "";
    // a closed tab's session lingers for a resume: counted apart, not as a live one
    const list = data.session_list || [];
    const live = list.filter((s) => s.connected).length;
    const away = list.length - live;
    conn.querySelector(".label").textContent =
      `instance ${data.instance_id} of ${instances} · ${live} live session${live === 1 ? "" : "s"}` +
      `${away ? ` (${away} away)` : ""} · queue ${data.queue_depth}${missing}`;
    const health = data.health || { status: "ok", problems: [] };
    $("health").dataset.status = health.status;
    $("health-summary").textContent = {
      ok: "All good: nodes serve every language asked for and no job waits.",
      warn: "Needs a look:",
      bad: "Translation is failing or will fail:",
    }[health.status] || health.status;
    $("health-problems").replaceChildren(...health.problems.map((p) => {
      const li = document.createElement("li");
      li.textContent = p;
      return li;
    }));
    const lat = data.latency || {};
    fill("latency", [
      ["End of speech → result", lat.after_speech],
      ["Job created → result", lat.job],
    ].filter(([, l]) => l).map(([what, l]) => [what, l.jobs, duration(l.p50), duration(l.p90), duration(l.p99)]));
    $("latency-window").textContent = lat.window_s
      ? `Jobs completed in the last ${Math.round(lat.window_s / 60)} minutes, on every instance. A streamed utterance's job starts when the speaker does.`
      : "";
    fill("sessions", (data.session_list || []).map((s) => [
      s.session_id,
      [s.title, s.presenter].filter(Boolean).join(" — ") || (s.room ? `room ${s.room}` : ""),
      `${s.src_lang} → ${s.tgt_langs.join(", ")}${s.listener_langs.length ? ` + listeners: ${s.listener_langs.join(", ")}` : ""}`,
      s.viewers,
      s.connected ? "connected" : "away (kept for a resume)",
      s.age_s == null ? "" : minutes(s.age_s),
      s.instance_id,
    ]));
    fill("nodes", data.nodes.map((n) => [
      n.sitting_out_s ? `${n.node_id} (sitting out ${Math.round(n.sitting_out_s)} s: acks timed out)` : n.node_id,
      n.instance_id, n.pool, `${n.reserved}/${n.max_concurrent_jobs} (running ${n.running_jobs})`,
      `ASR ${n.capabilities.asr_languages.join(" ")} · TTS ${n.capabilities.tts_languages.length} langs`,
      n.capabilities.nmt_pairs.map((p) => p.join("→")).join(" "), `${n.last_heartbeat_s_ago.toFixed(1)} s ago`, n.version,
    ]));
    fill("pools", data.pools.map((p) => [p.name, p.nodes.join(", "), `${p.free_slots} / ${p.slots}`]));
    fill("jobs", data.jobs_in_flight.map((j) => [
      jobLink(j.job_id), j.instance_id, j.state, j.attempt_id, j.node_id, j.pair, `${j.age_s.toFixed(1)} s`, traceCell(j.job_id, j.trace_id),
    ]));
    fill("recent", data.recent_jobs.map((j) => [
      jobLink(j.job_id), j.state, j.node_id, j.pair, `${j.ms} ms`, traceCell(j.job_id, j.trace_id),
    ]));
    fill("failures", data.failures.map((f) => [
      new Date(f.at * 1000).toLocaleTimeString(), jobLink(f.job_id), f.code, f.reason, f.attempts, traceCell(f.job_id, f.trace_id),
    ]));
    // counters in words (the Prometheus name in the tooltip), with their labels
    const help = data.counter_help || {};
    $("counters").replaceChildren(...Object.entries(data.counters).sort().map(([k, v]) => {
      const d = document.createElement("div");
      const name = k.split("{")[0];
      const labels = k.includes("{") ? ` (${k.slice(k.indexOf("{") + 1, -1).replaceAll(",", ", ")})` : "";
      d.textContent = `${help[name] || name}${labels}: ${Number.isInteger(v) ? v : v.toFixed(2)}`;
      d.title = `linguamesh_${k}`;
      return d;
    }));
  } catch (e) {
    const el = $("notice");
    el.hidden = false;
    el.textContent = `Cannot load the overview: ${e.message}`;
    $("conn").dataset.state = "offline";
  }
}

refresh();
setInterval(refresh, 1000);

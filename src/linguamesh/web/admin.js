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

async function refresh() {
  try {
    const res = await fetch(`/api/v1/admin/overview${token ? `?token=${encodeURIComponent(token)}` : ""}`);
    const data = await res.json();
    if (!res.ok) throw new Error(data.error ? data.error.message : res.statusText);
    $("notice").hidden = true;
    const conn = $("conn");
    conn.dataset.state = "connected";
    const instances = Object.keys(data.instances || {}).length || 1;
    const missing = (data.unanswered || []).length ? ` · no answer from ${data.unanswered.join(", ")}` : "";
    conn.querySelector(".label").textContent =
      `instance ${data.instance_id} of ${instances} · ${data.sessions} sessions · queue ${data.queue_depth}${missing}`;
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
    $("counters").replaceChildren(...Object.entries(data.counters).sort().map(([k, v]) => {
      const d = document.createElement("div");
      d.textContent = `${k}: ${v}`;
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

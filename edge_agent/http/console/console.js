// edge-agent console: plain DOM, no framework, no build step. Every call goes through api(), which
// sends the API key (kept in sessionStorage) as "Authorization: Bearer": a header a cross-site page
// cannot make the browser add, so a foreign page cannot act with this tab's key (docs/http.md, Console).
"use strict";

const KEY = "edge-agent-api-key";
const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
let pollTimer = null;
let modelIds = [];

// A model id ("project/3") as URL path segments, each encoded; a pipeline id as one segment.
function modelPath(id) { return id.split("/").map(encodeURIComponent).join("/"); }
function seg(id) { return encodeURIComponent(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function key() { return sessionStorage.getItem(KEY) || ""; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (key()) h.Authorization = "Bearer " + key();
  return h;
}

// fetch a route of the device (a path relative to the page); {status, data} with data the parsed JSON.
async function api(method, path, body, contentType) {
  const init = {method, headers: headers(contentType ? {"Content-Type": contentType} : {})};
  if (body !== undefined) init.body = body;
  const r = await fetch(path, init);
  const text = await r.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch (e) { /* not JSON: keep the text */ }
  if (r.status === 401) askForKey(key() ? "The API key was refused: enter it again." : "");
  return {status: r.status, ok: r.ok, data};
}

function problem(res) {
  const d = res.data;
  if (d && typeof d === "object") {
    if (Array.isArray(d.detail)) return d.detail.map((e) => (e.loc || []).slice(1).join(".") + ": " + e.msg).join("; ");
    const parts = [d.message, d.reason].filter(Boolean);
    if (parts.length) return parts.join(": ");
    if (d.detail) return String(d.detail);
  }
  return "HTTP " + res.status + (typeof d === "string" && d ? ": " + d.slice(0, 300) : "");
}

function askForKey(message) {
  $("key-form").hidden = false;
  showBanner(message || "This device needs its API key.");
  $("key-input").focus();
}

function showBanner(text) { const b = $("banner"); b.textContent = text; b.hidden = !text; }

function fill(target, node) { target.replaceChildren(node); }

function dl(target, pairs) {
  target.replaceChildren(...pairs.filter((p) => p[1] !== undefined && p[1] !== null && p[1] !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// A table rebuilt in place; the button that had the keyboard focus has it again afterwards (polling).
function table(target, head, rows) {
  const focused = target.contains(document.activeElement) ? document.activeElement.getAttribute("aria-label") : null;
  const thead = el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {scope: "col"}, h))));
  const tbody = el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c, i) => el("td", {"data-label": head[i]}, c)))));
  if (!rows.length) tbody.append(el("tr", {}, el("td", {colspan: head.length}, "none")));
  target.replaceChildren(thead, tbody);
  if (focused) {
    const again = [...target.querySelectorAll("[aria-label]")].find((b) => b.getAttribute("aria-label") === focused);
    if (again) again.focus();
  }
}

function device(d) {
  if (!d) return null;
  const name = d.jetson_model || d.gpu_name || "no NVIDIA GPU";
  return name + (d.l4t_release ? ", L4T " + d.l4t_release : "") + (d.compute_capability ? ", compute " +
    d.compute_capability : "") + (d.dla_cores ? ", " + d.dla_cores + " DLA" : "") + (d.cuda ? ", CUDA" :
    d.cuda_reason ? " (" + d.cuda_reason + ")" : "");
}

const mb = (n) => (n === undefined || n === null ? null : (n / 1048576).toFixed(0) + " MB");
const secs = (s) => { s = Math.round(s); const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
  m = Math.floor(s % 3600 / 60); return (d ? d + "d " : "") + (h ? h + "h " : "") + m + "m " + (s % 60) + "s"; };
const fmt = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

// ------------------------------------------------------------------------------------------- overview

async function overview() {
  const res = await api("GET", "console/status");
  if (!res.ok) { if (res.status !== 401) showBanner("Status: " + problem(res)); return; }
  const s = res.data;
  $("open-warning").hidden = s.api_key_set;
  const choice = s.engine_choice || {};
  dl($("ov-device"), [["Version", s.version], ["Uptime", secs(s.uptime_s)],
    ["Readiness", s.ready ? "ready" : s.readiness], ["Back-end", choice.backend], ["Why", choice.reason],
    ["Device", device(choice.device)], ["Engine build", s.building]]);
  const sys = s.system || {}, mem = sys.memory || {};
  const temps = Object.entries(sys.temperatures_c || {}).map(([k, v]) => k + " " + v.toFixed(1) + " °C").join(", ");
  dl($("ov-system"), [["CPU", sys.cpu_percent === undefined ? null : sys.cpu_percent + " %"],
    ["Load", (sys.load_average || []).map((x) => x.toFixed(2)).join(" ")],
    ["Memory", mem.total_bytes ? mb(mem.total_bytes - mem.available_bytes) + " of " + mb(mem.total_bytes) : null],
    ["Daemon", mb(sys.process_rss_bytes)], ["Temperatures", temps],
    ["GPU", sys.gpu ? sys.gpu.load_percent + " %" : null]]);
  const q = s.mqtt;
  dl($("ov-mqtt"), q ? [["State", q.connected ? "connected" : "not connected"], ["Outbox", q.outbox_depth + " messages"],
    ["Published", q.published], ["Dropped", fmt(q.dropped)]] : [["State", "off"]]);
  const al = s.active_learning;
  dl($("ov-al"), al ? [["Sampler", fmt(al.sampler)], ["Spool", fmt(al.spool)], ["Uploads", fmt(al.targets)]]
    : [["State", "off"]]);
  table($("ov-engines"), ["Model", "Engine", "State", "Detail"], Object.entries(s.engines || {}).map(([id, e]) =>
    [id, e.backend || "", el("span", {class: "state-" + e.state}, e.state + (e.progress != null ?
      " " + Math.round(e.progress * 100) + " %" : "")), e.reason || e.phase || ""]));
  table($("ov-pipelines"), ["Pipeline", "State", "Source fps", "Inference fps", "Latency", "Dropped", "Reconnects"],
    Object.entries(s.pipelines || {}).map(([id, p]) => [id, p.state, fmt(p.source_fps), fmt(p.inference_fps),
      p.latency_s == null ? "" : (p.latency_s * 1000).toFixed(0) + " ms", p.dropped, p.reconnects]));
  const recent = (s.log && s.log.recent) || [];
  $("ov-log").replaceChildren(...(recent.length ? recent.slice().reverse().map((r) => el("li", {class: r.level},
    new Date(r.time * 1000).toLocaleTimeString() + " " + r.level + " " + r.logger + ": " + r.message))
    : [el("li", {}, s.log && s.log.kept ? "none" : "not kept by this process")]));
}

// --------------------------------------------------------------------------------------------- models

async function loadModels() {
  const res = await api("GET", "models");
  if (!res.ok) { $("models-result").textContent = problem(res); return; }
  modelIds = res.data.models.map((m) => m.model_id);
  table($("models-table"), ["Model", "Task", "Serving", "Earlier revisions", "Actions"], res.data.models.map((m) => [
    m.model_id + (m.builtin ? " (built in)" : ""), m.task,
    el("span", {title: m.sha256}, m.sha256.slice(0, 12) + (m.loaded ? " (loaded)" : "")),
    el("div", {}, ...m.revisions.map((r) => el("button", {type: "button", class: "secondary",
      "aria-label": "Activate revision " + r.revision + " of " + m.model_id,
      on: {click: () => change(m.model_id, "activate?revision=" + encodeURIComponent(r.revision))}},
    "Activate " + r.revision))),
    el("div", {}, m.revisions.length ? el("button", {type: "button", "aria-label": "Roll back " + m.model_id,
      on: {click: () => change(m.model_id, "rollback")}}, "Roll back") : null,
    m.loaded ? el("button", {type: "button", class: "secondary", "aria-label": "Unload " + m.model_id,
      on: {click: () => unload(m.model_id)}}, "Unload") : null,
    m.builtin ? null : el("button", {type: "button", class: "secondary", "aria-label": "Remove " + m.model_id,
      on: {click: () => remove(m.model_id)}}, "Remove"))]));
  for (const select of [$("try-model"), $("pl-model_id")]) {
    const was = select.value;
    select.replaceChildren(...modelIds.map((id) => el("option", {value: id}, id)));
    if (modelIds.includes(was)) select.value = was;
  }
}

async function change(modelId, action) {
  $("models-result").textContent = "Working on " + modelId + "...";
  const res = await api("POST", "models/" + modelPath(modelId) + "/" + action);
  $("models-result").textContent = res.ok ? modelId + ": " + (res.data.activated ? "serving " : "kept ") +
    res.data.sha256.slice(0, 12) + ", check " + (res.data.check.ok ? "passed" : "failed: " + res.data.check.reason)
    : modelId + ": " + problem(res);
  await loadModels();
}

async function remove(modelId) {
  if (!confirm("Remove " + modelId + " and its earlier revisions from this device? Requests for it will fail.")) return;
  $("models-result").textContent = "Removing " + modelId + "...";
  const res = await api("DELETE", "models/" + modelPath(modelId));
  $("models-result").textContent = res.ok ? modelId + " removed from the store" : modelId + ": " + problem(res);
  await loadModels();
}

async function unload(modelId) {
  const res = await api("POST", "model/remove", JSON.stringify({model_id: modelId}), "application/json");
  $("models-result").textContent = res.ok ? modelId + " unloaded (its files stay in the store)" : problem(res);
  await loadModels();
}

function upload(event) {
  event.preventDefault();
  const file = $("up-file").files[0], id = $("up-model").value.trim(), out = $("up-result"), bar = $("up-progress");
  if (!file || !id) return;
  const xhr = new XMLHttpRequest();
  xhr.open("PUT", "models/" + modelPath(id) + "?activate=" + $("up-activate").checked);
  for (const [k, v] of Object.entries(headers({"Content-Type": "application/octet-stream"}))) xhr.setRequestHeader(k, v);
  bar.hidden = false; bar.value = 0; out.textContent = "Uploading...";
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = Math.round(100 * e.loaded / e.total); };
  xhr.upload.onload = () => { out.textContent = "Uploaded; checking the new version..."; };
  xhr.onerror = () => { out.textContent = "The upload failed (network)."; };
  xhr.onload = () => {
    let data = null;
    try { data = JSON.parse(xhr.responseText); } catch (e) { data = xhr.responseText; }
    const res = {status: xhr.status, ok: xhr.status < 300, data};
    if (xhr.status === 401) askForKey("The API key was refused: enter it again.");
    out.textContent = res.ok ? "Verdict: " + (data.check.ok ? "passed" : "failed") + "\n" + JSON.stringify(data, null, 2)
      : "Refused: " + problem(res);
    loadModels();
  };
  xhr.send(file);
}

async function tryIt(event) {
  event.preventDefault();
  const file = $("try-file").files[0], id = $("try-model").value;
  $("try-error").textContent = "";
  if (!file || !id) { $("try-error").textContent = "Pick a model and an image."; return; }
  const form = new FormData();
  form.append("file", file);
  const res = await api("POST", modelPath(id) + "?format=image_and_json&confidence=" + $("try-conf").value, form);
  if (!res.ok) { $("try-error").textContent = problem(res); return; }
  const body = Object.assign({}, res.data);
  const drawn = body.visualization;
  delete body.visualization;
  const img = $("try-image");
  if (drawn) { img.src = "data:image/jpeg;base64," + drawn; img.hidden = false; }
  $("try-json").textContent = JSON.stringify(body, null, 2);
}

function dropZone(form, input) {
  form.addEventListener("dragover", (e) => { e.preventDefault(); form.classList.add("drop"); });
  form.addEventListener("dragleave", () => form.classList.remove("drop"));
  form.addEventListener("drop", (e) => {
    e.preventDefault(); form.classList.remove("drop");
    if (e.dataTransfer.files.length) input.files = e.dataTransfer.files;
  });
}

// ------------------------------------------------------------------------------------------ pipelines

async function loadPipelines() {
  const list = await api("GET", "inference_pipelines/list");
  if (!list.ok) { $("pipelines-result").textContent = problem(list); return; }
  const reports = await Promise.all(list.data.pipelines.map((id) => api("GET", "inference_pipelines/" + seg(id) + "/status")));
  table($("pipelines-table"), ["Pipeline", "Model", "State", "Source fps", "Inference fps", "Latency", "Frames",
    "Dropped", "Reconnects", "Actions"], reports.filter((r) => r.ok).map((r) => {
    const p = r.data.report, src = p.source || {}, id = p.pipeline_id;
    const act = (what) => el("button", {type: "button", class: what === "terminate" ? "secondary" : null,
      "aria-label": what + " " + id, on: {click: () => command(id, what)}}, what[0].toUpperCase() + what.slice(1));
    return [id, p.model_id, el("span", {class: "state-" + p.state}, p.state + (p.error ? ": " + p.error : "")),
      fmt(src.source_fps), fmt(p.inference_fps), p.latency_s == null ? "" : (p.latency_s * 1000).toFixed(0) + " ms",
      p.frames_inferred, fmt(src.dropped), fmt(src.reconnects),
      el("div", {}, el("button", {type: "button", "aria-label": "Preview " + id, on: {click: () => preview(id)}},
        "Preview"), act(p.state === "paused" ? "resume" : "pause"), act("terminate"))];
  }));
}

function preview(id) {
  const img = $("preview");
  img.src = "pipelines/" + seg(id) + "/preview.mjpg" + (key() ? "?api_key=" + encodeURIComponent(key()) : "");
  img.dataset.pipeline = id;
  $("preview-title").textContent = "Preview of " + id;
  $("preview-box").hidden = false;
}

function closePreview() { const img = $("preview"); img.removeAttribute("src"); $("preview-box").hidden = true; }

async function command(id, what) {
  if (what === "terminate" && $("preview").dataset.pipeline === id) closePreview();
  const res = await api("POST", "inference_pipelines/" + seg(id) + "/" + what);
  $("pipelines-result").textContent = res.ok ? id + ": " + what + " done" : id + ": " + problem(res);
  await loadPipelines();
}

const FIELDS = ["model_id", "video_reference", "pipeline_id", "confidence", "max_fps"];

function fieldOf(res) {
  const d = res.data || {};
  if (Array.isArray(d.detail)) {
    const out = {};
    for (const e of d.detail) {
      const f = (e.loc || []).find((x) => FIELDS.includes(x)) || "*";
      out[f] = (out[f] ? out[f] + "; " : "") + e.msg;
    }
    return out;
  }
  const text = problem(res);
  if (/source|video|camera|rtsp|file/i.test(text)) return {video_reference: text};
  if (/model/i.test(text)) return {model_id: text};
  if (/pipeline/i.test(text)) return {pipeline_id: text};
  return {"*": text};
}

async function startPipeline(event) {
  event.preventDefault();
  const form = $("pipeline-form");
  form.querySelectorAll("[data-error-for]").forEach((p) => { p.textContent = ""; });
  const v = (name) => form.elements[name].value.trim();
  const ref = v("video_reference");
  const body = {model_id: v("model_id"), video_reference: /^\d+$/.test(ref) ? Number(ref) : ref,
    realtime: form.elements.realtime.checked};
  if (v("pipeline_id")) body.pipeline_id = v("pipeline_id");
  if (v("confidence")) body.confidence = Number(v("confidence"));
  if (v("max_fps")) body.max_fps = Number(v("max_fps"));
  const res = await api("POST", "inference_pipelines/initialise", JSON.stringify(body), "application/json");
  if (res.ok) {
    $("pipelines-result").textContent = "Started " + res.data.context.pipeline_id;
    await loadPipelines();
    preview(res.data.context.pipeline_id);
    return;
  }
  let first = null;
  for (const [f, text] of Object.entries(fieldOf(res))) {
    const p = form.querySelector('[data-error-for="' + f + '"]') || form.querySelector('[data-error-for="*"]');
    p.textContent = text;
    if (!first && f !== "*") first = form.elements[f];
  }
  if (first) { first.setAttribute("aria-invalid", "true"); first.focus(); }
}

// --------------------------------------------------------------------------------------------- config

async function loadConfig() {
  const res = await api("GET", "console/config");
  if (!res.ok) { $("cfg-file").textContent = problem(res); return; }
  $("cfg-file").textContent = "Read from: " + (res.data.config_file || "no file (defaults and environment)");
  const box = $("cfg-settings"), sources = res.data.sources || {};
  box.replaceChildren(...Object.entries(res.data.settings).filter(([, v]) => v && typeof v === "object" &&
    !Array.isArray(v)).map(([section, values]) => {
    const t = el("table");
    table(t, ["Key", "Value", "From"], Object.entries(values).map(([k, x]) =>
      [k, fmt(x), sources[section + "." + k] || "default"]));
    return el("details", {}, el("summary", {}, "[" + section + "]"), el("div", {class: "scroll"}, t));
  }));
}

async function checkConfig(event) {
  event.preventDefault();
  const res = await api("POST", "console/config/check", $("check-text").value, "text/plain; charset=utf-8");
  const out = $("check-result");
  if (!res.ok) { out.textContent = problem(res); return; }
  out.textContent = res.data.ok ? "Configuration ok (not applied)." :
    (res.data.line ? "Line " + res.data.line + ": " : "") + res.data.error;
  out.className = "result " + (res.data.ok ? "state-ok" : "state-error");
}

// ------------------------------------------------------------------------------------------- routing

const PAGES = {overview: [overview, true], models: [loadModels, false], pipelines: [loadPipelines, true],
  config: [loadConfig, false]};

function current() { const h = location.hash.slice(1); return PAGES[h] ? h : "overview"; }

async function show() {
  const page = current();
  document.querySelectorAll("[data-page]").forEach((s) => { s.hidden = s.dataset.page !== page; });
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.getAttribute("href") === "#" + page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  if (page !== "pipelines") closePreview();
  clearTimeout(pollTimer);
  const [load, poll] = PAGES[page];
  if (page === "models" || page === "pipelines") await loadModels();
  if (page !== "models") await load();
  if (poll) schedule(page);
}

// Poll the page on view only, and not while the tab is hidden: an open console costs the API little.
function schedule(page) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(async () => {
    if (!document.hidden && current() === page && $("key-form").hidden) {  // not while the key is asked for
      try { await PAGES[page][0](); } catch (e) { showBanner("Lost the device: " + e.message); }
    }
    if (current() === page) schedule(page);
  }, POLL_MS);
}

function init() {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key-input").value);
    $("key-input").value = "";
    $("key-form").hidden = true;
    showBanner("");
    show();
  });
  $("upload-form").addEventListener("submit", upload);
  $("try-form").addEventListener("submit", tryIt);
  $("try-conf").addEventListener("input", () => { $("try-conf-value").textContent = $("try-conf").value; });
  dropZone($("try-form"), $("try-file"));
  $("pipeline-form").addEventListener("submit", startPipeline);
  $("preview-close").addEventListener("click", closePreview);
  $("check-form").addEventListener("submit", checkConfig);
  window.addEventListener("hashchange", show);
  show();
}

init();

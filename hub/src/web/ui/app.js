// The ds hub's web UI: a small single-page app over the REST API.
// No framework and no build step: the hub serves this file as is. Every
// value from the API reaches the page through textContent or attributes,
// never as HTML.
"use strict";

const main = () => document.getElementById("main");

function h(tag, attrs, ...kids) {
  const e = document.createElementNS(
    ["svg", "line", "rect", "text", "path", "circle", "polyline", "defs", "marker", "g", "title"].includes(tag)
      ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function show(...nodes) {
  main().replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined));
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, opts = {}) {
  const headers = { "X-DS-Request": "1", ...(opts.body ? { "Content-Type": "application/json" } : {}) };
  const r = await fetch(path, { credentials: "same-origin", ...opts, headers });
  if (r.status === 204) return null;
  const body = await r.json().catch(() => null);
  if (!r.ok) {
    const e = body && body.error ? body.error : { code: "http_" + r.status, message: r.statusText };
    throw new ApiError(r.status, e.code, e.message);
  }
  return body;
}

const short = (id) => (id ? String(id).slice(0, 12) : "");
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "");
const whenNs = (ns) => when(Math.floor(ns / 1e6));
const bytes = (n) => {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
};
const link = (href, text, cls) => h("a", { href, class: cls }, text);
const enc = encodeURIComponent;

function errorView(e) {
  if (e instanceof ApiError && e.status === 401) { location.hash = "#/login"; return; }
  show(h("p", { class: "error", id: "error" }, e.message || String(e)));
}

function table(cols, rows, opts = {}) {
  // cols: [{title, get(row) -> node|string, sort(row) -> comparable}]
  const state = { col: opts.sortCol ?? -1, asc: opts.asc ?? false };
  const t = h("table", { id: opts.id });
  const render = () => {
    const sorted = rows.slice();
    if (state.col >= 0 && cols[state.col].sort) {
      const f = cols[state.col].sort;
      sorted.sort((a, b) => {
        const x = f(a), y = f(b);
        const c = x === y ? 0 : x === undefined ? 1 : y === undefined ? -1 : x < y ? -1 : 1;
        return state.asc ? c : -c;
      });
    }
    const head = h("tr", {}, cols.map((c, i) => h("th", {
      class: [c.sort ? "sortable" : "", i === state.col ? "sorted" : "", i === state.col && state.asc ? "asc" : ""].join(" ").trim(),
      onclick: c.sort ? () => { state.asc = state.col === i ? !state.asc : false; state.col = i; render(); } : undefined,
    }, c.title)));
    const body = sorted.map((r) => h("tr", {}, cols.map((c) => h("td", {}, c.get(r)))));
    t.replaceChildren(h("thead", {}, head), h("tbody", {}, body));
  };
  render();
  return t;
}

// ---- views ----

async function loginView() {
  const input = h("input", { type: "password", id: "token", placeholder: "ds_…", autocomplete: "off", required: true });
  const msg = h("p", { class: "muted" }, "Log in with a token: an admin's (admin.token in the hub's data directory) or one made with `ds token`.");
  const form = h("form", {
    class: "login", id: "login",
    onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        await api("/api/v1/login", { method: "POST", body: JSON.stringify({ token: input.value }) });
        location.hash = "#/";
        await whoami();
      } catch (e) { msg.className = "error"; msg.textContent = e.message; }
    },
  }, h("label", { for: "token" }, "Token"), input, h("button", { type: "submit" }, "Log in"), msg);
  show(h("h1", {}, "Log in"), form);
}

async function workspacesView() {
  const ws = await api("/api/v1/workspaces?limit=1000");
  show(h("h1", {}, "Workspaces"), h("div", { id: "workspaces" },
    ws.length === 0 ? h("p", { class: "muted" }, "No workspaces yet: `ds push` one, or `ds run -w NAME …`.") :
      table([
        { title: "Workspace", get: (w) => link("#/w/" + enc(w.name), w.name), sort: (w) => w.name },
        { title: "Snapshot", get: (w) => h("code", {}, short(w.snapshot)) },
      ], ws, { sortCol: 0, asc: true })));
}

function tabs(ws, on) {
  const t = (name, href) => link(href, name, on === name ? "on" : "");
  return h("p", { class: "tabs" },
    t("Snapshots", "#/w/" + enc(ws)), t("Runs", "#/w/" + enc(ws) + "/runs"),
    t("Models", "#/w/" + enc(ws) + "/models"), t("Tasks", "#/tasks?workspace=" + enc(ws)));
}

async function snapshotsView(ws) {
  const snaps = await api(`/api/v1/workspaces/${enc(ws)}/snapshots?limit=200`);
  show(h("h1", {}, ws), tabs(ws, "Snapshots"),
    table([
      { title: "Snapshot", get: (s) => link(`#/w/${enc(ws)}/s/${s.id}/`, short(s.id), "snap") },
      { title: "", get: (s) => (s.parents.length ? link(`#/w/${enc(ws)}/diff/${s.parents[0]}/${s.id}`, "diff", "diff") : "") },
      { title: "Time", get: (s) => whenNs(s.time_ns), sort: (s) => s.time_ns },
      { title: "Message", get: (s) => s.message },
      { title: "Files", get: (s) => s.files, sort: (s) => s.files },
      { title: "Size", get: (s) => bytes(s.bytes), sort: (s) => s.bytes },
      { title: "Runs", get: (s) => s.runs.length || "", sort: (s) => s.runs.length },
      { title: "From", get: (s) => s.hostname },
    ], snaps, { id: "snapshots" }));
}

const pathHref = (ws, snap, parts) => `#/w/${enc(ws)}/s/${snap}/` + parts.map(enc).join("/");

function crumbs(ws, snap, parts) {
  const out = [link(pathHref(ws, snap, []), short(snap))];
  parts.forEach((p, i) => out.push(" / ", link(pathHref(ws, snap, parts.slice(0, i + 1)), p)));
  return h("p", { class: "crumbs" }, out);
}

// A directory of a snapshot, or a file's content.
async function browseView(ws, snap, parts) {
  const base = `/api/v1/workspaces/${enc(ws)}/snapshots/${snap}`;
  const path = parts.join("/");
  let entries;
  try {
    entries = await api(`${base}/tree?limit=1000&path=${enc(path)}`);
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 400 || !parts.length) throw e;
    return fileView(ws, snap, parts, base);
  }
  show(h("h1", {}, ws), tabs(ws, "Snapshots"), crumbs(ws, snap, parts),
    table([
      { title: "Name", get: (e) => (e.kind === "symlink" ? [e.name, " → ", h("code", {}, e.target)] :
          link(pathHref(ws, snap, [...parts, e.name]) + (e.kind === "dir" ? "/" : ""), e.name + (e.kind === "dir" ? "/" : ""))),
        sort: (e) => e.name },
      { title: "Size", get: (e) => (e.kind === "file" ? bytes(e.size) : ""), sort: (e) => e.size },
      { title: "Mode", get: (e) => h("code", {}, (e.mode & 0o7777).toString(8)) },
      { title: "Modified", get: (e) => whenNs(e.mtime_ns), sort: (e) => e.mtime_ns },
    ], entries, { id: "tree", sortCol: 0, asc: true }));
}

const PREVIEW = 256 * 1024;

async function fileView(ws, snap, parts, base) {
  const url = `${base}/files/` + parts.map(enc).join("/");
  const r = await fetch(url, { credentials: "same-origin", headers: { Range: `bytes=0-${PREVIEW - 1}` } });
  if (!r.ok && r.status !== 416) {
    const b = await r.json().catch(() => ({ error: { message: r.statusText } }));
    throw new ApiError(r.status, b.error.code, b.error.message);
  }
  const total = Number((r.headers.get("Content-Range") || "").split("/")[1] || r.headers.get("Content-Length") || 0);
  const buf = r.status === 416 ? new ArrayBuffer(0) : await r.arrayBuffer();
  let body;
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(buf);
    body = h("pre", { class: "file", id: "file" }, text, total > PREVIEW ? `\n… (${bytes(total)} in all)` : "");
  } catch {
    body = h("p", { class: "muted", id: "file" }, `Binary file, ${bytes(total)}.`);
  }
  show(h("h1", {}, ws), tabs(ws, "Snapshots"), crumbs(ws, snap, parts),
    h("p", {}, link(url + "?download=true", "Download", "download"), ` · ${bytes(total)}`), body);
}

async function diffView(ws, from, to) {
  const changes = await api(`/api/v1/workspaces/${enc(ws)}/diff?from=${from}&to=${to}&limit=1000`);
  const size = (c) => [c.size_before, c.size_after].map((x) => (x === null || x === undefined ? "" : bytes(x))).join(" → ");
  show(h("h1", {}, ws), tabs(ws, "Snapshots"),
    h("p", {}, "Changes from ", link(`#/w/${enc(ws)}/s/${from}/`, short(from)), " to ", link(`#/w/${enc(ws)}/s/${to}/`, short(to))),
    h("div", { id: "diff" }, changes.length === 0 ? h("p", { class: "muted" }, "No changes.") :
      table([
        { title: "", get: (c) => h("span", { class: "change-" + c.change }, c.change), sort: (c) => c.change },
        { title: "Path", get: (c) => (c.change === "removed" ? c.path :
            link(pathHref(ws, to, c.path.split("/")), c.path)), sort: (c) => c.path },
        { title: "Kind", get: (c) => c.kind_after || c.kind_before },
        { title: "Size", get: size },
      ], changes, { sortCol: 1, asc: true })));
}

const fmtValue = (v) => (v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

async function runsView(ws) {
  const runs = await api(`/api/v1/workspaces/${enc(ws)}/runs?limit=1000`);
  const params = [...new Set(runs.flatMap((r) => Object.keys(r.parameters)))].sort();
  const metrics = [...new Set(runs.flatMap((r) => Object.keys(r.metrics)))].sort();
  const cols = [
    { title: "Run", get: (r) => link(`#/w/${enc(ws)}/run/${r.id}`, r.name || short(r.id)), sort: (r) => r.name },
    { title: "Recorded", get: (r) => whenNs(r.recorded_ns), sort: (r) => r.recorded_ns },
    { title: "Task", get: (r) => (r.task ? link("#/t/" + enc(r.task), r.task) : "") },
    ...params.map((p) => ({ title: p, get: (r) => fmtValue(r.parameters[p]), sort: (r) => r.parameters[p] })),
    ...metrics.map((m) => ({ title: m, get: (r) => fmtValue(r.metrics[m]), sort: (r) => r.metrics[m] })),
  ];
  const chartBox = h("div", { id: "chart" });
  const pick = h("select", { id: "metric", onchange: () => chartBox.replaceChildren(chart(runs, pick.value)) },
    metrics.map((m) => h("option", { value: m }, m)));
  show(h("h1", {}, ws), tabs(ws, "Runs"),
    runs.length === 0 ? h("p", { class: "muted" }, "No runs recorded in this workspace yet.") :
      h("div", {}, table(cols, runs, { id: "runs", sortCol: 1 }),
        metrics.length ? h("div", {}, h("h2", {}, "Metric across runs ", pick), chartBox) : null));
  if (metrics.length) chartBox.replaceChildren(chart(runs, metrics[0]));
}

// A line chart of one metric over the runs, oldest to newest.
function chart(runs, metric) {
  const pts = runs.filter((r) => typeof r.metrics[metric] === "number")
    .sort((a, b) => a.recorded_ns - b.recorded_ns).map((r) => [r, r.metrics[metric]]);
  const W = 640, H = 220, P = 36;
  const svg = h("svg", { class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": metric });
  if (pts.length === 0) { svg.append(h("text", { x: P, y: H / 2 }, "no numeric values")); return svg; }
  const ys = pts.map((p) => p[1]);
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
  const x = (i) => P + (pts.length === 1 ? (W - 2 * P) / 2 : (i * (W - 2 * P)) / (pts.length - 1));
  const y = (v) => H - P - ((v - lo) * (H - 2 * P)) / span;
  svg.append(h("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#9aa6bf" }),
    h("text", { x: 4, y: y(hi) + 4 }, hi.toPrecision(4)), h("text", { x: 4, y: y(lo) + 4 }, lo.toPrecision(4)),
    h("polyline", { points: pts.map((p, i) => `${x(i)},${y(p[1])}`).join(" "), fill: "none", stroke: "#2f62d8", "stroke-width": 2 }));
  pts.forEach((p, i) => svg.append(h("circle", { cx: x(i), cy: y(p[1]), r: 3.5, fill: "#2f62d8" },
    h("title", {}, `${p[0].name}: ${p[1]}`))));
  return svg;
}

async function runView(ws, id) {
  const r = await api(`/api/v1/workspaces/${enc(ws)}/runs/${enc(id)}`);
  const kv = (o) => table([{ title: "Name", get: (e) => e[0] }, { title: "Value", get: (e) => fmtValue(e[1]) }], Object.entries(o));
  show(h("h1", {}, "Run ", r.name || short(r.id)), tabs(ws, "Runs"),
    h("p", {}, "Recorded ", whenNs(r.recorded_ns), " in snapshot ", h("code", {}, short(r.snapshot)),
      r.task ? [" by task ", link("#/t/" + enc(r.task), r.task)] : null),
    h("h2", {}, "Provenance"), provenance(r),
    h("h2", {}, "Parameters"), kv(r.parameters),
    h("h2", {}, "Metrics"), kv(r.metrics),
    Object.keys(r.labels).length ? [h("h2", {}, "Labels"), kv(r.labels)] : null);
}

// The run's provenance drawn as a graph: inputs (and datasets, and the code)
// on the left, the run in the middle, its outputs on the right.
function provenance(r) {
  const file = (f) => (f.content ? `${f.path} ${short(f.content).slice(0, 8)}` : `${f.path} (missing)`);
  const left = [
    ...(r.code && r.code.commit ? [`code ${short(r.code.commit)}`] : []),
    ...r.datasets.map((d) => `dataset ${d.name}@${short(d.snapshot)}`),
    ...(r.input_files || []).map(file),
    ...(r.before ? [`workspace before ${short(r.before)}`] : []),
  ];
  const right = [...(r.output_files || []).map(file), `snapshot ${short(r.snapshot)}`];
  const BW = 230, BH = 26, GAP = 10, W = 3 * BW + 160;
  const rows = Math.max(left.length, right.length, 1);
  const H = rows * (BH + GAP) + 2 * GAP;
  const svg = h("svg", { id: "provenance", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "provenance graph" });
  svg.append(h("defs", {}, h("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    h("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#9aa6bf" }))));
  const node = (x, y, label, cls) => h("g", { class: "node " + (cls || "") },
    h("rect", { x, y, width: BW, height: BH, rx: 4 }), h("text", { x: x + 8, y: y + 17 }, label.length > 34 ? label.slice(0, 33) + "…" : label),
    h("title", {}, label));
  const col = (n, i) => GAP + i * (BH + GAP) + ((rows - n) * (BH + GAP)) / 2;
  const rx = BW + 80, ry = (H - BH) / 2;
  left.forEach((l, i) => {
    const y = col(left.length, i);
    svg.append(h("path", { class: "edge", d: `M ${BW} ${y + BH / 2} C ${BW + 40} ${y + BH / 2}, ${rx - 40} ${ry + BH / 2}, ${rx} ${ry + BH / 2}` }), node(0, y, l));
  });
  right.forEach((l, i) => {
    const y = col(right.length, i), x = 2 * BW + 160;
    svg.append(h("path", { class: "edge", d: `M ${rx + BW} ${ry + BH / 2} C ${rx + BW + 40} ${ry + BH / 2}, ${x - 40} ${y + BH / 2}, ${x} ${y + BH / 2}` }), node(x, y, l));
  });
  svg.append(node(rx, ry, "run " + (r.name || short(r.id)), "run"));
  return svg;
}

let tasksDomain = null;

// Through the relay: the task's own origin in wildcard-domain mode, else
// /tasks/<id>/ on the hub.
function openLink(t) {
  if (t.state !== "running" || !t.port) return null;
  const port = location.port ? ":" + location.port : "";
  const href = tasksDomain && location.hostname.endsWith(tasksDomain) && !t.keep_prefix
    ? `${location.protocol}//${t.id}.tasks.${tasksDomain}${port}/` : `/tasks/${enc(t.id)}/`;
  return link(href, "open", "open");
}

async function tasksView(query) {
  const ws = query.get("workspace");
  const tasks = await api("/api/v1/tasks?limit=200" + (ws ? "&workspace=" + enc(ws) : ""));
  show(h("h1", {}, "Tasks", ws ? ` of ${ws}` : ""),
    tasks.length === 0 ? h("p", { class: "muted" }, "No tasks yet: `ds run -w W -- CMD` submits one.") :
      table([
        { title: "Task", get: (t) => link("#/t/" + enc(t.id), t.id), sort: (t) => t.id },
        { title: "State", get: (t) => h("span", { class: "state-" + t.state }, t.state), sort: (t) => t.state },
        { title: "Workspace", get: (t) => link("#/w/" + enc(t.workspace), t.workspace), sort: (t) => t.workspace },
        { title: "Command", get: (t) => h("code", {}, t.command.join(" ")) },
        { title: "Runner", get: (t) => t.runner || "" },
        { title: "Submitted", get: (t) => when(t.submitted_ms), sort: (t) => t.submitted_ms },
        { title: "", get: (t) => openLink(t) },
      ], tasks, { id: "tasks" }));
}

async function modelsView(ws) {
  const models = await api(`/api/v1/workspaces/${enc(ws)}/models`);
  const rows = models.flatMap((m) => m.versions.map((v) => ({ model: m.name, ...v, latest: v.version === m.versions.length })));
  show(h("h1", {}, ws), tabs(ws, "Models"),
    h("div", { id: "models" }, rows.length === 0 ? h("p", { class: "muted" }, "No models: a run labelled model=NAME is a version of model NAME.") :
      table([
        { title: "Model", get: (v) => v.model, sort: (v) => v.model },
        { title: "Version", get: (v) => `${v.version}${v.latest ? " (latest)" : ""}`, sort: (v) => v.version },
        { title: "Run", get: (v) => link(`#/w/${enc(ws)}/run/${v.run}`, v.name || short(v.run)) },
        { title: "Recorded", get: (v) => whenNs(v.recorded_ns), sort: (v) => v.recorded_ns },
        { title: "Files", get: (v) => v.files.join(", ") },
        { title: "Metrics", get: (v) => Object.entries(v.metrics).map(([k, x]) => `${k}=${fmtValue(x)}`).join(" ") },
      ], rows, { sortCol: 0, asc: true })));
}

let follow = null;

async function taskView(id) {
  const t = await api("/api/v1/tasks/" + enc(id));
  const state = h("span", { class: "state-" + t.state, id: "state" }, t.state);
  const log = h("pre", { class: "log", id: "log" });
  show(h("h1", {}, "Task ", id), h("p", {}, state, " · ", link("#/w/" + enc(t.workspace), t.workspace), " · ",
    h("code", {}, t.command.join(" ")), t.runner ? ` · runner ${t.runner}` : "", " ", openLink(t)),
    t.error ? h("p", { class: "error" }, t.error) : null, log);
  follow = new EventSource(`/api/v1/tasks/${enc(id)}/logs?follow=true`);
  follow.addEventListener("line", (ev) => {
    const l = JSON.parse(ev.data);
    log.append(h("span", { class: l.stream }, l.text + "\n"));
    log.scrollTop = log.scrollHeight;
  });
  follow.addEventListener("end", (ev) => {
    const e = JSON.parse(ev.data);
    state.textContent = e.state; state.className = "state-" + e.state;
    follow.close();
  });
  follow.onerror = () => follow && follow.close();
}

async function runnersView() {
  const rs = await api("/api/v1/runners");
  show(h("h1", {}, "Runners"),
    rs.length === 0 ? h("p", { class: "muted" }, "No runners: start one with `ds runner` (or `ds up`).") :
      table([
        { title: "Runner", get: (r) => r.name, sort: (r) => r.name },
        { title: "Online", get: (r) => (r.online ? "yes" : "no"), sort: (r) => r.online },
        { title: "Executors", get: (r) => r.executors.join(", ") },
        { title: "Running", get: (r) => r.running.length, sort: (r) => r.running.length },
        { title: "Capacity", get: (r) => r.capacity },
        { title: "Last heard", get: (r) => when(r.heartbeat_ms), sort: (r) => r.heartbeat_ms },
        { title: "Hub", get: (r) => r.hub },
      ], rs, { id: "runners", sortCol: 0, asc: true }));
}

async function whoami() {
  try {
    const w = await api("/api/v1/whoami");
    tasksDomain = w.tasks_domain || null;
    document.getElementById("who").textContent = w.admin ? "admin" : (w.comment || w.workspaces.join(", "));
    document.getElementById("logout").hidden = false;
  } catch (e) {
    document.getElementById("who").textContent = "";
    document.getElementById("logout").hidden = true;
  }
}

async function route() {
  if (follow) { follow.close(); follow = null; }
  const [path, q] = (location.hash.slice(1) || "/").split("?");
  const query = new URLSearchParams(q || "");
  const p = path.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (p[0] === "login") return await loginView();
    if (p.length === 0) return await workspacesView();
    if (p[0] === "w" && p.length === 2) return await snapshotsView(p[1]);
    if (p[0] === "w" && p[2] === "runs") return await runsView(p[1]);
    if (p[0] === "w" && p[2] === "models") return await modelsView(p[1]);
    if (p[0] === "w" && p[2] === "run") return await runView(p[1], p[3]);
    if (p[0] === "w" && p[2] === "s") return await browseView(p[1], p[3], p.slice(4));
    if (p[0] === "w" && p[2] === "diff") return await diffView(p[1], p[3], p[4]);
    if (p[0] === "tasks") return await tasksView(query);
    if (p[0] === "t") return await taskView(p[1]);
    if (p[0] === "runners") return await runnersView();
    show(h("p", { class: "error" }, "No such page."));
  } catch (e) { errorView(e); }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", async () => {
    await api("/api/v1/logout", { method: "POST" }).catch(() => {});
    await whoami();
    location.hash = "#/login";
  });
  whoami();
  route();
});

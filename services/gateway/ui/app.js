// The skybus web UI: vanilla JavaScript over the gateway's REST API, nothing to build.
// The token is kept in localStorage and sent as "Authorization: Bearer"; the live stream
// (/api/events, an EventSource, which cannot send a header) takes it as ?token=.
// Every value from the API reaches the page through textContent, never as HTML.
"use strict";

const TOKEN_KEY = "skybus.token";
const JOB_STATES = ["pending", "staging", "accepted", "running", "succeeded", "failed", "cancelled", "lost"];
const FINAL = new Set(["succeeded", "failed", "cancelled", "lost"]);

const main = document.getElementById("main");
let stream = null;          // the EventSource, while signed in
let onJobEvent = () => {};  // what the current view does with a job change
let onHostEvent = () => {}; // ... and with a host's
let timers = [];            // the current view's intervals
let follows = [];           // the current view's log follows (AbortControllers)

// ---- helpers

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function badge(value, cls) {
  return h("span", { class: `state ${cls || value}`, text: value });
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function flash(message) {
  const box = document.getElementById("flash");
  box.textContent = message || "";
  box.hidden = !message;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, headers = {}) {
  const options = { method, headers: { Authorization: `Bearer ${localStorage.getItem(TOKEN_KEY)}`, ...headers } };
  if (body instanceof Blob) options.body = body;
  else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON: keep the text */ }
  if (response.status === 401) {
    signOut("That token was refused: sign in again.");
    throw new ApiError(401, "unauthorized");
  }
  if (!response.ok) {
    const message = (data && data.error) || (Array.isArray(data) && data[0] && data[0].message) || text;
    throw new ApiError(response.status, `${method} ${path}: ${response.status} ${message}`);
  }
  return data;
}

function guarded(action) {
  return async (event) => {
    if (event) event.preventDefault();
    try { flash(""); await action(event); } catch (error) { if (error.status !== 401) flash(error.message); }
  };
}

// ---- signing in

function signOut(message) {
  localStorage.removeItem(TOKEN_KEY);
  if (stream) { stream.close(); stream = null; }
  setLive(false);
  document.getElementById("who").textContent = "";
  document.getElementById("sign-out").hidden = true;
  showSignIn(message);
}

function showSignIn(message) {
  clearView();
  const input = h("input", { id: "token", name: "token", type: "password", placeholder: "API token", autocomplete: "off", required: true });
  const form = h("form", { id: "sign-in", onsubmit: guarded(async () => {
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    await start();
  }) }, input, h("button", { type: "submit", text: "Sign in" }));
  main.append(h("section", {},
    h("h2", { text: "Sign in" }),
    h("p", { class: "muted", text: "Paste a token: the one `skybus up` printed (SKYBUS_TOKEN=...) or one from `skybus token create`. It is kept in this browser only." }),
    form));
  if (message) flash(message);
  input.focus();
}

async function start() {
  const me = await api("GET", "/api/whoami");
  document.getElementById("who").textContent = `${me.user}${me.admin ? " (admin)" : ""}`;
  document.getElementById("sign-out").hidden = false;
  listen();
  route();
}

// ---- the live stream

function setLive(on) {
  const live = document.getElementById("live");
  live.className = `live ${on ? "on" : "off"}`;
  live.textContent = on ? "live" : "offline";
}

function listen() {
  if (stream) stream.close();
  const token = encodeURIComponent(localStorage.getItem(TOKEN_KEY));
  stream = new EventSource(`/api/events?topic=job,host&token=${token}`);
  stream.onopen = () => setLive(true);
  stream.onerror = () => setLive(false);  // the browser reconnects with Last-Event-ID by itself
  stream.addEventListener("job", (event) => onJobEvent(JSON.parse(event.data)));
  stream.addEventListener("host", (event) => onHostEvent(JSON.parse(event.data)));
  stream.addEventListener("reset", () => route());  // events were missed: read everything again
}

// ---- views

function clearView() {
  timers.forEach(clearInterval);
  timers = [];
  follows.forEach((follow) => follow.abort());
  follows = [];
  onJobEvent = () => {};
  onHostEvent = () => {};
  main.replaceChildren();
}

function route() {
  if (!localStorage.getItem(TOKEN_KEY)) return showSignIn();
  flash("");
  const match = location.hash.match(/^#\/job\/([0-9a-f-]+)$/);
  if (match) showJob(match[1]);
  else showHome();
}

function showHome() {
  clearView();
  const hosts = h("tbody");
  const jobs = h("tbody");
  const data = h("tbody");
  const filter = h("select", { id: "state-filter", onchange: guarded(() => loadJobs(jobs, filter.value)) },
    h("option", { value: "", text: "every state" }), JOB_STATES.map((s) => h("option", { value: s, text: s })));
  main.append(
    h("section", { id: "hosts-section" },
      h("h2", { text: "Hosts" }),
      h("table", { id: "hosts" }, h("thead", {}, h("tr", {}, ["hostname", "state", "responding", "roles", "id"].map((c) => h("th", { text: c })))), hosts)),
    runForm(),
    h("section", { id: "jobs-section" },
      h("h2", {}, "Jobs", filter),
      h("table", { id: "jobs" }, h("thead", {}, h("tr", {}, ["state", "command", "host", "user", "created", "exit"].map((c) => h("th", { text: c })))), jobs)),
    dataSection(data));
  guarded(() => Promise.all([loadHosts(hosts), loadJobs(jobs, ""), loadData(data)]))();
  timers.push(setInterval(guarded(() => loadHosts(hosts)), 30000));  // facts change without an event
  onHostEvent = guarded(() => loadHosts(hosts));
  let reload = null;
  onJobEvent = (change) => {
    const row = jobs.querySelector(`tr[data-job-id="${change.job_id}"]`);
    if (row && !filter.value && !change.deleted) {
      row.querySelector(".state").replaceWith(badge(change.state));
      row.querySelector(".exit").textContent = change.exit_code ?? "";
    } else if (!reload) {
      reload = setTimeout(guarded(async () => { reload = null; await loadJobs(jobs, filter.value); }), 250);
    }
  };
}

async function loadHosts(tbody) {
  const found = await api("GET", "/v1/hosts");
  tbody.replaceChildren(...found.map((host) => {
    const responding = host.info.responding;
    return h("tr", { "data-host-id": host.id },
      h("td", { text: host.info.hostname }),
      h("td", {}, badge(host.state)),
      h("td", {}, responding === undefined ? h("span", { class: "muted", text: "unauthorized" }) : badge(responding ? "yes" : "no")),
      h("td", { text: host.roles.join(", ") }),
      h("td", {}, h("code", { text: host.id })));
  }));
  if (!found.length) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No hosts yet." })));
}

async function loadJobs(tbody, state) {
  const query = new URLSearchParams({ detail: "1", limit: "50" });
  if (state) query.set("state", state);
  const page = await api("GET", `/api/list_jobs?${query}`);
  tbody.replaceChildren(...page.jobs.map((job) => h("tr", { "data-job-id": job.job_id },
    h("td", {}, badge(job.state)),
    h("td", { class: "command" }, h("a", { href: `#/job/${job.job_id}`, text: job.command })),
    h("td", { text: job.hostname || "" }),
    h("td", { text: job.user }),
    h("td", { text: when(job.created_at) }),
    h("td", { class: "exit", text: job.exit_code ?? "" }))));
  if (!page.jobs.length) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted", text: "No jobs." })));
}

function runForm() {
  const command = h("input", { name: "command", placeholder: "a shell command, e.g. uname -a", required: true });
  const hostname = h("input", { name: "hostname", placeholder: "hostname (any)" });
  const ttl = h("input", { name: "ttl", type: "number", min: 1, placeholder: "ttl (s)" });
  const files = h("input", { name: "input_files", placeholder: "input file ids, comma-separated" });
  const outputs = h("input", { name: "output_files", placeholder: "output files to keep, e.g. *.csv" });
  return h("section", {},
    h("h2", { text: "Run a job" }),
    h("form", { id: "run", onsubmit: guarded(async () => {
      const body = { command: command.value };
      if (hostname.value.trim()) body.hostname = hostname.value.trim();
      if (ttl.value) body.ttl = Number(ttl.value);
      const ids = files.value.split(",").map((s) => s.trim()).filter(Boolean);
      if (ids.length) body.input_files = ids;
      const globs = outputs.value.split(",").map((s) => s.trim()).filter(Boolean);
      if (globs.length) body.output_files = globs;
      const created = await api("POST", "/api/job/run", body);
      location.hash = `#/job/${created.job_id}`;
    }) }, command, hostname, ttl, files, outputs, h("button", { type: "submit", text: "Run" })));
}

function dataSection(tbody) {
  const upload = h("input", { id: "upload", type: "file", onchange: guarded(async () => {
    for (const file of upload.files) {
      await api("POST", `/api/data?name=${encodeURIComponent(file.name)}`, file, { "Content-Type": "application/octet-stream" });
    }
    upload.value = "";
    await loadData(tbody);
  }) });
  return h("section", { id: "data-section" },
    h("h2", {}, "Data files", h("label", {}, "upload ", upload)),
    h("table", { id: "data" }, h("thead", {}, h("tr", {}, ["name", "size", "owner", "created", "id"].map((c) => h("th", { text: c })))), tbody));
}

async function loadData(tbody) {
  const list = await api("GET", "/api/data?limit=50");
  tbody.replaceChildren(...list.items.map((item) => h("tr", {},
    h("td", { text: item.name || item.path || "" }),
    h("td", { text: item.size }),
    h("td", { text: item.owner }),
    h("td", { text: when(item.created_at) }),
    h("td", {}, h("code", { text: item.id })))));
  if (!list.items.length) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No data files." })));
}

const hostnames = new Map();

async function hostnameOf(hostId) {
  if (!hostnames.has(hostId)) {
    try {
      const host = await api("GET", `/v1/hosts/${hostId}`);
      hostnames.set(hostId, host.info.hostname);
    } catch (error) {
      if (error.status !== 404) throw error;
      hostnames.set(hostId, hostId);  // not one this caller may see by name
    }
  }
  return hostnames.get(hostId);
}

function showJob(jobId) {
  clearView();
  const view = h("div", { id: "job" });
  main.append(h("p", {}, h("a", { href: "#/", text: "← all jobs" })), view);
  let answerShown = null;
  const answer = h("section", { id: "answer" }, h("h2", { text: "Answer" }), h("p", { class: "muted", text: "Not yet: the job has not ended." }));
  const log = h("pre", { id: "log", "aria-live": "polite" });
  const logState = h("span", { id: "log-state", class: "muted", text: "following" });
  const logSection = h("section", { id: "log-section" },
    h("h2", {}, "Log ", h("span", { class: "legend stdout", text: "stdout" }), h("span", { class: "legend stderr", text: "stderr" }), logState), log);
  const outputs = h("section", { id: "outputs" }, h("h2", { text: "Output files" }));

  async function load() {
    const job = await api("GET", `/api/job/job_info/${jobId}`);
    const cancel = h("button", { id: "cancel", type: "button", class: "danger", disabled: FINAL.has(job.state), text: "Cancel",
      onclick: guarded(async () => { cancel.disabled = true; await api("POST", "/api/job/cancel", { job_id: jobId }); await load(); }) });
    const remove = h("button", { id: "delete", type: "button", text: "Delete",
      onclick: guarded(async () => { await api("DELETE", "/api/job/delete", { job_id: jobId }); location.hash = "#/"; }) });
    const fields = [
      ["state", h("span", { id: "job-state" }, badge(job.state))], ["command", h("code", { text: job.command })],
      ["user", job.user], ["host", job.resource_id ? await hostnameOf(job.resource_id) : "not placed yet"], ["created", when(job.created_at)],
      ["started", when(job.started_at)], ["finished", when(job.finished_at)], ["exit code", job.exit_code ?? ""],
      ["error", job.error || ""], ["ttl", job.ttl ? `${job.ttl} s` : ""],
    ];
    view.replaceChildren(
      h("section", {},
        h("h2", {}, "Job ", h("code", { text: jobId }), cancel, remove),
        h("dl", {}, fields.flatMap(([name, value]) => [h("dt", { text: name }), h("dd", {}, value)]))),
      h("section", {}, h("h2", { text: "History" }),
        h("ol", { id: "history" }, job.history.map((step) => h("li", {}, badge(step.state), " ", when(step.at))))),
      logSection, answer);
    showOutputs(outputs, job);
    if (job.output_files && job.output_files.length) view.append(outputs);
    if (job.answer_id && answerShown !== job.answer_id) {
      answerShown = job.answer_id;
      const result = await api("GET", `/api/data/${job.answer_id}`);
      const parsed = typeof result === "string" ? JSON.parse(result) : result;
      answer.replaceChildren(h("h2", {}, "Answer ", h("code", { class: "muted", text: job.answer_id })),
        h("dl", {}, h("dt", { text: "exit code" }), h("dd", { id: "answer-exit", text: parsed.exit_code })),
        h("h3", { text: "stdout" }), h("pre", { id: "stdout", text: parsed.stdout }),
        h("h3", { text: "stderr" }), h("pre", { id: "stderr", text: parsed.stderr }));
    }
  }

  let loads = Promise.resolve();  // one after another: an older read never overwrites a newer one
  const reload = () => { loads = loads.then(guarded(load)); };
  reload();
  Promise.all(["stdout", "stderr"].map((name) => followLog(jobId, name, log)))
    .then(() => { logState.textContent = log.childNodes.length ? "ended" : "ended: no output"; })
    .catch((error) => { if (error.name !== "AbortError") logState.textContent = `stopped: ${error.message}`; });
  onJobEvent = (change) => {
    if (change.job_id !== jobId) return;
    if (change.deleted) { flash("This job was deleted."); return; }
    reload();
  };
}

// A job's stdout or stderr, live: GET /api/job/logs/{id}?follow=1&stream=... sends the raw bytes as
// they come (chunked) until the job ends. Each chunk is decoded as UTF-8 (a character split between
// two chunks waits for its end) and appended to the log in a span of its stream's class, so the two
// interleave in about the order they came.
async function followLog(jobId, name, log) {
  const follow = new AbortController();
  follows.push(follow);
  const response = await fetch(`/api/job/logs/${jobId}?follow=1&stream=${name}`, {
    headers: { Authorization: `Bearer ${localStorage.getItem(TOKEN_KEY)}` }, signal: follow.signal,
  });
  if (!response.ok) {
    let message = await response.text();
    try { message = JSON.parse(message).error || message; } catch (_) { /* keep the text */ }
    throw new ApiError(response.status, message);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  const append = (text) => {
    if (!text) return;
    const last = log.lastChild;
    if (last && last.classList.contains(name)) last.textContent += text;
    else log.append(h("span", { class: name, text }));
  };
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    append(decoder.decode(value, { stream: true }));
  }
  append(decoder.decode());
}

function showOutputs(section, job) {
  const outputs = Object.entries(job.outputs || {});
  const errors = Object.entries(job.output_errors || {});
  const rows = outputs.map(([name, dataId]) => h("li", {}, h("a", { href: `/api/data/${dataId}`, download: name, "data-data-id": dataId,
    onclick: guarded(() => download(dataId, name)) }, name), " ", h("code", { class: "muted", text: dataId })));
  rows.push(...errors.map(([pattern, why]) => h("li", { class: "output-error" }, h("code", { text: pattern }), `: ${why}`)));
  const waiting = FINAL.has(job.state) ? "None." : `Kept when the job ends: ${(job.output_files || []).join(", ")}`;
  section.replaceChildren(h("h2", { text: "Output files" }), rows.length ? h("ul", { id: "output-list" }, rows) : h("p", { class: "muted", text: waiting }));
}

// A data file, fetched with the token (a plain link cannot send it) and handed to the browser to save.
async function download(dataId, name) {
  const response = await fetch(`/api/data/${dataId}`, { headers: { Authorization: `Bearer ${localStorage.getItem(TOKEN_KEY)}` } });
  if (!response.ok) throw new ApiError(response.status, `GET /api/data/${dataId}: ${response.status} ${await response.text()}`);
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// ---- start

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => { if (localStorage.getItem(TOKEN_KEY)) route(); });
if (localStorage.getItem(TOKEN_KEY)) guarded(start)();
else showSignIn();

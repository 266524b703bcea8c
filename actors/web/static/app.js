// entityd's page. Hand-written, no build step. Every text from the entity, its peers or
// its model is put on the page as text (textContent), never as HTML.
"use strict";

const csrf = document.querySelector('meta[name="csrf"]').content;
const state = {
  entity: "",
  seen: new Set(),        // event seqs on the page: none twice
  mine: new Set(JSON.parse(sessionStorage.getItem("tasks") || "[]")),  // goals sent here
  from: sessionStorage.getItem("from"),  // the stream position this page's view starts after
  source: null,
  early: new Map(),       // task -> events of a page goal not yet known as one of ours
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "title") node.title = value;
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: {"content-type": "application/json", "x-csrf-token": csrf},
    body: JSON.stringify(body),
  };
  const response = await fetch(path, {credentials: "same-origin", ...options});
  if (response.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${data.error || response.status}: ${data.message || ""}`);
  return data;
}

function table(node, headings, rows) {
  node.replaceChildren(el("tr", {}, ...headings.map((h) => el("th", {}, h))),
    ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
}

function when(ms) { return new Date(ms).toLocaleTimeString(); }
function money(micros) { return micros === null ? "?" : `$${(micros / 1e6).toFixed(4)}`; }
function short(value, limit = 300) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > limit ? text.slice(0, limit - 1) + "…" : text;
}
function problem(where, error) {
  where.replaceChildren(el("p", {class: "problem"}, String(error.message || error)));
}

// ---- tabs -------------------------------------------------------------------------------

const loaders = {};
for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => show(button.dataset.tab));
}
function show(tab) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.tab === tab);
  for (const s of document.querySelectorAll("main .tab")) s.classList.toggle("on", s.id === tab);
  location.hash = tab;
  if (loaders[tab]) loaders[tab]();
}

// ---- the activity stream ----------------------------------------------------------------

function connect() {
  const url = state.from === null ? "/api/events" : `/api/events?after=${state.from}`;
  const source = new EventSource(url);
  state.source = source;
  const live = document.getElementById("live");
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "badge on"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting"; live.className = "badge off"; });
  source.addEventListener("start", (message) => {
    if (state.from === null) {  // "OWN" or "OWN.FEED": where the page's view starts
      const start = JSON.parse(message.data);
      state.from = start.feed_after === null ? `${start.after}` : `${start.after}.${start.feed_after}`;
      sessionStorage.setItem("from", state.from);
    }
  });
  source.addEventListener("evt", (message) => onEvent(JSON.parse(message.data)));
}

function onEvent(event) {
  // The entity's own events and its peers' come from two streams, each numbered apart.
  const fromFeed = event.seq === null;
  const key = fromFeed ? `feed-${event.feed_seq}` : event.seq;
  if (state.seen.has(key)) return;
  state.seen.add(key);
  const own = event.entity === state.entity;
  const list = document.getElementById("events");
  const detail = Object.entries(event.data).filter(([k]) => k !== "task_id")
    .map(([k, v]) => `${k}=${short(v, 160)}`).join(" ");
  const place = fromFeed ? {"data-feed-seq": event.feed_seq} : {"data-seq": event.seq};
  list.append(el("li", {class: own ? "own" : "peer", ...place, "data-entity": event.entity},
    el("span", {class: "when"}, when(event.ts)), " ",
    el("span", {class: "who"}, `${event.entity}/${event.actor}`), " ",
    el("b", {}, event.type), " ", detail));
  while (list.children.length > 2000) list.firstChild.remove();
  if (document.getElementById("show-peers").checked || own) list.lastChild.scrollIntoView({block: "nearest"});
  if (own) onOwnEvent(event);
}

function onOwnEvent(event) {
  const task = event.data.task_id;
  if (task && state.mine.has(task)) chatEvent(task, event);
  else if (task && task.startsWith("web-")) early(task, event);
  if (event.actor === "memory" && event.type === "todo_changed") loaders.todo();
  if (event.actor === "peer" && event.type.startsWith("task")) loaders.tasks();
  if (event.actor === "ledger") refreshBalance();
}

// ---- chat -------------------------------------------------------------------------------

// A goal's first events can come before the answer to its POST names its task: kept
// (a few tasks' worth) until then, so the turn still shows its goal and every step.
function early(task, event) {
  if (!state.early.has(task)) {
    if (state.early.size >= 20) state.early.delete(state.early.keys().next().value);
    state.early.set(task, []);
  }
  state.early.get(task).push(event);
}

function turn(task) {
  let node = document.getElementById(`turn-${task}`);
  if (!node) {
    node = el("div", {class: "turn", id: `turn-${task}`}, el("ol", {class: "steps"}));
    document.getElementById("conversation").append(node);
  }
  return node;
}

function chatEvent(task, event) {
  const node = turn(task);
  if (event.type === "turn_started") {
    node.prepend(el("p", {class: "you"}, event.data.goal || "(goal)"));
  } else if (event.type === "step") {
    node.querySelector(".steps").append(el("li", {"data-seq": event.seq, class: `step-${event.data.kind || "other"}`},
      describeStep(event.data)));
  } else if (event.type === "answer") {
    const d = event.data;
    const answer = el("div", {class: d.ok ? "answer" : "answer failed"}, el("p", {}, d.text || ""));
    if ((d.commits || []).length) answer.append(el("p", {class: "commits"}, `commits: ${d.commits.join(", ")}`));
    for (const change of d.changes || []) answer.append(el("pre", {class: "stat"}, short(change, 2000)));
    answer.append(el("p", {class: "meta"}, `${d.steps} steps, ${d.tokens} tokens, ${d.seconds} s`));
    node.append(answer);
  }
  node.scrollIntoView({block: "end"});
}

function describeStep(d) {
  if (d.kind === "action") {
    const tools = (d.tools || []).length ? `→ ${d.tools.join(", ")}` : "";
    return [short(d.text || "", 300), tools].filter(Boolean).join(" ");
  }
  if (d.kind === "observation") return `${d.tool}: ${d.ok ? "" : "failed: "}${short(d.output || "", 300)}`;
  return short(d.text || JSON.stringify(d), 300);
}

document.getElementById("goal-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const text = document.getElementById("goal-text");
  const peer = document.getElementById("talk-to").value;
  const conversation = document.getElementById("conversation");
  try {
    if (peer) {
      const words = text.value;
      const said = el("div", {class: "turn talk"}, el("p", {class: "you"}, `to ${peer}: ${words}`));
      conversation.append(said);
      text.value = "";
      const outcome = await api("/api/talk", {peer, text: words});
      said.append(el("div", {class: outcome.ok ? "answer" : "answer failed"},
        el("p", {}, `${peer}: ${outcome.text || outcome.code}`)));
      said.scrollIntoView({block: "end"});
    } else {
      const accepted = await api("/api/goal", {text: text.value});
      state.mine.add(accepted.task_id);
      sessionStorage.setItem("tasks", JSON.stringify([...state.mine]));
      turn(accepted.task_id).dataset.queued = accepted.queued;
      for (const event of state.early.get(accepted.task_id) || []) chatEvent(accepted.task_id, event);
      state.early.delete(accepted.task_id);
      text.value = "";
    }
  } catch (error) {
    conversation.append(el("p", {class: "problem"}, String(error.message)));
  }
});

// ---- the other views --------------------------------------------------------------------

loaders.peers = async () => {
  const node = document.getElementById("peer-table");
  try {
    const {peers} = await api("/api/peers");
    const select = document.getElementById("talk-to");
    select.replaceChildren(el("option", {value: ""}, "the entity (a goal)"),
      ...peers.map((p) => el("option", {value: p.name}, `talk to ${p.name}`)));
    table(node, ["peer", "present", "latency", "trust", "reputation", "capabilities", ""],
      peers.map((p) => {
        const latency = el("span", {}, "");
        const check = el("button", {}, "check");
        check.addEventListener("click", async () => {
          latency.textContent = "…";
          try {
            const r = await api(`/api/peers/${encodeURIComponent(p.name)}/check`, {});
            latency.textContent = r.state === "alive" ? `${r.latency_ms.toFixed(1)} ms` : r.state;
          } catch (error) { latency.textContent = error.message; }
        });
        const rep = p.reputation && p.reputation.tasks ? `${p.reputation.score.toFixed(2)} (${p.reputation.tasks})` : "none";
        return [p.name, p.present ? "yes" : "no", latency, p.trust.join(", "), rep,
                p.capabilities.join(", "), check];
      }));
  } catch (error) { problem(node, error); }
};

document.getElementById("memory-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const list = document.getElementById("memory-hits");
  try {
    const {hits} = await api(`/api/memory?q=${encodeURIComponent(document.getElementById("memory-q").value)}`);
    list.replaceChildren(...hits.map((h) => el("li", {}, el("b", {}, h.kind), " ", h.text)));
    if (!hits.length) list.append(el("li", {}, "nothing found"));
  } catch (error) { problem(list, error); }
});

loaders.todo = async () => {
  const list = document.getElementById("todo-items");
  try {
    const {items} = await api("/api/todo?all=1");
    list.replaceChildren(...items.map((item) => {
      const done = el("button", {disabled: item.status === "done"}, "done");
      done.addEventListener("click", () => api(`/api/todo/${item.id}`, {status: "done"}).then(loaders.todo));
      return el("li", {class: `todo ${item.status}`, "data-id": item.id}, el("span", {}, item.text), " ",
        el("i", {}, item.status), " ", done);
    }));
  } catch (error) { problem(list, error); }
};
document.getElementById("todo-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const input = document.getElementById("todo-text");
  try { await api("/api/todo", {text: input.value}); input.value = ""; loaders.todo(); }
  catch (error) { problem(document.getElementById("todo-items"), error); }
});

loaders.tasks = async () => {
  const node = document.getElementById("task-table");
  try {
    const {tasks} = await api("/api/tasks");
    table(node, ["task", "direction", "peer", "title", "state", "money", "note"],
      tasks.map((t) => [t.task_id, t.direction === "out" ? "to peer" : "from peer", t.peer, t.title,
                        el("b", {class: `state ${t.state}`}, t.state),
                        t.price ? `${t.price} (${t.money})` : (t.money || ""), t.note]));
  } catch (error) { problem(node, error); }
};

async function refreshBalance() {
  try {
    const {balance} = await api("/api/ledger?limit=1");
    document.getElementById("balance").textContent = `${balance.available} available, ${balance.held} held`;
  } catch (error) { document.getElementById("balance").textContent = ""; }
}

loaders.ledger = async () => {
  const node = document.getElementById("ledger-table");
  try {
    const {balance, entries} = await api("/api/ledger");
    document.getElementById("ledger-balance").textContent =
      `${balance.account}: ${balance.available} available, ${balance.held} held, ${balance.entries} entries`;
    table(node, ["when", "account", "seq", "entry", "amount", "with", "text"],
      entries.map((e) => [when(e.ts), e.account, e.seq, e.typ, e.amount, e.counterparty, e.text]));
  } catch (error) { problem(node, error); }
};

loaders.cost = async () => {
  const hours = document.getElementById("cost-hours");
  const tasks = document.getElementById("cost-tasks");
  try {
    const report = await api("/api/usage?hours=48");
    table(hours, ["hour", "provider", "model", "calls", "tokens in", "tokens out", "cost"],
      report.hours.map((h) => [new Date(h.hour * 1000).toLocaleString(), h.provider, h.model, h.calls,
        h.prompt_tokens, h.completion_tokens, money(h.cost_micros) + (h.unknown_calls ? ` + ${h.unknown_calls} unpriced` : "")]));
    table(tasks, ["task", "payer", "calls", "tokens in", "tokens out", "cost"],
      report.tasks.map((t) => [t.task_id, t.payer || "operator", t.calls, t.prompt_tokens,
        t.completion_tokens, money(t.cost_micros)]));
  } catch (error) { problem(hours, error); }
};

loaders.code = async () => {
  const list = document.getElementById("commits");
  try {
    const {commits} = await api("/api/commits");
    list.replaceChildren(...commits.map((c) => {
      const item = el("li", {class: "commit", "data-sha": c.sha},
        el("code", {}, c.sha.slice(0, 10)), " ", c.subject, " ",
        el("span", {class: "meta"}, `+${c.insertions} -${c.deletions}, ${c.files_changed} files`));
      item.addEventListener("click", () => showDiff(c.sha));
      return item;
    }));
    if (!commits.length) list.append(el("li", {}, "no commits yet"));
  } catch (error) { problem(list, error); }
};
async function showDiff(sha) {
  const title = document.getElementById("diff-title");
  const diff = document.getElementById("diff");
  try {
    const d = await api(`/api/commits/${encodeURIComponent(sha)}`);
    title.textContent = `${sha.slice(0, 10)} ${d.subject}`;
    diff.textContent = d.diff + (d.truncated ? "\n… (cut short)" : "");
  } catch (error) { diff.textContent = String(error.message); }
}

loaders.services = async () => {
  const node = document.getElementById("service-table");
  const note = document.getElementById("services-note");
  try {
    const report = await api("/api/services");
    table(node, ["service", "state", "revision", "restarts", "preview", "last error"],
      report.services.map((s) => [s.name, s.state + (s.pending ? ` (starting ${s.pending})` : ""),
        s.revision || "", s.restarts,
        /^https?:\/\//.test(s.url || "") ? el("a", {href: s.url, rel: "noopener noreferrer", target: "_blank"}, s.url) : "",
        short(s.last_error || "", 300)]));
    note.textContent = !report.enabled ? "Services are off (services.enabled = false)."
      : report.problem ? `services.toml was not applied: ${report.problem}`
      : report.services.length ? "" : "No services: the entity declares them in services.toml in its workspace.";
  } catch (error) { problem(node, error); }
};

loaders.activity = () => {};
loaders.chat = () => {};

document.getElementById("show-peers").addEventListener("change", (change) => {
  document.getElementById("events").classList.toggle("own-only", !change.target.checked);
});

// ---- start ------------------------------------------------------------------------------

(async () => {
  try {
    const status = await api("/api/status");
    state.entity = status.entity;
    document.getElementById("entity").textContent = status.entity;
    document.title = `${status.entity} · entityd`;
  } catch (error) { /* the stream still shows what it can */ }
  connect();
  refreshBalance();
  loaders.peers();
  show((location.hash || "#chat").slice(1));
})();

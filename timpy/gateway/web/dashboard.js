// The dashboard: polls the admin API once a second and draws what it sees.
"use strict";
let token = sessionStorage.getItem("timpy-admin-token") || "";
const history = [];  // [{t, in, out}]
let last = null;

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); }

function showCluster(info) {
  document.getElementById("node-id").textContent = "node " + info.node;
  document.getElementById("ring").textContent = `ring version ${info.ring_version}, R=${info.replicas} W=${info.write_quorum}`;
  const body = document.querySelector("#members tbody");
  body.replaceChildren();
  for (const m of info.members) {
    const row = document.createElement("tr");
    row.dataset.state = m.state;
    cell(row, m.name + (m.name === info.node ? " (this)" : ""));
    cell(row, m.address || "-");
    cell(row, m.state);
    cell(row, m.incarnation);
    cell(row, (m.share * 100).toFixed(1) + "%");
    cell(row, m.name === info.node ? "-" : (m.path ? m.path.text : "no channel now"));
    body.appendChild(row);
  }
  const s = info.storage;
  document.getElementById("storage").textContent = s.mode === "embedded"
    ? "storage: embedded (each node its own database)"
    : "storage: shared backends " + s.backends.map(b => `${b.name} ${(b.share * 100).toFixed(0)}%${b.up ? "" : " (DOWN)"}`).join(", ")
      + (s.move ? ` — move in phase ${s.move.phase}` : "");
}

function showStats(stats) {
  const now = performance.now() / 1000;
  if (last) {
    const dt = Math.max(0.001, now - last.t);
    const point = {t: now, in: (stats.messages_in - last.in) / dt, out: (stats.deliveries - last.out) / dt};
    history.push(point);
    while (history.length > 120) history.shift();
    document.getElementById("f-in").textContent = point.in.toFixed(1);
    document.getElementById("f-out").textContent = point.out.toFixed(1);
  }
  last = {t: now, in: stats.messages_in, out: stats.deliveries};
  document.getElementById("f-conn").textContent = stats.connections;
  document.getElementById("f-term").textContent = stats.terminals;
  document.getElementById("f-stored").textContent = stats.stored;
  draw();
}

function draw() {
  const canvas = document.getElementById("chart"), g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1, ...history.map(p => Math.max(p.in, p.out)));
  for (const [key, colour] of [["in", "#2b6cb0"], ["out", "#dd6b20"]]) {
    g.strokeStyle = colour; g.lineWidth = 2; g.beginPath();
    history.forEach((p, i) => {
      const x = canvas.width * i / 119, y = canvas.height - 4 - (canvas.height - 8) * p[key] / top;
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
  g.fillStyle = "#555"; g.fillText(top.toFixed(1) + "/s", 4, 12);
}

async function refresh() {
  try {
    const [info, stats] = await Promise.all([api("GET", "/api/v1/node"), api("GET", "/api/v1/stats")]);
    showCluster(info);
    showStats(stats);
  } catch (e) {
    document.getElementById("op-result").textContent = "refresh failed: " + e.message;
  }
}

async function open() {
  try {
    await api("GET", "/api/v1/node");
  } catch (e) {
    document.getElementById("token-error").textContent = e.message;
    return;
  }
  sessionStorage.setItem("timpy-admin-token", token);
  document.getElementById("login-box").hidden = true;
  document.getElementById("main").hidden = false;
  const limits = await api("GET", "/api/v1/limits");
  const select = document.getElementById("limit-name");
  for (const name of Object.keys(limits)) select.add(new Option(`${name} (${limits[name]})`, name));
  refresh();
  setInterval(refresh, 1000);
}

async function run(what, fn) {
  const out = document.getElementById("op-result");
  try { out.textContent = what + ": " + JSON.stringify(await fn(), null, 1); }
  catch (e) { out.textContent = what + " failed: " + e.message; }
}

document.getElementById("token-form").addEventListener("submit", e => {
  e.preventDefault(); token = document.getElementById("token").value.trim(); open();
});
document.getElementById("user-form").addEventListener("submit", e => {
  e.preventDefault();
  const op = e.submitter.dataset.op, name = encodeURIComponent(document.getElementById("user-name").value.trim());
  run(op, () => op === "lookup" ? api("GET", `/api/v1/users/${name}`) : api("POST", `/api/v1/users/${name}/${op}`));
});
document.getElementById("password-form").addEventListener("submit", e => {
  e.preventDefault();
  const name = encodeURIComponent(document.getElementById("pw-user").value.trim());
  run("password", () => api("POST", `/api/v1/users/${name}/password`, {password: document.getElementById("pw-new").value}));
});
document.getElementById("message-form").addEventListener("submit", e => {
  e.preventDefault();
  run("message", () => api("POST", "/api/v1/messages",
    {to: document.getElementById("msg-to").value.trim(), body: document.getElementById("msg-body").value}));
});
document.getElementById("limits-form").addEventListener("submit", e => {
  e.preventDefault();
  const name = document.getElementById("limit-name").value;
  run("limits", () => api("PUT", "/api/v1/limits", {[name]: Number(document.getElementById("limit-value").value)}));
});
if (token) open();

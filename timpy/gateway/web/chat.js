// A small chat client speaking the JSON mapping of the client protocol over
// WebSocket (docs/protocol.md): register, log in, 1:1 chat with live delivery,
// history scroll-back, delivery acknowledgements.
"use strict";
const enc = new TextEncoder(), dec = new TextDecoder();
const b64 = bytes => btoa(String.fromCharCode(...bytes));
const unb64 = text => Uint8Array.from(atob(text || ""), c => c.charCodeAt(0));
let ws, rid = 0, me = null, peer = null, oldest = 0;
const waiting = new Map();          // rid -> {resolve, reject}
const conversations = new Map();    // peer name -> [messages]
const seen = new Set();             // conversation:seq shown already

function request(op, body) {
  const id = ++rid;
  ws.send(JSON.stringify({rid: id, [op]: body}));
  return new Promise((resolve, reject) => waiting.set(id, {resolve, reject}));
}

function peerOf(m) { return m.sender === me ? m.recipient : m.sender; }

function remember(m, prepend) {
  const key = m.conversation + ":" + m.seq;
  if (seen.has(key)) return false;
  seen.add(key);
  const name = peerOf(m);
  const list = conversations.get(name) || [];
  prepend ? list.unshift(m) : list.push(m);
  list.sort((a, b) => a.seq - b.seq);
  conversations.set(name, list);
  showContacts();
  if (name === peer) showMessages(!prepend);
  return true;
}

function showContacts() {
  const ul = document.getElementById("contacts");
  ul.replaceChildren();
  for (const name of conversations.keys()) {
    const li = document.createElement("li");
    li.textContent = name; li.className = name === peer ? "active" : "";
    li.onclick = () => openPeer(name);
    ul.appendChild(li);
  }
}

function showMessages(scrollDown) {
  const box = document.getElementById("messages");
  box.replaceChildren();
  for (const m of conversations.get(peer) || []) {
    const div = document.createElement("div");
    div.className = "msg" + (m.sender === me ? " mine" : "");
    div.dataset.seq = m.seq;
    const who = document.createElement("div"); who.className = "who"; who.textContent = `${m.sender} #${m.seq}`;
    const text = document.createElement("span"); text.className = "text"; text.textContent = dec.decode(unb64(m.body));
    div.append(who, text);
    box.appendChild(div);
  }
  if (scrollDown) box.scrollTop = box.scrollHeight;
}

async function loadPage(before) {
  const page = await request("history", {peer, before_seq: before, limit: 20});
  const messages = page.messages || [];
  for (const m of messages) remember(m, true);
  oldest = messages.length ? messages[0].seq : oldest;
  document.getElementById("older").hidden = !page.more;
  showMessages(before === 0);
}

async function openPeer(name) {
  peer = name; oldest = 0;
  if (!conversations.has(name)) conversations.set(name, []);
  document.getElementById("peer-title").textContent = "with " + name;
  document.getElementById("text").disabled = document.getElementById("send").disabled = false;
  showContacts();
  try { await loadPage(0); } catch (e) { document.getElementById("chat-error").textContent = e.message; }
}

function onFrame(frame) {
  const [op] = Object.keys(frame).filter(k => k !== "rid");
  const body = frame[op] || {};
  if (op === "delivery") {
    remember(body.message, false);
    ws.send(JSON.stringify({rid: 0, delivery_ack: {pos: body.pos}}));
    return;
  }
  const w = waiting.get(frame.rid);
  if (w) {
    waiting.delete(frame.rid);
    op === "error" ? w.reject(new Error(`${body.text} (${body.code})`)) : w.resolve(body);
  } else if (op === "error") {
    document.getElementById("status").textContent = "closed: " + body.text;
  }
}

async function connect() {
  const config = await (await fetch("/chat/config.json")).json();
  ws = new WebSocket(config.ws);
  ws.onmessage = e => onFrame(JSON.parse(e.data));
  ws.onclose = () => { document.getElementById("status").textContent = "disconnected"; };
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error("cannot reach " + config.ws)); });
  const welcome = await request("hello", {version: 1, agent: "timpy-web-chat"});
  document.getElementById("status").textContent = "connected to node " + welcome.node_id;
}

async function login(name, password, register) {
  if (register) await request("register_", {name, password});
  const ok = await request("login", {name, password, device: "web-" + (localStorage.getItem("timpy-device") || newDevice())});
  me = ok.user;
  document.getElementById("me").textContent = "as " + me;
  document.getElementById("auth").hidden = true;
  document.getElementById("chat").hidden = false;
}

function newDevice() {
  const id = Math.random().toString(36).slice(2, 10);
  localStorage.setItem("timpy-device", id);
  return id;
}

document.getElementById("auth-form").addEventListener("submit", async e => {
  e.preventDefault();
  const error = document.getElementById("auth-error");
  error.textContent = "";
  try {
    await login(document.getElementById("name").value.trim(), document.getElementById("password").value,
                e.submitter.dataset.op === "register");
  } catch (err) { error.textContent = err.message; }
});
document.getElementById("new-chat").addEventListener("submit", e => {
  e.preventDefault(); openPeer(document.getElementById("new-peer").value.trim().toLowerCase());
});
document.getElementById("older").addEventListener("click", () => loadPage(oldest));
document.getElementById("send-form").addEventListener("submit", async e => {
  e.preventDefault();
  const input = document.getElementById("text"), text = input.value;
  if (!text || !peer) return;
  input.value = "";
  const clientId = "web-" + Date.now() + "-" + Math.random().toString(36).slice(2, 8);
  try {
    const ack = await request("send", {message: {recipient: peer, client_id: clientId, body: b64(enc.encode(text))}});
    remember({sender: me, recipient: peer, conversation: ack.conversation, seq: ack.seq, body: b64(enc.encode(text)),
              server_time: ack.server_time}, false);
    document.getElementById("chat-error").textContent = "";
  } catch (err) { document.getElementById("chat-error").textContent = err.message; }
});
document.getElementById("logout").addEventListener("click", async () => {
  try { await request("logout", {}); } finally { location.reload(); }
});
connect().catch(e => { document.getElementById("status").textContent = e.message; });

// A small chat client speaking the JSON mapping of the client protocol over
// WebSocket (docs/protocol.md): register, log in, 1:1 and group chat with live
// delivery, history scroll-back, delivery acknowledgements, friends with
// presence, read receipts, typing, recalled and edited messages, and the
// node's conversation list (order, unread and mention counts, kept current by
// conversation_entry pushes).
// A conversation is keyed by the peer's name, or by "#" + group id.
"use strict";
const enc = new TextEncoder(), dec = new TextDecoder();
const b64 = bytes => btoa(String.fromCharCode(...bytes));
const unb64 = text => Uint8Array.from(atob(text || ""), c => c.charCodeAt(0));
let ws, rid = 0, me = null, peer = null, oldest = 0;
const waiting = new Map();          // rid -> {resolve, reject}
const conversations = new Map();    // peer name -> [messages]
const seen = new Set();             // conversation:seq shown already
const groups = new Map();           // group id -> GroupInfo
let roster = {friends: [], incoming: [], outgoing: [], blocked: []};
const presence = new Map();         // user -> Presence
const readUpTo = new Map();         // conversation id -> seq the other side has read
const RECALL = 1, EDIT = 2, BURNED = 4, DELETED = 5;
let typingTimer = null, lastTyping = 0;
const entries = new Map();          // contact key -> ConversationEntry (the node's conversation list)

function request(op, body) {
  const id = ++rid;
  ws.send(JSON.stringify({rid: id, [op]: body}));
  return new Promise((resolve, reject) => waiting.set(id, {resolve, reject}));
}

function peerOf(m) {
  if ((m.recipient || "").startsWith("#")) return m.recipient;   // a group: "#" + its id
  return m.sender === me ? m.recipient : m.sender;
}
const isGroup = key => key.startsWith("#");
function label(key) {
  if (!isGroup(key)) return key;
  const g = groups.get(key.slice(1));
  return "# " + (g ? g.name : key.slice(1, 9));
}

async function learnGroup(id) {
  if (groups.has(id)) return;
  try { groups.set(id, await request("group_request", {group: id, op: "get"})); showContacts(); } catch (e) { /* left or dissolved */ }
}

function applyActing(m) {
  // A recall, burn or edit changes an earlier message of the conversation.
  const list = conversations.get(peerOf(m)) || [];
  const target = Number((m.ext || {}).target);
  const i = list.findIndex(x => x.seq === target);
  if (i < 0) return;
  if (m.kind === EDIT) list[i] = {...list[i], body: m.body, ext: {...(list[i].ext || {}), edited: "1"}};
  else list.splice(i, 1);
  if (peerOf(m) === peer) showMessages(false);
}

function remember(m, prepend) {
  const key = m.conversation + ":" + m.seq;
  if (seen.has(key)) return false;
  seen.add(key);
  if (m.kind === DELETED) return false;
  if (m.kind === RECALL || m.kind === EDIT || m.kind === BURNED) { applyActing(m); return false; }
  const name = peerOf(m);
  if (isGroup(name)) learnGroup(name.slice(1));
  const list = conversations.get(name) || [];
  prepend ? list.unshift(m) : list.push(m);
  list.sort((a, b) => a.seq - b.seq);
  conversations.set(name, list);
  showContacts();
  if (name === peer) showMessages(!prepend);
  return true;
}

function entryKey(e) { return e.group ? "#" + e.conversation : (e.peer || ""); }

function learnEntry(e) {
  const key = entryKey(e);
  if (!key) return;
  entries.set(key, e);
  if (e.group) learnGroup(e.conversation);
  showContacts();
}

function showContacts() {
  // The node's list first (pinned, then newest activity), then chats opened here only.
  const ul = document.getElementById("contacts");
  ul.replaceChildren();
  const listed = [...entries.values()].filter(e => !e.archived)
    .sort((a, b) => (b.pinned ? 1 : 0) - (a.pinned ? 1 : 0) || (b.last_time || 0) - (a.last_time || 0))
    .map(entryKey);
  for (const name of new Set([...listed, ...conversations.keys()])) {
    const e = entries.get(name) || {};
    const li = document.createElement("li");
    li.textContent = label(name); li.className = name === peer ? "active" : "";
    if (e.unread && name !== peer) {
      const n = document.createElement("span");
      n.className = "muted unread"; n.textContent = ` (${e.unread}${e.mentions ? ", @" + e.mentions : ""})`;
      li.append(n);
    }
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
    if ((m.ext || {}).edited) { const e = document.createElement("span"); e.className = "muted"; e.textContent = " (edited)"; div.append(e); }
    if (m.sender === me && !isGroup(peer) && (readUpTo.get(m.conversation) || 0) >= m.seq) {
      const r = document.createElement("span"); r.className = "read muted"; r.textContent = " ✓ read"; div.append(r);
    }
    box.appendChild(div);
  }
  if (scrollDown) box.scrollTop = box.scrollHeight;
  markRead();
}

function markRead() {
  // Tell the other side how far this user has read the open conversation.
  const list = conversations.get(peer) || [];
  const last = list.filter(m => m.sender !== me).pop();
  if (!last || document.hidden) return;
  const key = "read:" + last.conversation;
  if ((readUpTo.get(key) || 0) >= last.seq) return;
  readUpTo.set(key, last.seq);
  request("receipt", {conversation: last.conversation, seq: last.seq, read: true}).catch(() => {});
}

function dot(name) {
  const p = presence.get(name);
  const span = document.createElement("span");
  span.className = "dot " + (p && p.online ? p.status : "offline");
  span.title = p && p.online ? p.status + (p.text ? ": " + p.text : "") : "offline";
  return span;
}

function showRoster() {
  const friends = document.getElementById("friends");
  friends.replaceChildren();
  for (const name of roster.friends || []) {
    const li = document.createElement("li");
    li.dataset.user = name;
    const p = presence.get(name);
    li.append(dot(name), " " + name + (p && p.online && p.text ? " — " + p.text : ""));
    li.onclick = () => openPeer(name);
    friends.appendChild(li);
  }
  const requests = document.getElementById("requests");
  requests.replaceChildren();
  for (const name of roster.incoming || []) {
    const li = document.createElement("li");
    li.textContent = name + " asks to be your friend ";
    const yes = document.createElement("button"); yes.textContent = "Accept"; yes.dataset.user = name;
    yes.onclick = async () => { roster = await request("roster_request", {op: "accept", user: name}); await loadPresence(); };
    li.appendChild(yes);
    requests.appendChild(li);
  }
}

async function loadPresence() {
  const users = roster.friends || [];
  if (users.length) {
    const found = await request("presence_query", {users});
    for (const p of found.users || []) presence.set(p.user, p);
  }
  showRoster();
}

async function loadPage(before) {
  const where = isGroup(peer) ? {conversation: peer.slice(1)} : {peer};
  const page = await request("history", {...where, before_seq: before, limit: 20});
  const messages = page.messages || [];
  for (const m of messages) remember(m, true);
  oldest = messages.length ? messages[0].seq : oldest;
  document.getElementById("older").hidden = !page.more;
  showMessages(before === 0);
}

async function openPeer(name) {
  peer = name; oldest = 0;
  if (!conversations.has(name)) conversations.set(name, []);
  document.getElementById("peer-title").textContent = isGroup(name) ? label(name) : "with " + name;
  const line = document.getElementById("group-line");
  line.hidden = !isGroup(name);
  if (isGroup(name)) {
    const g = groups.get(name.slice(1));
    line.textContent = g ? `group ${g.group}: ${g.members.join(", ")} (owner ${g.owner})` : "";
  }
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
  if (!frame.rid && op === "conversation_entry") { learnEntry(body); return; }
  if (!frame.rid && op === "roster") { roster = body; loadPresence().catch(() => {}); return; }
  if (!frame.rid && op === "presence_list") {
    for (const p of body.users || []) presence.set(p.user, p);
    showRoster(); return;
  }
  if (!frame.rid && op === "receipt") {
    if (body.read && body.user !== me) {
      readUpTo.set(body.conversation, Math.max(readUpTo.get(body.conversation) || 0, body.seq));
      showMessages(false);
    }
    return;
  }
  if (!frame.rid && op === "signal") {
    if (body.kind === "typing" && (body.sender === peer || ("#" + (body.conversation || "")) === peer)) {
      const t = document.getElementById("typing");
      t.textContent = body.sender + " is typing…";
      clearTimeout(typingTimer);
      typingTimer = setTimeout(() => { t.textContent = ""; }, 3000);
    }
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
  roster = await request("roster_request", {op: "list"});
  await loadPresence();
  try {
    const page = await request("conversation_list", {limit: 200});
    for (const e of page.entries || []) learnEntry(e);
  } catch (e) { /* the list orders the contacts; chatting works without it */ }
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
document.getElementById("new-group").addEventListener("submit", async e => {
  e.preventDefault();
  const members = document.getElementById("group-members").value.split(",").map(x => x.trim().toLowerCase()).filter(Boolean);
  try {
    const g = await request("group_request", {op: "create", name: document.getElementById("group-name").value, users: members, policy: "open"});
    groups.set(g.group, g);
    openPeer("#" + g.group);
  } catch (err) { document.getElementById("chat-error").textContent = err.message; }
});
document.getElementById("join-group").addEventListener("submit", async e => {
  e.preventDefault();
  const id = document.getElementById("group-id").value.trim();
  try {
    const g = await request("group_request", {group: id, op: "join"});
    if (g.members.includes(me)) { groups.set(id, g); openPeer("#" + id); }
    else document.getElementById("chat-error").textContent = "asked to join; an admin must approve";
  } catch (err) { document.getElementById("chat-error").textContent = err.message; }
});
document.getElementById("older").addEventListener("click", () => loadPage(oldest));
document.getElementById("add-friend").addEventListener("submit", async e => {
  e.preventDefault();
  try {
    roster = await request("roster_request", {op: "request", user: document.getElementById("friend-name").value.trim().toLowerCase()});
    await loadPresence();
    document.getElementById("chat-error").textContent = "";
  } catch (err) { document.getElementById("chat-error").textContent = err.message; }
});
document.getElementById("status-form").addEventListener("submit", async e => {
  e.preventDefault();
  try {
    await request("presence_set", {status: document.getElementById("my-status").value, text: document.getElementById("my-text").value});
  } catch (err) { document.getElementById("chat-error").textContent = err.message; }
});
document.getElementById("text").addEventListener("input", () => {
  if (!peer || Date.now() - lastTyping < 2000) return;
  lastTyping = Date.now();
  const to = isGroup(peer) ? {conversation: peer.slice(1)} : {to: peer};
  ws.send(JSON.stringify({rid: 0, signal: {...to, kind: "typing"}}));
});
document.addEventListener("visibilitychange", markRead);
document.getElementById("send-form").addEventListener("submit", async e => {
  e.preventDefault();
  const input = document.getElementById("text"), text = input.value;
  if (!text || !peer) return;
  input.value = "";
  const clientId = "web-" + Date.now() + "-" + Math.random().toString(36).slice(2, 8);
  try {
    const message = isGroup(peer)
      ? {conversation: peer.slice(1), client_id: clientId, body: b64(enc.encode(text))}
      : {recipient: peer, client_id: clientId, body: b64(enc.encode(text))};
    const ack = await request("send", {message});
    remember({sender: me, recipient: peer, conversation: ack.conversation, seq: ack.seq, body: b64(enc.encode(text)),
              server_time: ack.server_time}, false);
    document.getElementById("chat-error").textContent = "";
  } catch (err) { document.getElementById("chat-error").textContent = err.message; }
});
document.getElementById("logout").addEventListener("click", async () => {
  try { await request("logout", {}); } finally { location.reload(); }
});
connect().catch(e => { document.getElementById("status").textContent = e.message; });

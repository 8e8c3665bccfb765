// A small chat client speaking the JSON mapping of the client protocol over
// WebSocket (docs/protocol.md): register, log in, 1:1 and group chat with live
// delivery, history scroll-back, delivery acknowledgements, friends with
// presence, read receipts, typing, recalled and edited messages, reactions,
// files and images (uploaded in chunks, shown through signed download URLs),
// the node's conversation list (order, unread and mention counts, kept
// current by conversation_entry pushes), search (results listed; a click opens
// the conversation or thread and highlights the message), and threads (a
// message's thread opened under the conversation, read and replied to).
// A conversation is keyed by the peer's name, or by "#" + group id.
"use strict";
const enc = new TextEncoder(), dec = new TextDecoder();
function b64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return btoa(text);
}
const unb64 = text => Uint8Array.from(atob(text || ""), c => c.charCodeAt(0));
let ws, rid = 0, me = null, peer = null, oldest = 0;
const waiting = new Map();          // rid -> {resolve, reject}
const conversations = new Map();    // peer name -> [messages]
const seen = new Set();             // conversation:seq shown already
const groups = new Map();           // group id -> GroupInfo
let roster = {friends: [], incoming: [], outgoing: [], blocked: []};
const presence = new Map();         // user -> Presence
const readUpTo = new Map();         // conversation id -> seq the other side has read
const fileUrls = new Map();         // attachment id -> signed download URL

// A file message's body is msgpack [1, id, name, size, mime, sha256, thumbnail]
// (docs/protocol.md, "Files"): just enough msgpack for that array.
function packRef(ref) {
  const out = [0x97];
  const str = s => { const b = enc.encode(s); b.length < 32 ? out.push(0xa0 | b.length) : out.push(0xd9, b.length); out.push(...b); };
  const uint = n => {
    if (n < 128) out.push(n);
    else { out.push(0xcf); for (let i = 7; i >= 0; i--) out.push(Math.floor(n / 2 ** (8 * i)) % 256); }
  };
  uint(1); str(ref.id); str(ref.name); uint(ref.size); str(ref.mime); str(ref.sha256);
  out.push(0xc4, 0);  // no thumbnail
  return new Uint8Array(out);
}
function unpackRef(bytes) {
  let i = 0;
  const n = k => { let v = 0; for (let j = 0; j < k; j++) v = v * 256 + bytes[i++]; return v; };
  function item() {
    const t = bytes[i++];
    if (t < 0x80) return t;
    if ((t & 0xf0) === 0x90) { const a = []; for (let k = t & 0x0f; k > 0; k--) a.push(item()); return a; }
    if ((t & 0xe0) === 0xa0) { const len = t & 0x1f; const s = dec.decode(bytes.subarray(i, i + len)); i += len; return s; }
    const size = {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8}[t];
    if (size) return n(size);
    const strLen = {0xd9: 1, 0xda: 2, 0xdb: 4}[t];
    if (strLen) { const len = n(strLen); const s = dec.decode(bytes.subarray(i, i + len)); i += len; return s; }
    const binLen = {0xc4: 1, 0xc5: 2, 0xc6: 4}[t];
    if (binLen) { const len = n(binLen); const b = bytes.subarray(i, i + len); i += len; return b; }
    throw new Error("not a file reference");
  }
  const [, id, name, size, mime, sha256] = item();
  return {id, name, size, mime, sha256};
}

async function uploadFile(file, progress) {
  const data = new Uint8Array(await file.arrayBuffer());
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  const sha256 = Array.from(digest, b => b.toString(16).padStart(2, "0")).join("");
  const mime = file.type || "application/octet-stream";
  const state = await request("upload_start", {name: file.name, size: data.length, mime, sha256});
  let done = 0;
  for (let i = 0; i < state.chunks; i++) {
    const chunk = data.subarray(i * state.chunk_size, (i + 1) * state.chunk_size);
    await request("upload_chunk", {upload_id: state.upload_id, index: i, data: b64(chunk)});
    done += chunk.length;
    progress(done, data.length);
  }
  return request("upload_finish", {upload_id: state.upload_id});
}

function showFile(div, m) {
  // An image shows itself; any other file is a link; both through a signed URL.
  let ref;
  try { ref = unpackRef(unb64(m.body)); } catch (e) { div.append("(a file message that cannot be read)"); return; }
  const holder = document.createElement("span"); holder.className = "file";
  holder.textContent = `${ref.name} (${ref.size} bytes)`;
  div.append(holder);
  const show = url => {
    if (ref.mime.startsWith("image/")) {
      const img = document.createElement("img"); img.src = url; img.alt = ref.name; img.className = "image";
      img.style.maxWidth = "240px"; img.style.display = "block";
      holder.replaceChildren(img);
    } else {
      const a = document.createElement("a"); a.href = url; a.textContent = `${ref.name} (${ref.size} bytes)`;
      a.download = ref.name; holder.replaceChildren(a);
    }
  };
  if (fileUrls.has(ref.id)) { show(fileUrls.get(ref.id)); return; }
  request("attachment_request", {id: ref.id, op: "url"})
    .then(a => { fileUrls.set(ref.id, a.url); show(a.url); })
    .catch(e => { holder.textContent = `${ref.name}: ${e.message}`; });
}
const RECALL = 1, EDIT = 2, BURNED = 4, DELETED = 5, REACT = 6, FILE = 7;
const PICK = ["👍", "❤️", "😂", "🎉", "😮"];  // the reactions offered under each message
let typingTimer = null, lastTyping = 0;
const entries = new Map();          // contact key -> ConversationEntry (the node's conversation list)
const threadMessages = new Map();   // thread id -> its messages, by seq
const threadInfo = new Map();       // contact key + ":" + root seq -> {thread, count}
let openThread = null;              // {key, root, thread} of the thread shown
let highlight = null;               // {conversation, seq} of the message a search result jumped to

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

function reactionsOf(m) {
  // ext.reactions: reaction -> user -> [seq, on], as the node keeps it (last writer by seq wins).
  try { return JSON.parse((m.ext || {}).reactions || "{}"); } catch (e) { return {}; }
}

function applyReaction(r) {
  // A live reaction (a REACT message) changes its target's reactions, as the node does.
  const list = conversations.get(peerOf(r)) || [];
  const ext = r.ext || {}, i = list.findIndex(x => x.seq === Number(ext.target));
  if (i < 0) return;
  const state = reactionsOf(list[i]), users = state[ext.key] || {}, old = users[r.sender];
  if (old && old[0] >= r.seq) return;
  users[r.sender] = [r.seq, ext.on === "0" ? 0 : 1];
  state[ext.key] = users;
  list[i] = {...list[i], ext: {...(list[i].ext || {}), reactions: JSON.stringify(state)}};
  if (peerOf(r) === peer) showMessages(false);
}

async function react(m, key, on) {
  const ext = {target: String(m.seq), key, on: on ? "1" : "0"};
  const to = isGroup(peer) ? {conversation: peer.slice(1)} : {recipient: peer};
  const clientId = "web-" + Date.now() + "-" + Math.random().toString(36).slice(2, 8);
  try {
    const ack = await request("send", {message: {...to, client_id: clientId, kind: REACT, body: "", ext}});
    seen.add(ack.conversation + ":" + ack.seq);
    applyReaction({conversation: ack.conversation, seq: ack.seq, sender: me, recipient: peer, kind: REACT, ext});
    document.getElementById("chat-error").textContent = "";
  } catch (err) { document.getElementById("chat-error").textContent = err.message; }
}

function reactionRow(m) {
  // Under a message: each reaction with its count (mine highlighted; a click takes it back or adds it),
  // then the ones offered that nobody has used yet.
  const row = document.createElement("div");
  row.className = "reactions"; row.dataset.seq = m.seq;
  row.style.textAlign = m.sender === me ? "right" : "";
  const shown = Object.entries(reactionsOf(m))
    .map(([key, users]) => [key, Object.keys(users).filter(u => users[u][1]).sort()])
    .filter(([, users]) => users.length);
  for (const [key, users] of shown) {
    const b = document.createElement("button");
    const mine = users.includes(me);
    b.className = "reaction" + (mine ? " mine" : ""); b.dataset.key = key; b.title = users.join(", ");
    b.textContent = `${key} ${users.length}`;
    b.style.fontWeight = mine ? "bold" : "";
    b.onclick = () => react(m, key, !mine);
    row.append(b, " ");
  }
  for (const key of PICK.filter(k => !shown.some(([s]) => s === k))) {
    const b = document.createElement("button");
    b.className = "add-reaction muted"; b.dataset.key = key; b.title = "react with " + key; b.textContent = key;
    b.style.padding = "0 0.2rem"; b.style.opacity = "0.5";
    b.onclick = () => react(m, key, true);
    row.append(b);
  }
  return row;
}

function remember(m, prepend) {
  const key = m.conversation + ":" + m.seq;
  if (seen.has(key)) return false;
  seen.add(key);
  if (m.kind === DELETED) return false;
  if ((m.ext || {}).thread_of) { rememberThread(m); return true; }
  if (m.kind === RECALL || m.kind === EDIT || m.kind === BURNED) { applyActing(m); return false; }
  if (m.kind === REACT) { applyReaction(m); return false; }
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

function rememberThread(m) {
  // A message of a thread: kept with its thread, counted on its root, shown if the thread is open.
  const ext = m.ext || {}, key = peerOf(m), root = Number(ext.thread);
  const list = threadMessages.get(m.conversation) || [];
  if (m.kind === RECALL || m.kind === EDIT) {
    const i = list.findIndex(x => x.seq === Number(ext.target));
    if (i >= 0) m.kind === EDIT ? list[i] = {...list[i], body: m.body, ext: {...(list[i].ext || {}), edited: "1"}} : list.splice(i, 1);
  } else if (m.kind !== REACT && m.kind !== BURNED) {
    list.push(m);
    list.sort((a, b) => a.seq - b.seq);
  }
  threadMessages.set(m.conversation, list);
  const info = threadInfo.get(key + ":" + root) || {thread: m.conversation, count: 0};
  threadInfo.set(key + ":" + root, {thread: m.conversation, count: Math.max(info.count, m.seq)});
  if (openThread && openThread.thread === m.conversation) showThread();
  if (key === peer) showMessages(false);
}

const whereOf = key => isGroup(key) ? {conversation: key.slice(1)} : {peer: key};

function messageDiv(m) {
  const div = document.createElement("div");
  div.className = "msg" + (m.sender === me ? " mine" : "");
  if (highlight && highlight.conversation === m.conversation && highlight.seq === m.seq) div.classList.add("highlight");
  div.dataset.seq = m.seq;
  const who = document.createElement("div"); who.className = "who"; who.textContent = `${m.sender} #${m.seq}`;
  div.append(who);
  if (m.kind === FILE) showFile(div, m);
  else { const text = document.createElement("span"); text.className = "text"; text.textContent = dec.decode(unb64(m.body)); div.append(text); }
  if ((m.ext || {}).edited) { const e = document.createElement("span"); e.className = "muted"; e.textContent = " (edited)"; div.append(e); }
  return div;
}

async function openThreadOf(root) {
  // The thread under message ``root`` of the open conversation: its id and count, then its messages.
  const key = peer;
  let info = threadInfo.get(key + ":" + root);
  if (!info) {
    const found = await request("thread_request", {...whereOf(key), roots: [root]});
    const t = (found.threads || [])[0] || {};
    info = {thread: t.thread, count: t.count || 0};
    threadInfo.set(key + ":" + root, info);
  }
  openThread = {key, root, thread: info.thread};
  document.getElementById("thread").hidden = false;
  document.getElementById("thread-root").textContent = "under #" + root;
  if (info.count) {
    const page = await request("history", {conversation: info.thread, after_seq: 0, limit: 200});
    for (const m of page.messages || []) remember(m, false);
  }
  showThread();
  document.getElementById("thread-text").focus();
}

function showThread() {
  const box = document.getElementById("thread-messages");
  box.replaceChildren();
  if (!openThread) return;
  for (const m of threadMessages.get(openThread.thread) || []) box.append(messageDiv(m));
  const lit = box.querySelector(".highlight");
  lit ? lit.scrollIntoView({block: "center"}) : box.scrollTop = box.scrollHeight;
}

function closeThread() {
  openThread = null;
  document.getElementById("thread").hidden = true;
}

async function search(query) {
  // Results newest first; each names its conversation (a thread's: its parent) and shows the message.
  const ul = document.getElementById("search-results"), count = document.getElementById("search-count");
  ul.replaceChildren();
  const found = await request("search", {query, limit: 50});
  count.textContent = `${found.count} found` + (found.more ? " (the newest 50 shown)" : "");
  for (const hit of found.hits || []) {
    const li = document.createElement("li");
    li.dataset.conversation = hit.conversation; li.dataset.seq = hit.seq;
    li.textContent = `#${hit.seq} …`;
    ul.append(li);
    request("history", {conversation: hit.conversation, after_seq: hit.seq - 1, limit: 1}).then(page => {
      const m = (page.messages || [])[0];
      if (!m) { li.textContent = `#${hit.seq} (gone)`; return; }
      const ext = m.ext || {}, key = peerOf(m), inThread = !!ext.thread_of;
      const text = m.kind === FILE ? "(a file)" : dec.decode(unb64(m.body));
      li.textContent = `${label(key)}${inThread ? " (thread)" : ""} #${m.seq}: ${text}`;
      li.onclick = () => jumpTo(m, key, inThread ? Number(ext.thread) : 0)
        .catch(err => { document.getElementById("chat-error").textContent = err.message; });
    }).catch(err => { li.textContent = `#${hit.seq}: ${err.message}`; });
  }
}

async function jumpTo(m, key, root) {
  // Open the message's conversation (and its thread), older pages until it is there, and highlight it.
  highlight = {conversation: m.conversation, seq: m.seq};
  await openPeer(key);
  if (root) { await openThreadOf(root); return; }
  for (let i = 0; i < 100; i++) {
    const list = conversations.get(key) || [];
    if (list.some(x => x.seq === m.seq) || document.getElementById("older").hidden) break;
    await loadPage(oldest);
  }
  showMessages(false);
  const lit = document.querySelector("#messages .highlight");
  if (lit) lit.scrollIntoView({block: "center"});
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
    const div = messageDiv(m);
    const info = threadInfo.get(peer + ":" + m.seq);
    const link = document.createElement("button");
    link.type = "button"; link.className = "thread-link muted"; link.dataset.seq = m.seq;
    link.textContent = info && info.count ? `💬 ${info.count} in thread` : "💬 thread";
    link.onclick = () => openThreadOf(m.seq).catch(err => { document.getElementById("chat-error").textContent = err.message; });
    if (m.sender === me && !isGroup(peer) && (readUpTo.get(m.conversation) || 0) >= m.seq) {
      const r = document.createElement("span"); r.className = "read muted"; r.textContent = " ✓ read"; div.append(r);
    }
    const row = reactionRow(m);
    row.prepend(link, " ");  // under the message, before its reactions
    box.append(div, row);
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
  const key = peer, roots = messages.map(m => m.seq).slice(-200);
  if (roots.length) {
    request("thread_request", {...whereOf(key), roots}).then(found => {
      for (const x of found.threads || []) if (x.count) threadInfo.set(key + ":" + x.root, {thread: x.thread, count: x.count});
      if (key === peer) showMessages(false);
    }).catch(() => { /* counts are a hint */ });
  }
}

async function openPeer(name) {
  if (peer !== name) closeThread();
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
  document.getElementById("file").disabled = false;
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
document.getElementById("file").addEventListener("change", async e => {
  const file = e.target.files[0], target = peer;
  if (!file || !target) return;
  const progress = document.getElementById("file-progress");
  try {
    const att = await uploadFile(file, (done, total) => { progress.textContent = `uploading ${Math.round(100 * done / total)}%`; });
    const body = b64(packRef(att));
    const clientId = "web-" + Date.now() + "-" + Math.random().toString(36).slice(2, 8);
    const message = isGroup(target)
      ? {conversation: target.slice(1), client_id: clientId, kind: FILE, body}
      : {recipient: target, client_id: clientId, kind: FILE, body};
    const ack = await request("send", {message});
    remember({sender: me, recipient: target, conversation: ack.conversation, seq: ack.seq, kind: FILE, body,
              server_time: ack.server_time}, false);
    progress.textContent = "";
    document.getElementById("chat-error").textContent = "";
  } catch (err) { progress.textContent = ""; document.getElementById("chat-error").textContent = err.message; }
  e.target.value = "";
});
document.getElementById("search-form").addEventListener("submit", async e => {
  e.preventDefault();
  try { await search(document.getElementById("search-text").value.trim()); document.getElementById("chat-error").textContent = ""; }
  catch (err) { document.getElementById("chat-error").textContent = err.message; }
});
document.getElementById("thread-close").addEventListener("click", closeThread);
document.getElementById("thread-form").addEventListener("submit", async e => {
  e.preventDefault();
  const input = document.getElementById("thread-text"), text = input.value, t = openThread;
  if (!text || !t) return;
  input.value = "";
  const body = b64(enc.encode(text)), ext = {thread: String(t.root)};
  const clientId = "web-" + Date.now() + "-" + Math.random().toString(36).slice(2, 8);
  const to = isGroup(t.key) ? {conversation: t.key.slice(1)} : {recipient: t.key};
  try {
    const ack = await request("send", {message: {...to, client_id: clientId, body, ext}});
    remember({sender: me, recipient: t.key, conversation: ack.conversation, seq: ack.seq, body,
              ext: {...ext, thread_of: "sent"}, server_time: ack.server_time}, false);
    document.getElementById("chat-error").textContent = "";
  } catch (err) { document.getElementById("chat-error").textContent = err.message; }
});
document.getElementById("logout").addEventListener("click", async () => {
  try { await request("logout", {}); } finally { location.reload(); }
});
connect().catch(e => { document.getElementById("status").textContent = e.message; });

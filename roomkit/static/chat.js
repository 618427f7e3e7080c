// The demo chat page: examples/chat.py's room, through roomkit.js.
import { RoomSocket } from "/roomkit.js";

const $ = (id) => document.getElementById(id);
let socket = null;
let me = "";
const users = new Set();
// Whether the user list comes from the room's presence (socket.presence): on a roomkit.v1
// connection it does; on a plain one (a server or proxy without the envelope), from the
// room's welcome, user_joined and user_left messages, as before.
let fromPresence = false;
const typing = new Map(); // user -> timer clearing the indicator
let typingSent = false;
let typingTimer = null;

function status(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function show(text, kind = "") {
  const item = document.createElement("li");
  item.textContent = text;
  if (kind) item.className = kind;
  $("messages").append(item);
  $("messages").scrollTop = $("messages").scrollHeight;
}

function renderUsers() {
  $("users").replaceChildren(
    ...[...users].map((user) => {
      const item = document.createElement("li");
      item.textContent = user === me ? `${user} (you)` : user;
      return item;
    }),
  );
  const selected = $("to").value;
  $("to").replaceChildren(
    new Option("everyone", ""),
    ...[...users].filter((user) => user !== me).map((user) => new Option(user, user)),
  );
  $("to").value = users.has(selected) ? selected : "";
}

function renderTyping() {
  const names = [...typing.keys()];
  $("typing").textContent = names.length ? `${names.join(", ")} typing…` : "";
}

function setTyping(user, active) {
  clearTimeout(typing.get(user));
  if (active) typing.set(user, setTimeout(() => setTyping(user, false), 5000));
  else typing.delete(user);
  renderTyping();
}

function handle(message) {
  switch (message.type) {
    case "welcome":
      if (fromPresence) break;
      users.clear();
      message.users.forEach((user) => users.add(user));
      renderUsers();
      break;
    case "user_joined":
      if (!fromPresence) users.add(message.user);
      renderUsers();
      show(`${message.user} joined`, "notice");
      break;
    case "user_left":
      if (!fromPresence) users.delete(message.user);
      setTyping(message.user, false);
      renderUsers();
      show(`${message.user} left`, "notice");
      break;
    case "message":
      setTyping(message.user, false);
      show(`${message.user}: ${message.text}`);
      break;
    case "direct_message":
      show(`${message.user} → ${message.to}: ${message.text}`, "direct");
      break;
    case "user_typing":
      setTyping(message.user, message.active);
      break;
    case "undeliverable":
      show(`not delivered to ${message.to}: ${message.reason}`, "notice");
      break;
    case "error":
      show(`error: ${message.message}`, "notice");
      break;
  }
}

function send(message) {
  socket.send(JSON.stringify(message));
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (socket) socket.close();
  me = $("name").value.trim();
  const room = encodeURIComponent($("room").value.trim());
  socket = new RoomSocket(`/${room}?userId=${encodeURIComponent(me)}`);
  status("connecting", "connecting…");
  socket.addEventListener("open", () => {
    fromPresence = socket.session !== null;
    status("open", `connected to ${$("room").value.trim()} as ${me}`);
    $("chat").hidden = false;
  });
  socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
  // Who is here: the presence's keys are the room's users (examples/chat.py keys each
  // socket by its user, so two tabs are one name).
  socket.addEventListener("presence", (event) => {
    if (!fromPresence) return;
    users.clear();
    Object.keys(event.presence).forEach((user) => users.add(user));
    renderUsers();
  });
  socket.addEventListener("close", (event) => {
    if (!event.willReconnect) status("closed", `closed (${event.code} ${event.reason})`);
  });
  socket.addEventListener("reconnecting", (event) => {
    status("reconnecting", `reconnecting (try ${event.attempt})…`);
  });
});

$("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || !socket) return;
  const to = $("to").value;
  send(to ? { type: "direct", to, text } : { type: "chat", text });
  $("text").value = "";
  clearTimeout(typingTimer);
  typingSent = false;
  send({ type: "typing", active: false });
});

$("text").addEventListener("input", () => {
  if (!socket) return;
  if (!typingSent) send({ type: "typing", active: true });
  typingSent = true;
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => {
    typingSent = false;
    send({ type: "typing", active: false });
  }, 2000);
});

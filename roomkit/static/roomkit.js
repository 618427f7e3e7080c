// roomkit.js: a WebSocket to a roomkit room that comes back by itself.
//
//   import { RoomSocket } from "/roomkit.js";
//   const socket = new RoomSocket("/lobby?userId=ada");
//   socket.addEventListener("message", (event) => console.log(event.data));
//   socket.send(JSON.stringify({ type: "chat", text: "hello" }));  // queued until open
//
// Served by roomkit at /roomkit.js; no dependencies. Reconnects on any drop with
// exponential backoff and full jitter (the delay before try n is a random time up to
// min(maxDelay, minDelay * growFactor ** n), and up to earlyMaxDelay during the first
// earlyPeriod of an outage, so that a server back within a minute has its clients back
// within about 2 s; the same schedule as roomkit.connect). Messages sent while
// disconnected are kept (up to maxQueue) and sent, in order, once open again. After a
// 1012 "Service restart" close, the server's successor is expected any moment: the
// first try is made at once (attempt 0, delay 0) and does not count; if it fails, the
// backoff goes on as after any other close. A close with a code that means "don't
// come back" (1008, but not 1008 "slow consumer", and 4000-4999 by choice of the room)
// stops it for good.
//
// It offers the roomkit.v1 envelope (docs/recovery.md). With a server that selects it,
// a connection opens with the room's welcome (socket.session: id, epoch, seq, resumed,
// recovered), each try carries roomkit.session, roomkit.epoch and roomkit.seq in its
// query (so that the room takes the same session up again and replays what was
// missed), and the page still sees only the payloads, each once: a message whose seq
// is not above the last seen is dropped, and frame kinds it does not know are ignored.
// A server that selects no subprotocol is spoken to as a plain WebSocket (a browser
// fails such a connection when the envelope was offered: every third try of an outage
// does not offer it, every tenth once the server has welcomed a socket; once a plain
// connection has opened, the page goes plain at once to that server; see PLAIN_EVERY).
//
// Presence (docs/presence.md): socket.presence is who is in the room, { key: [meta,
// ...] } in the room's order, kept in sync from the room's
// presence_state (which replaces it) and presence_diff frames (its leaves removed by
// ref, then its joins appended: syncState and syncDiff below); a welcome clears it, and
// it stays {} on a plain connection.
//
// Events: "open" (event.resumed, event.recovered: false and null on a plain
// connection; recovered false means the page must fetch its state again), "message"
// (event.data, event.seq: null when not numbered), "close" (event.code, event.reason,
// event.willReconnect), "reconnecting" (event.attempt, event.delay), "presence"
// (event.presence, the whole of it; event.joins and event.leaves, by key, what a diff
// added and removed: both {} for a state and for a welcome that cleared it).

const DEFAULTS = {
  minDelay: 500, // ms before the first retry, at most
  maxDelay: 10000, // ms: no wait is longer than this
  growFactor: 2, // each failed try doubles the ceiling
  earlyMaxDelay: 2000, // ms: no wait is longer than this early in an outage...
  earlyPeriod: 60000, // ms: ...that is, for this long after the connection was lost
  maxRetries: Infinity, // tries in a row before giving up
  connectTimeout: 10000, // ms for a handshake before it counts as failed
  maxQueue: 1000, // messages kept while disconnected; older ones are dropped first
  protocols: [], // WebSocket subprotocols of the page's own; "roomkit.v1" is added
  binaryType: "blob", // what binary messages arrive as: "blob" or "arraybuffer"
};

export const ENVELOPE = "roomkit.v1";
// Every third try of an outage offers no envelope. A browser fails a connection whose
// server selected none of the subprotocols offered, so a server that does not speak
// roomkit.v1 (an older one behind the same address, a proxy that drops the header)
// can only be reached by a try that does not offer it. Once a server has welcomed a
// socket of the page, it is known to speak it: then only every tenth (after some 15 s
// of an outage, longer than a restart takes), so that a restart's tries resume the
// session, and a rollback to an older server is still reached.
const PLAIN_EVERY = 3;
const PLAIN_EVERY_WELCOMED = 10;
// Once a plain connection has opened to a server not known to speak roomkit.v1, the
// page goes plain at once to it: against an older roomkit each outage costs no failed
// try (where the schedule above cost three, each a join and a leave in the room, and
// some 3.5 s). The first try of every fifth outage after that offers the envelope
// again, for a server upgraded meanwhile (or one that was only down when the page came,
// back just on a plain try): that costs an older server one join and leave, and up to
// a second, per five outages, and finds an upgraded one within five.
const PLAIN_RECHECK_EVERY = 5;
// What the page has learned of each server, by origin (scheme, host and port: rooms
// are paths of the same server), for its lifetime: { envelope: true } once one welcomed
// a socket, { envelope: false, opens } once `opens` plain connections have opened
// since; none while nothing is known.
const servers = new Map();
const PARAMETERS = ["roomkit.session", "roomkit.epoch", "roomkit.seq"];

export function isFinalClose(code, reason = "") {
  // 1008 "slow consumer" only means the page fell behind (a tab in the background):
  // coming back is fine.
  if (code === 1008) return reason !== "slow consumer";
  return code >= 4000 && code <= 4999;
}

const SERVICE_RESTART = 1012; // "Service restart": come back at once

// The wait before try `attempt` (0-based) of an outage that began `outage` ms ago.
export function backoffDelay(attempt, options, outage = 0, random = Math.random) {
  let ceiling = Math.min(options.maxDelay, options.minDelay * options.growFactor ** attempt);
  if (outage < options.earlyPeriod) ceiling = Math.min(ceiling, options.earlyMaxDelay);
  return Math.floor(random() * ceiling);
}

// Whether a try offers the envelope, given what is `known` of its server: `attempt`
// is the try's number in the outage (0 for the first after a 1012 or of the socket),
// `tries` the tries made since the socket last opened.
function offersEnvelope(known, attempt, tries) {
  if (known !== undefined && !known.envelope) {
    return tries === 0 && known.opens % PLAIN_RECHECK_EVERY === 0;
  }
  const every = known === undefined ? PLAIN_EVERY : PLAIN_EVERY_WELCOMED;
  return !(attempt > 0 && attempt % every === 0);
}

// Learn from a connection that opened (welcomed or plain) what its server speaks. A
// plain one to a server that welcomed a socket before may be that server back just on
// a plain try: it is only known no more, and the next outage's schedule tells.
function learn(origin, welcomed) {
  const known = servers.get(origin);
  if (welcomed) servers.set(origin, { envelope: true });
  else if (known !== undefined && known.envelope) servers.delete(origin);
  else servers.set(origin, { envelope: false, opens: known === undefined ? 1 : known.opens + 1 });
}

function resolveUrl(url) {
  const resolved = new URL(url, globalThis.location ? globalThis.location.href : undefined);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}

// `url` with roomkit's query parameters: any it had are taken out, the position's own
// added (the session once it has one; epoch and seq once it has an epoch). The page's
// own parameters stay as written.
export function resumeUrl(url, position) {
  const resolved = new URL(url);
  const ours = (part) => {
    try {
      return PARAMETERS.includes(decodeURIComponent(part.split("=")[0]));
    } catch {
      return false; // a name that is not percent-encoded text is the page's
    }
  };
  const kept = resolved.search.slice(1).split("&").filter((part) => part && !ours(part));
  const added = new URLSearchParams();
  if (position.token !== null) added.set("roomkit.session", position.token);
  if (position.epoch !== null && position.seq !== null) {
    added.set("roomkit.epoch", position.epoch);
    added.set("roomkit.seq", String(position.seq));
  }
  if (added.toString()) kept.push(added.toString());
  resolved.search = kept.join("&");
  return resolved.href;
}

// Where the socket is in its room's log (docs/recovery.md, "What a client keeps").
export class Position {
  constructor() {
    this.token = null;
    this.epoch = null;
    this.seq = null;
  }

  // The connection's first frame, which must be a welcome: its fields, or null.
  welcome(data) {
    const frame = parseFrame(data);
    const fields = frame && frame[0] === "welcome" && frame.length === 2 ? frame[1] : null;
    if (!isWelcome(fields)) return null;
    this.token = fields.session;
    // recovered true: what was missed follows, numbered from the socket's own seq on.
    if (fields.recovered !== true) [this.epoch, this.seq] = [fields.epoch, fields.seq];
    const { id, epoch, seq, resumed, recovered } = fields;
    return { id, epoch, seq, resumed, recovered };
  }

  // A later frame as [payload, seq] (payload an ArrayBuffer for binary), or null to
  // drop it: seen already, of a kind not known, or not the envelope's.
  unwrap(data) {
    if (typeof data !== "string") {
      if (data.byteLength < 8) return null;
      const seq = Number(new DataView(data).getBigUint64(0)) || null;
      return this.fresh(seq) ? [data.slice(8), seq] : null;
    }
    const frame = parseFrame(data);
    if (!frame || frame[0] !== "m" || frame.length !== 3) return null;
    const [, seq, text] = frame;
    if (!(seq === null || isSeq(seq)) || typeof text !== "string") return null;
    return this.fresh(seq) ? [text, seq] : null;
  }

  fresh(seq) {
    if (seq === null) return true;
    if (this.seq !== null && seq <= this.seq) return false;
    this.seq = seq;
    return true;
  }
}

function parseFrame(data) {
  if (typeof data !== "string") return null;
  try {
    const frame = JSON.parse(data);
    return Array.isArray(frame) && typeof frame[0] === "string" ? frame : null;
  } catch {
    return null;
  }
}

const isSeq = (value) => Number.isSafeInteger(value) && value >= 0;

function isWelcome(f) {
  return (
    f !== null &&
    typeof f === "object" &&
    typeof f.id === "string" &&
    typeof f.session === "string" &&
    (f.epoch === null || typeof f.epoch === "string") &&
    (f.seq === null || isSeq(f.seq)) &&
    typeof f.resumed === "boolean" &&
    (f.recovered === null || typeof f.recovered === "boolean")
  );
}

// The presence a presence_state gives: { key: [meta, ...] }, keys without metas and
// metas that are not objects left out.
export function syncState(state) {
  const presence = {};
  for (const [key, entry] of Object.entries(isObject(state) ? state : {})) {
    const metas = isObject(entry) && Array.isArray(entry.metas) ? entry.metas.filter(isObject) : [];
    if (metas.length) presence[key] = metas;
  }
  return presence;
}

// `presence` after a presence_diff (a new object): the leaves' metas removed by ref,
// then the joins' appended (leaves first: a meta's ref is its connection's across
// updates, unlike Phoenix's phx_ref). A new key goes last, and a key the leaves empty
// and the joins fill again keeps its place: the room's order (docs/presence.md,
// "Order"), but that a JavaScript object lists keys that are array indices ("42")
// first, in numeric order.
export function syncDiff(presence, diff) {
  const joins = syncState(isObject(diff) ? diff.joins : null);
  const leaves = syncState(isObject(diff) ? diff.leaves : null);
  const next = { ...presence };
  for (const [key, metas] of Object.entries(leaves)) {
    const refs = new Set(metas.map((meta) => meta.ref));
    const kept = (next[key] || []).filter((meta) => !refs.has(meta.ref));
    if (kept.length || (key in joins && key in next)) next[key] = kept; // in its place
    else delete next[key];
  }
  for (const [key, metas] of Object.entries(joins)) next[key] = [...(next[key] || []), ...metas];
  return { presence: next, joins, leaves };
}

const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

export class RoomSocket extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = resolveUrl(url);
    const { protocol, host } = new URL(this.url);
    this.origin = `${protocol}//${host}`; // what `servers` knows its server by
    this.options = { ...DEFAULTS, ...options };
    this.queue = [];
    this.attempt = 0;
    this.tries = 0; // tries since the socket last opened
    this.stopped = false;
    this.ws = null;
    this.timer = null;
    this.lostAt = performance.now(); // when the outage began: the start, or the last drop
    this.position = new Position(); // kept across connections: where to come back to
    this.session = null; // the last welcome, while connected to a server that sends one
    this.ready = false; // open, and welcomed if enveloped: sends go straight out
    this.presence = {}; // who is in the room, as its frames said since the last welcome
    this.connect();
  }

  get connected() {
    return this.ready && this.ws.readyState === WebSocket.OPEN;
  }

  send(data) {
    if (this.stopped) throw new Error("this RoomSocket is closed");
    if (this.connected) {
      this.ws.send(data);
      return;
    }
    this.queue.push(data);
    if (this.queue.length > this.options.maxQueue) this.queue.shift();
  }

  close(code = 1000, reason = "") {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(code, reason);
  }

  connect() {
    const own = [this.options.protocols].flat().filter((p) => p !== undefined && p !== ENVELOPE);
    const offer = offersEnvelope(servers.get(this.origin), this.attempt, this.tries);
    this.tries += 1;
    const protocols = offer ? [...own, ENVELOPE] : own;
    const ws = new WebSocket(resumeUrl(this.url, this.position), protocols);
    this.ws = ws;
    this.ready = false;
    const timeout = setTimeout(() => ws.close(), this.options.connectTimeout);
    let opened = false;
    let enveloped = false;
    const ready = (welcome) => {
      clearTimeout(timeout);
      learn(this.origin, welcome !== null);
      this.ready = true;
      this.tries = 0;
      this.session = welcome;
      if (Object.keys(this.presence).length) this.updatePresence({}, {}, {});
      this.attempt = 0;
      this.lostAt = null;
      const open = new Event("open");
      Object.assign(open, {
        resumed: welcome ? welcome.resumed : false,
        // A plain connection after a session: what was missed meanwhile is lost.
        recovered: welcome ? welcome.recovered : this.position.token !== null ? false : null,
      });
      this.dispatchEvent(open);
      while (this.queue.length && this.connected) this.ws.send(this.queue.shift());
    };
    ws.addEventListener("open", () => {
      opened = true;
      enveloped = ws.protocol === ENVELOPE;
      ws.binaryType = enveloped ? "arraybuffer" : this.options.binaryType;
      if (!enveloped) ready(null);
    });
    ws.addEventListener("message", (event) => {
      if (!enveloped) {
        this.deliver(event.data, null);
      } else if (!this.ready) {
        const welcome = this.position.welcome(event.data);
        if (welcome) ready(welcome);
        else ws.close(); // not a welcome: a failed try
      } else {
        const unwrapped = this.position.unwrap(event.data);
        if (unwrapped) this.deliver(...unwrapped);
        else this.presenceFrame(event.data);
      }
    });
    let ended = false;
    const end = (code, reason) => {
      if (ended) return;
      ended = true;
      clearTimeout(timeout);
      this.ready = false;
      const willReconnect =
        !this.stopped && !isFinalClose(code, reason) && this.attempt < this.options.maxRetries;
      const closed = new Event("close");
      Object.assign(closed, { code, reason, willReconnect });
      this.dispatchEvent(closed);
      if (this.lostAt === null) this.lostAt = performance.now();
      if (willReconnect) this.scheduleReconnect(opened && code === SERVICE_RESTART);
      else this.stopped = true;
    };
    ws.addEventListener("close", (event) => end(event.code, event.reason));
    // A handshake the WebSocket fails itself (its offered subprotocols not answered):
    // browsers fire "close" after "error", Node's WebSocket (20.x) only "error".
    ws.addEventListener("error", () => {
      if (!opened) end(1006, "");
    });
  }

  // A frame that is no message may be the room's presence.
  presenceFrame(data) {
    const frame = parseFrame(data);
    if (!frame || frame.length !== 2) return;
    if (frame[0] === "presence_state") this.updatePresence(syncState(frame[1]), {}, {});
    if (frame[0] === "presence_diff") {
      const { presence, joins, leaves } = syncDiff(this.presence, frame[1]);
      this.updatePresence(presence, joins, leaves);
    }
  }

  updatePresence(presence, joins, leaves) {
    this.presence = presence;
    const changed = new Event("presence");
    Object.assign(changed, { presence, joins, leaves });
    this.dispatchEvent(changed);
  }

  deliver(data, seq) {
    const payload =
      data instanceof ArrayBuffer && this.options.binaryType === "blob" ? new Blob([data]) : data;
    const message = new MessageEvent("message", { data: payload });
    message.seq = seq;
    this.dispatchEvent(message);
  }

  scheduleReconnect(atOnce = false) {
    const outage = performance.now() - this.lostAt;
    const delay = atOnce ? 0 : backoffDelay(this.attempt, this.options, outage);
    if (!atOnce) this.attempt += 1;
    const reconnecting = new Event("reconnecting");
    Object.assign(reconnecting, { attempt: this.attempt, delay });
    this.dispatchEvent(reconnecting);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}

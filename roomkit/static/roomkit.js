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
// Events: "open", "message" (event.data), "close" (event.code, event.reason,
// event.willReconnect), "reconnecting" (event.attempt, event.delay).

const DEFAULTS = {
  minDelay: 500, // ms before the first retry, at most
  maxDelay: 10000, // ms: no wait is longer than this
  growFactor: 2, // each failed try doubles the ceiling
  earlyMaxDelay: 2000, // ms: no wait is longer than this early in an outage...
  earlyPeriod: 60000, // ms: ...that is, for this long after the connection was lost
  maxRetries: Infinity, // tries in a row before giving up
  connectTimeout: 10000, // ms for a handshake before it counts as failed
  maxQueue: 1000, // messages kept while disconnected; older ones are dropped first
  protocols: undefined, // WebSocket subprotocols
};

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

function resolveUrl(url) {
  const resolved = new URL(url, globalThis.location ? globalThis.location.href : undefined);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}

export class RoomSocket extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = resolveUrl(url);
    this.options = { ...DEFAULTS, ...options };
    this.queue = [];
    this.attempt = 0;
    this.stopped = false;
    this.ws = null;
    this.timer = null;
    this.lostAt = performance.now(); // when the outage began: the start, or the last drop
    this.connect();
  }

  get connected() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
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
    const ws = new WebSocket(this.url, this.options.protocols);
    this.ws = ws;
    const timeout = setTimeout(() => ws.close(), this.options.connectTimeout);
    let opened = false;
    ws.addEventListener("open", () => {
      clearTimeout(timeout);
      opened = true;
      this.attempt = 0;
      this.lostAt = null;
      this.dispatchEvent(new Event("open"));
      while (this.queue.length && this.connected) this.ws.send(this.queue.shift());
    });
    ws.addEventListener("message", (event) => {
      this.dispatchEvent(new MessageEvent("message", { data: event.data }));
    });
    ws.addEventListener("close", (event) => {
      clearTimeout(timeout);
      const willReconnect =
        !this.stopped &&
        !isFinalClose(event.code, event.reason) &&
        this.attempt < this.options.maxRetries;
      const closed = new Event("close");
      Object.assign(closed, { code: event.code, reason: event.reason, willReconnect });
      this.dispatchEvent(closed);
      if (this.lostAt === null) this.lostAt = performance.now();
      if (willReconnect) this.scheduleReconnect(opened && event.code === SERVICE_RESTART);
      else this.stopped = true;
    });
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

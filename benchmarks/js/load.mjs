// The second load generator: Node's `ws` client, which roomkit did not write, beside
// benchmarks/_wire.py. benchmarks/_node.py runs one measurement per process and reads
// the one line of JSON it prints:
//
//   node load.mjs fanout URL CLIENTS MESSAGES [--socketio]   {"deliveries_per_s": ...}
//   node load.mjs rtt URL COUNT [--socketio]                 {"seconds": [...]}
//   node load.mjs pipelined URL COUNT WINDOW [--socketio]    {"msg_per_s": ...}
//
// The scenarios are those of benchmarks/fanout.py and benchmarks/echo.py, step for
// step. Compression is off, as in _wire.py (`ws` offers permessage-deflate by default,
// and the websockets package would take it). With --socketio it speaks Engine.IO inside
// the WebSocket, as _wire.py does for python-socketio.

import { performance } from "node:perf_hooks";
import WebSocket from "ws";

const PAYLOAD = "x".repeat(100);
const BATCH = 100; // clients opened at once: not a connect storm

class Peer {
  // One client; `next()` is its next message (for Socket.IO, the event's argument).
  static open(url, path, socketio) {
    const target = socketio ? `${url}/socket.io/?EIO=4&transport=websocket` : url + path;
    const ws = new WebSocket(target, { perMessageDeflate: false });
    const peer = new Peer(ws, socketio);
    return new Promise((resolve, reject) => {
      ws.once("error", reject);
      if (!socketio) {
        ws.once("open", () => resolve(peer));
        return;
      }
      peer.onEngine = (packet) => {
        if (packet.startsWith("0")) ws.send("40"); // open: connect to the namespace
        else if (packet.startsWith("40")) {
          peer.onEngine = null;
          resolve(peer);
        }
      };
    });
  }

  constructor(ws, socketio) {
    this.ws = ws;
    this.socketio = socketio;
    this.onMessage = () => {};
    this.onEngine = null;
    ws.on("message", (data, isBinary) => {
      const text = isBinary ? data : data.toString();
      if (!socketio) return this.onMessage(text);
      if (this.onEngine) return this.onEngine(text);
      if (text === "2") this.ws.send("3"); // Engine.IO ping
      else if (text.startsWith("42")) this.onMessage(JSON.parse(text.slice(2))[1]);
    });
  }

  send(text, event = "message") {
    this.ws.send(this.socketio ? "42" + JSON.stringify([event, text]) : text);
  }

  next() {
    return new Promise((resolve) => {
      this.onMessage = resolve;
    });
  }

  close() {
    this.ws.terminate();
  }
}

async function fanout(url, clients, messages, socketio) {
  const peers = [];
  for (let start = 0; start < clients; start += BATCH) {
    const batch = [];
    for (let i = start; i < Math.min(clients, start + BATCH); i++) {
      batch.push(Peer.open(url, "/fanout", socketio));
    }
    peers.push(...(await Promise.all(batch)));
  }
  if (socketio) {
    for (const peer of peers) {
      const joined = peer.next();
      peer.send("/fanout", "join");
      if ((await joined) !== "joined") throw new Error("not joined");
    }
  }
  let waiting = clients;
  let done;
  const all = new Promise((resolve) => {
    done = resolve;
  });
  for (const peer of peers) {
    let left = messages;
    peer.onMessage = () => {
      if (--left === 0 && --waiting === 0) done();
    };
  }
  const began = performance.now();
  peers[0].send(`go ${messages}`);
  await all;
  const elapsed = (performance.now() - began) / 1000;
  for (const peer of peers) peer.close();
  return { deliveries_per_s: (clients * messages) / elapsed };
}

async function rtt(url, count, socketio) {
  const peer = await Peer.open(url, "/echo", socketio);
  const seconds = [];
  for (let i = 0; i < count; i++) {
    const began = performance.now();
    const reply = peer.next();
    peer.send(PAYLOAD);
    await reply;
    seconds.push((performance.now() - began) / 1000);
  }
  peer.close();
  return { seconds };
}

async function pipelined(url, count, window, socketio) {
  const peer = await Peer.open(url, "/echo", socketio);
  let sent = 0;
  let received = 0;
  let done;
  const all = new Promise((resolve) => {
    done = resolve;
  });
  peer.onMessage = () => {
    if (++received === count) done();
    else if (sent < count) {
      sent++;
      peer.send(PAYLOAD);
    }
  };
  const began = performance.now();
  for (; sent < Math.min(window, count); sent++) peer.send(PAYLOAD);
  await all;
  const elapsed = (performance.now() - began) / 1000;
  peer.close();
  return { msg_per_s: count / elapsed };
}

const [command, url, ...rest] = process.argv.slice(2);
const socketio = rest.includes("--socketio");
const [a, b] = rest.filter((arg) => arg !== "--socketio").map(Number);
const run = { fanout: () => fanout(url, a, b, socketio), rtt: () => rtt(url, a, socketio) };
run.pipelined = () => pipelined(url, a, b, socketio);
if (!(command in run)) {
  console.error("usage: node load.mjs fanout|rtt|pipelined URL N [M] [--socketio]");
  process.exit(2);
}
console.log(JSON.stringify(await run[command]()));
process.exit(0);

// The guide's ChatRoom, a Durable Object on the hibernation API, served by workerd for
// the benchmarks (benchmarks/_servers.py starts it; docs/benchmarking.md has the method).
//
// The Worker's entry point sends each upgrade to the object named by its path, as the
// guide's does; the object accepts the socket with `this.ctx.acceptWebSocket` and
// handles it in `webSocketMessage`. SCENARIO (from the environment, see workerd.capnp)
// picks what a message does, the same for every peer:
//
// * echo: the message goes back to its sender;
// * fanout: `go M` sends M messages of 100 bytes to every socket of the room;
// * chat: the guide's own loop, the message to every socket of the room;
// * idle: each socket is tagged and given an attachment, as roomkit's idle room does.

const PAYLOAD = "x".repeat(100);

export class ChatRoom {
  constructor(ctx, env) {
    this.ctx = ctx;
    this.scenario = env.SCENARIO;
  }

  async fetch(request) {
    if (request.headers.get("Upgrade") !== "websocket") {
      return new Response("Expected websocket", { status: 426 });
    }
    const [client, server] = Object.values(new WebSocketPair());
    if (this.scenario === "idle") {
      this.ctx.acceptWebSocket(server, ["all"]);
      server.serializeAttachment({ user: new URL(request.url).pathname });
    } else {
      this.ctx.acceptWebSocket(server);
    }
    return new Response(null, { status: 101, webSocket: client });
  }

  async webSocketMessage(ws, message) {
    const data = typeof message === "string" ? message : new TextDecoder().decode(message);
    if (this.scenario === "echo") {
      ws.send(data);
    } else if (this.scenario === "fanout") {
      const count = Number(data.split(" ")[1]);
      for (let i = 0; i < count; i++) {
        for (const socket of this.ctx.getWebSockets()) {
          socket.send(PAYLOAD);
        }
      }
    } else {
      for (const socket of this.ctx.getWebSockets()) {
        socket.send(data);
      }
    }
  }

  async webSocketClose(ws, code, reason, wasClean) {
    ws.close(code, reason);
  }

  async webSocketError(ws, error) {
    console.error("WebSocket error:", error);
    ws.close(1011, "Internal error");
  }
}

export default {
  async fetch(request, env) {
    const name = new URL(request.url).pathname;
    return env.ROOMS.get(env.ROOMS.idFromName(name)).fetch(request);
  },
};

# workerd serving worker.js's ChatRoom for the benchmarks. Run as
#   workerd serve workerd.capnp --socket-addr http=127.0.0.1:PORT
# with ROOMKIT_BENCH_SCENARIO set to echo, fanout, chat or idle.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [(name = "main", worker = .chat)],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "main")],
);

const chat :Workerd.Worker = (
  modules = [(name = "worker.js", esModule = embed "worker.js")],
  compatibilityDate = "2026-11-01",
  bindings = [
    (name = "ROOMS", durableObjectNamespace = "ChatRoom"),
    (name = "SCENARIO", fromEnvironment = "ROOMKIT_BENCH_SCENARIO"),
  ],
  durableObjectNamespaces = [(className = "ChatRoom", uniqueKey = "roomkit-benchmarks-chatroom")],
  # The rooms store nothing; in memory, as roomkit's benchmark servers' ":memory:".
  durableObjectStorage = (inMemory = void),
);

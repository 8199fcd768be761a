// Connects to NATS with the pod's projected service-account token, reading the token file again
// at every connect and reconnect, and exchanges greetings on `<namespace>.greetings`.
//
//   NATS_URL=nats://nats.nats.svc.cluster.local:4222 \
//   NATS_TOKEN_FILE=/var/run/secrets/nats/token NATS_NAMESPACE=team-a \
//   node client.mjs [--count N]
import { readFileSync } from "node:fs";
import { connect, Events, StringCodec, tokenAuthenticator } from "nats";

const url = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const tokenFile = process.env.NATS_TOKEN_FILE ?? "/var/run/secrets/nats/token";
const namespace = process.env.NATS_NAMESPACE;
if (!namespace) {
  console.error("NATS_NAMESPACE is required");
  process.exit(2);
}
const countArg = process.argv.indexOf("--count");
const count = countArg > 0 ? Number(process.argv[countArg + 1]) : Infinity;

const nc = await connect({
  servers: url.split(","),
  name: "token-file-example",
  // The function is called for every CONNECT the client sends, so each reconnect presents
  // whatever the kubelet last wrote to the file.
  authenticator: tokenAuthenticator(() => readFileSync(tokenFile, "utf8").trim()),
  maxReconnectAttempts: -1, // never give up
  reconnectTimeWait: 1000,
  waitOnFirstConnect: true, // keep trying when the first attempt fails too
  // By default two refusals in a row end the connection for good; keep trying instead, the
  // next token in the file may be accepted.
  ignoreAuthErrorAbort: true,
});
console.log("connected");

let connected = true;
(async () => {
  for await (const s of nc.status()) {
    if (s.type === Events.Disconnect) {
      connected = false;
      console.log("disconnected");
    } else if (s.type === Events.Reconnect) {
      connected = true;
      console.log("reconnected");
    } else if (s.type === Events.Error) {
      console.log(`error: ${s.data}`);
    }
  }
})();

const sc = StringCodec();
const subject = `${namespace}.greetings`;
let received = 0;
let stopping = false;
const sub = nc.subscribe(subject, {
  callback: (err, msg) => {
    if (err) return console.log(`error: ${err.message}`);
    if (stopping) return; // messages still arriving while the client drains
    received++;
    console.log(`received ${msg.subject}: ${sc.decode(msg.data)}`);
    if (received >= count) stop();
  },
});

let sent = 0;
const timer = setInterval(() => {
  sent++;
  // While disconnected the client buffers the message and sends it after the reconnect.
  nc.publish(subject, sc.encode(`hello ${sent} from node`));
}, 1000);

async function stop() {
  if (stopping) return;
  stopping = true;
  clearInterval(timer);
  sub.unsubscribe();
  // drain() waits for the server, which a client that is still reconnecting cannot reach.
  await (connected ? nc.drain() : nc.close()).catch(() => nc.close());
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

const err = await nc.closed();
console.log(err ? `stopped: ${err.message}` : "stopped");

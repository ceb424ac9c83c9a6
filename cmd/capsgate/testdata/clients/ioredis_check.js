// Drives capsgate with ioredis as an application would (ready check on),
// and prints what the client library made of each reply as one JSON
// object, for clients_e2e_test.go to compare. Usage: node ioredis_check.js HOST PORT
"use strict";
const Redis = require("ioredis");

// infoDict parses INFO as ioredis's ready check does (field:value lines),
// then a value of k=v pairs (a service line) into an object.
function infoDict(text) {
  const info = {};
  for (const line of text.split("\r\n")) {
    if (!line || line.startsWith("#")) continue;
    const [field, ...rest] = line.split(":");
    const value = rest.join(":");
    info[field] = value.includes("=") ? Object.fromEntries(value.split(",").map((kv) => kv.split("="))) : value;
  }
  return info;
}

function clientLine(line) {
  return Object.fromEntries(line.split(" ").map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
}

async function main() {
  const [host, port] = process.argv.slice(2);
  const r = new Redis({ host, port: Number(port), connectionName: "node-check", lazyConnect: true,
    maxRetriesPerRequest: 0, retryStrategy: () => null });
  await r.connect(); // resolves once the ready check (INFO) has passed
  const out = { version: require("ioredis/package.json").version, status: r.status };
  out.ping = await r.ping();
  const info = infoDict(await r.info());
  out.info = {};
  for (const k of ["redis_version", "loading", "connected_clients", "role", "services", "service_demo"]) out.info[k] = info[k];
  out.info_services = infoDict(await r.info("services"));
  out.command_count = await r.command("COUNT");
  out.command = (await r.command("INFO", "admit"))[0];
  out.client_info = clientLine((await r.client("INFO")).trim());
  out.client_list = (await r.client("LIST")).trim().split("\n").map(clientLine);
  out.client_id = await r.client("ID");
  out.client_getname = await r.client("GETNAME");
  out.admit = await r.call("ADMIT", "demo", "CALL", "node-1");
  const q = await r.call("QUOTA", "demo");
  out.quota = {};
  for (let i = 0; i < q.length; i += 2) out.quota[q[i]] = q[i + 1];
  out.info_after = infoDict(await r.info("services")).service_demo;
  out.release = await r.call("RELEASE", "demo", "node-1");
  out.release_again = await r.call("RELEASE", "demo", "node-1");
  const res = await r.pipeline().call("ADMIT", "demo", "PRIORITY", "emergency").ping().info("persistence").exec();
  out.pipeline = res.map(([err, v]) => (err ? "error: " + err.message : v));
  const tx = await r.multi().call("ADMIT", "demo", "PRIORITY", "emergency").ping().exec();
  out.transaction = tx.map(([err, v]) => (err ? "error: " + err.message : v));
  r.disconnect();
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

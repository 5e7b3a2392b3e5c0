// node client.js PROTO_DIR HOST:PORT COMMAND [--flag value]...: the Node client of jetgate's
// interop tests (@grpc/grpc-js with @grpc/proto-loader reading proto/ at run time). Every
// command prints JSON, one object per line.
//
//   publish --count N [--key K | --key-prefix P] [--id-prefix I]
//       N OrderPlaced events with PublishBatch; prints {published, duplicates, stream,
//       first_sequence, last_sequence}.
//   bad-request                      an invalid Publish; prints the code and the
//                                    google.rpc.BadRequest field violations.
//   conflict --key K --expected N    a Publish with expected_last_key_sequence N; prints
//                                    the code and the jetgate.v1.SequenceConflict.
//   subscribe --group G [--max-in-flight N] [--count N] [--nak ID --nak-delay-ms D]
//       [--reject ID --reason R]
//       joins group G; prints {kind: "subscribed"}, then one {kind: "settled"} line per
//       delivery once the gateway confirms its settlement (ACK; NAK of the first attempt
//       of ID, redelivered after D ms or, without D, the group's backoff; REJECT of ID);
//       exits after N confirmed ACK/REJECT settlements.
//   dead-letters --group G           the group's dead letters (Admin.ListDeadLetters).
//   read --event-type T --key K [--max-events-per-response N]
//       a key's history: {kind: "event"} lines (with how many came in their response
//       message), and caught_up.
//
// Errors come back with a google.rpc.Status in the `grpc-status-details-bin` trailer;
// proto-loader gives every message type serialize/deserialize, which decodes it and the
// Any details in it.
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [protoDir, address, command, ...rest] = process.argv.slice(2);
const files = [
  "jetgate/v1/gateway.proto",
  "jetgate/v1/admin.proto",
  "jetgate/examples/orders/v1/orders.proto",
  "google/rpc/error_details.proto",
];
const definition = loader.loadSync(files, {
  includeDirs: [protoDir],
  keepCase: true,
  longs: String,
  enums: String,
  oneofs: true,
  arrays: true, // empty repeated fields as [] (proto-loader leaves them out otherwise)
});
const { EventGateway, Admin } = grpc.loadPackageDefinition(definition).jetgate.v1;
const options = {
  "grpc.keepalive_time_ms": 10000,
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.max_receive_message_length": 64 << 20,
};
const client = new EventGateway(address, grpc.credentials.createInsecure(), options);
const PREFIX = "type.googleapis.com/";

function flags(args, defaults) {
  const parsed = { ...defaults };
  for (let i = 0; i < args.length; i += 2) {
    const name = args[i].replace(/^--/, "");
    if (!(name in defaults)) fail(2, `unknown flag --${name}`);
    parsed[name] = args[i + 1];
  }
  return parsed;
}

function fail(code, message) {
  console.error(`node client: ${message}`);
  process.exit(code);
}

const emit = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const deadline = (ms) => ({ deadline: Date.now() + ms });

function orderPlaced(id, key) {
  const payload = {
    type_url: PREFIX + "jetgate.examples.orders.v1.OrderPlaced",
    value: definition["jetgate.examples.orders.v1.OrderPlaced"].serialize({
      order_id: key,
      customer_id: "c-node",
    }),
  };
  return { event: { id, key, payload } };
}

// The code and decoded details of a failed call (or {code: "OK"}).
function errorReport(err) {
  if (!err) return { code: "OK" };
  const report = { code: grpc.status[err.code], message: err.details };
  const [raw] = err.metadata ? err.metadata.get("grpc-status-details-bin") : [];
  if (!raw) return report;
  const status = definition["google.rpc.Status"].deserialize(raw);
  for (const detail of status.details) {
    const name = detail.type_url.slice(PREFIX.length);
    const type = definition[name];
    if (!type) fail(1, `undecodable detail ${detail.type_url}`);
    const value = type.deserialize(detail.value);
    if (name === "google.rpc.BadRequest") report.violations = value.field_violations;
    if (name === "jetgate.v1.SequenceConflict") report.conflict = value;
  }
  return report;
}

function publish(args) {
  const f = flags(args, { count: "1", key: "", "key-prefix": "node-o", "id-prefix": "node" });
  const entries = [];
  for (let i = 0; i < Number(f.count); i++) {
    entries.push(orderPlaced(`${f["id-prefix"]}-${i}`, f.key || `${f["key-prefix"]}-${i}`));
  }
  client.PublishBatch({ entries }, deadline(30000), (err, reply) => {
    if (err) fail(1, `${grpc.status[err.code]}: ${err.details}`);
    const summary = { published: 0, duplicates: 0 };
    for (const [i, result] of reply.results.entries()) {
      if (result.error) fail(1, `entry ${entries[i].event.id}: ${result.error.message}`);
      summary.published += 1;
      if (result.ok.duplicate) summary.duplicates += 1;
      summary.first_sequence ??= result.ok.sequence;
      summary.last_sequence = result.ok.sequence;
      summary.stream = result.ok.stream;
    }
    emit(summary);
    client.close();
  });
}

function answered(err) {
  emit(errorReport(err));
  client.close();
}

function badRequest(args) {
  flags(args, {});
  // Two faults at once: a key with whitespace and a reserved header name.
  const request = orderPlaced("node-bad", "bad key");
  request.event.headers = { "Nats-Msg-Id": "forged" };
  client.Publish(request, deadline(10000), (err) => answered(err));
}

function conflict(args) {
  const f = flags(args, { key: "node-o-1", id: "node-conflict", expected: "0" });
  const request = orderPlaced(f.id, f.key);
  request.precondition = { expected_last_key_sequence: f.expected };
  client.Publish(request, deadline(10000), (err) => answered(err));
}

function subscribe(args) {
  const f = flags(args, {
    group: "",
    stream: "",
    "max-in-flight": "16",
    count: "0",
    nak: "",
    "nak-delay-ms": "0", // 0: no delay in the NAK, the group's backoff applies
    reject: "",
    reason: "rejected by the Node client",
  });
  const count = Number(f.count);
  const call = client.Subscribe();
  const sent = new Map(); // ack id -> its line, until confirmed
  const nakedAt = new Map(); // event id -> when its NAK was sent (ms)
  let final = 0;
  call.write({ open: { group: f.group, stream: f.stream, max_in_flight: Number(f["max-in-flight"]) } });
  call.on("data", (response) => {
    if (response.subscribed) {
      const s = response.subscribed;
      emit({ kind: "subscribed", group: s.group, stream: s.stream, max_deliver: s.max_deliver });
    }
    const settlements = [];
    for (const d of response.deliveries) {
      const e = d.event;
      const line = {
        kind: "settled",
        event_id: e.id,
        key: e.key,
        subject: e.subject,
        sequence: e.sequence,
        attempt: d.attempt,
        type: e.payload.type_url.slice(PREFIX.length),
        action: "ACK",
      };
      if (nakedAt.has(e.id)) line.seconds_since_nak = (Date.now() - nakedAt.get(e.id)) / 1000;
      const settlement = { ack_id: d.ack_id, action: "ACTION_ACK" };
      if (e.id === f.nak && d.attempt === 1) {
        const ms = Number(f["nak-delay-ms"]);
        settlement.action = "ACTION_NAK";
        if (ms > 0) settlement.delay = { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
        line.action = "NAK";
        nakedAt.set(e.id, Date.now());
      } else if (e.id === f.reject) {
        settlement.action = "ACTION_REJECT";
        settlement.reason = f.reason;
        line.action = "REJECT";
      }
      sent.set(d.ack_id, line);
      settlements.push(settlement);
    }
    if (settlements.length > 0) call.write({ settlements });
    for (const result of response.settled) {
      const line = sent.get(result.ack_id);
      if (!line) fail(1, `confirmation of ack id ${result.ack_id} this client never settled`);
      sent.delete(result.ack_id);
      line.status = result.status.replace(/^STATUS_/, "");
      if (result.detail) line.detail = result.detail;
      emit(line);
      if (line.status === "APPLIED" && line.action !== "NAK") final += 1;
    }
    if (count > 0 && final >= count) {
      call.cancel(); // the gateway hands back whatever it still had in flight for us
      client.close();
    }
  });
  call.on("error", (err) => {
    if (err.code !== grpc.status.CANCELLED) fail(1, `${grpc.status[err.code]}: ${err.details}`);
  });
}

function read(args) {
  const f = flags(args, {
    "event-type": "jetgate.examples.orders.v1.OrderPlaced",
    key: "",
    "max-events-per-response": "0",
  });
  const request = {
    key: { event_type: f["event-type"], key: f.key },
    max_events_per_response: Number(f["max-events-per-response"]),
  };
  const call = client.Read(request, deadline(30000));
  call.on("data", (response) => {
    if (response.caught_up) {
      emit({ kind: "caught_up", ...response.caught_up });
      return;
    }
    // One event per message, or several (max_events_per_response > 1).
    const batch = response.events ? response.events.events : [response.event];
    for (const { event, stored_time } of batch) {
      const type = event.payload.type_url.slice(PREFIX.length);
      const decoded = definition[type].deserialize(event.payload.value);
      emit({
        kind: "event",
        event_id: event.id,
        key: event.key,
        subject: event.subject,
        sequence: event.sequence,
        stream: event.stream,
        in_response: batch.length,
        type,
        order_id: decoded.order_id,
        stored_seconds: stored_time.seconds,
      });
    }
  });
  call.on("error", (err) => fail(1, `${grpc.status[err.code]}: ${err.details}`));
  call.on("end", () => client.close());
}

function deadLetters(args) {
  const f = flags(args, { group: "" });
  // A second client on the same channel: jetgate.v1.Admin is served on the same port.
  const admin = new Admin(address, grpc.credentials.createInsecure(), {
    ...options,
    channelOverride: client.getChannel(),
  });
  admin.ListDeadLetters({ group: f.group }, deadline(10000), (err, reply) => {
    if (err) fail(1, `${grpc.status[err.code]}: ${err.details}`);
    for (const d of reply.dead_letters) {
      const { event_id, group, origin_stream, origin_sequence, reason, error, attempts } = d;
      const line = { event_id, group, origin_stream, origin_sequence, reason, error, attempts };
      emit({ kind: "dead_letter", ...line });
    }
    client.close();
  });
}

const commands = {
  publish,
  "bad-request": badRequest,
  conflict,
  subscribe,
  read,
  "dead-letters": deadLetters,
};
if (!(command in commands)) fail(2, `usage: node client.js PROTO_DIR ADDR ${Object.keys(commands).join("|")}`);
commands[command](rest);

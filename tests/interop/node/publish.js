// node publish.js PROTO_DIR HOST:PORT EVENT_ID: publishes one OrderPlaced, prints the reply as JSON.
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");
const [protoDir, address, eventId] = process.argv.slice(2);
const files = ["jetgate/v1/gateway.proto", "jetgate/examples/orders/v1/orders.proto"];
const definition = loader.loadSync(files, { includeDirs: [protoDir], keepCase: true, longs: String });
const { EventGateway } = grpc.loadPackageDefinition(definition).jetgate.v1;
const client = new EventGateway(address, grpc.credentials.createInsecure(), {
  "grpc.keepalive_time_ms": 10000, // ping an idle connection every 10 s
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.default_compression_algorithm": 2, // gzip
});
const placed = definition["jetgate.examples.orders.v1.OrderPlaced"];
const payload = {
  type_url: "type.googleapis.com/jetgate.examples.orders.v1.OrderPlaced",
  value: placed.serialize({ order_id: "o-43", customer_id: "c-7" }),
};
// A fixed id makes a retry of this call safe: JetStream stores it once.
const request = { event: { id: eventId, key: "o-43", payload } };
client.Publish(request, { deadline: Date.now() + 10000 }, (err, reply) => {
  if (err) {
    console.error(`${grpc.status[err.code]}: ${err.details}`);
    process.exit(1);
  }
  console.log(JSON.stringify(reply));
  client.close();
});

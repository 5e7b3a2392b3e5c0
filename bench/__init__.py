"""jetgate benchmarks: `python -m bench` (`make bench`), see `bench.cli` for the options.

Starts its own nats-server (file storage, temporary directory) and processes on free
127.0.0.1 ports, runs every scenario for a fixed time after a warm-up and prints one table
(events/s, ratio to the scenario's baseline with its target, client/server/nats CPU µs per
event, latency p50/p99/p999) and writes bench/results/latest.json. Two blocks by default:
nats-server's default durability and `sync_interval: always` (`--fsync default|always|both`).
The payload is a 256-byte OrderPlaced in every scenario (printed in the header).

    .venv/bin/python -m bench                        # both blocks, 1 s warm-up + 5 s each (~2 min)
    .venv/bin/python -m bench --fsync default        # the first block only (~1 min)
    .venv/bin/python -m bench --scenario publish-unary --seconds 10   # + its baseline
    .venv/bin/python -m bench --memory 60            # gateway RSS over 60 s of publish-stream

Modules:
- `cli`: options, the run, output; `__main__`: `python -m bench`.
- `harness`: a block = nats-server + gateway/echo processes + Context; runs the scenarios.
- `scenarios`: the publish loops and the registry SCENARIOS (how to add one: its docstring).
- `measure`: Tally, Context, Row, the timed measurement, CPU/RSS from /proc.
- `natscli`: the Go-client reference row (`nats bench js pub async`, `make tools`).
- `echo`: the grpc-echo baseline server (`python -m bench.echo --port N`).
- `servers`: starting and stopping (by pid) the gateway and echo processes.
- `memory`: the RSS check. `report`: table, sanity check, JSON. `events`: payload, requests.
"""

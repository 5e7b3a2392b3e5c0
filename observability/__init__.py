"""OpenTelemetry setup and propagation (see DESIGN.md section 6); built by the tracing issue."""

"""Consumer-group runtime (see DESIGN.md section 5); built by the consumer-groups issue."""

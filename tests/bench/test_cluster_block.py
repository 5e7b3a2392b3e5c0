"""`python -m bench --cluster 3`: the opt-in block on a 3-node JetStream cluster with R3
streams (bench.harness), briefly. Asserted, as in the smoke test: its three scenarios ran,
published something, every acknowledged event is in the (replicated) stream, and the
table has their rows under `[cluster-3]` next to the default block's."""

from __future__ import annotations

from pathlib import Path

from bench.harness import CLUSTER_SCENARIOS
from tests.bench.test_smoke import QUICK, run_bench, table_rows


def test_the_cluster_block_measures_its_scenarios_against_r3_streams(tmp_path: Path) -> None:
    picked = ["--scenario", "publish-unary", "--scenario", "publish-batch-100"]
    output, report = run_bench(
        [*QUICK, "--fsync", "default", *picked, "--cluster", "3"], tmp_path, "latest.json"
    )

    assert "sanity: OK" in output
    assert report["options"]["blocks"] == ["default", "cluster-3"]
    rows = {(r["block"], r["scenario"]): r for r in report["results"]}
    clustered = {("cluster-3", name) for name in CLUSTER_SCENARIOS}
    assert clustered <= set(rows)
    assert {block for block, _ in rows} == {"default", "cluster-3"}
    for key in clustered:
        row = rows[key]
        assert not row["skipped"], row
        assert row["consistent"] is True, row
        assert row["stream_messages"] == row["ok_total"] > 0, row
    assert clustered <= table_rows(output)
    assert "ratio>=" in output  # the cluster's target: the scenario's ratio on one server

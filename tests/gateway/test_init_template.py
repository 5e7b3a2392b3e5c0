"""`jetgate init`'s configuration template: what it offers commented out is valid too."""

from __future__ import annotations

from pathlib import Path

from gateway import init_cli
from gateway.config import load_config


def test_the_written_config_loads_with_its_commented_group_enabled(tmp_path: Path) -> None:
    init_cli.write(tmp_path, force=False)
    written = (tmp_path / init_cli.CONFIG_NAME).read_text(encoding="utf-8")
    assert load_config(tmp_path / init_cli.CONFIG_NAME, env={}).groups == ()

    at = written.index("# [[groups]]")
    block = written[at:].splitlines()
    enabled = "\n".join(line.removeprefix("# ") for line in block)
    (tmp_path / init_cli.CONFIG_NAME).write_text(written[:at] + enabled + "\n", encoding="utf-8")
    (group,) = load_config(tmp_path / init_cli.CONFIG_NAME, env={}).groups
    assert (group.name, group.stream, group.filter_subjects) == (
        "cart-audit",
        "CARTS",
        ("carts.>",),
    )
    assert group.max_deliver == 5
    assert group.backoff == (1.0, 5.0, 30.0)
    assert group.ack_wait == 30.0

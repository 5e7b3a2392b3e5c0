"""`jetgate up` is durable by default: its embedded nats-server syncs every write, and the
banner says what an OK means."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.integration.jetgate_up import WAIT, read_banner, read_rest, start_up


async def test_jetgate_up_runs_nats_server_with_sync_always_by_default(tmp_path: Path) -> None:
    proc = await start_up(tmp_path)
    assert proc.stdout is not None
    rest: asyncio.Task[str] | None = None
    try:
        banner = await read_banner(proc.stdout)
        rest = asyncio.create_task(read_rest(proc.stdout))
        conf = (tmp_path / "data" / "nats" / "nats-server.conf").read_text()
        assert "sync_interval: always" in conf
        assert "Durability: an OK means fsynced to disk on 1 node (R1 streams)" in banner
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if rest is not None:
            await asyncio.wait_for(rest, WAIT)

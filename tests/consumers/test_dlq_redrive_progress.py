"""`jetgate dlq redrive` of many dead letters: its progress (a callback of the redrive loop,
a rich bar when stderr is a terminal, plain lines otherwise, `NO_COLOR` honoured) and its
exit code when it keeps dead letters it cannot redrive (3, data refused; it was 0)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import sys
from pathlib import Path

from nats.js import JetStreamContext

from consumers import deadletter
from consumers.deadletter import RedriveProgress
from jetgate import wire
from tests.consumers.conftest import STREAM, store
from tests.consumers.test_dlq_cli import dlq

REPO = Path(__file__).resolve().parents[2]
GROUP = "billing"
# An SGR sequence that sets a colour (30-38, 40-48, 90-97, 100-107: ANSI, 256, RGB).
COLOUR = re.compile(r"\x1b\[(?:[0-9]+;)*(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])(?:;[0-9]+)*m")


async def dead_letters(js: JetStreamContext, count: int, *, unredrivable: int = 0) -> None:
    """Store `count` dead letters of GROUP, the last `unredrivable` of them truncated copies
    whose original is gone (redrive must keep those)."""
    await deadletter.ensure_stream(js)
    for index in range(count):
        key = f"o-{index}"
        sequence = await store(js, key)
        stored = await js.get_msg(STREAM, sequence)
        headers = deadletter.dead_letter_headers(
            dict(stored.headers or {}),
            stream=STREAM,
            subject=stored.subject or "",
            sequence=sequence,
            group=GROUP,
            attempts=3,
            reason="reject",
            error="refused by the test",
        )
        if index >= count - unredrivable:
            headers[wire.DEAD_TRUNCATED] = str(len(stored.data or b"") + 1)
            await js.delete_msg(STREAM, sequence)
        await js.publish(
            f"{wire.DEAD_LETTER_PREFIX}.{GROUP}.{stored.subject}",
            stored.data or b"",
            headers=headers,
        )


async def test_redrive_reports_its_progress_after_each_dead_letter(js: JetStreamContext) -> None:
    await dead_letters(js, 5, unredrivable=1)
    seen: list[RedriveProgress] = []

    done = await deadletter.redrive(js, GROUP, refused=lambda dead, why: None, progress=seen.append)

    assert len(done) == 4
    assert seen[0] == RedriveProgress(total=5)
    assert [s.done for s in seen] == [0, 1, 2, 3, 4, 5]
    assert seen[-1] == RedriveProgress(total=5, done=5, redriven=4, refused=1)
    assert all(s.redriven + s.refused <= s.done for s in seen)


async def test_redrive_that_keeps_dead_letters_exits_3_with_plain_output(
    js: JetStreamContext, nats_url: str
) -> None:
    await dead_letters(js, 3, unredrivable=1)

    code, out, err = await dlq(nats_url, "redrive", "--group", GROUP)

    assert code == 3, err
    assert "redrove 2 dead letters of group billing" in out
    assert "not redriven: dead letter" in err
    assert (
        err.splitlines()[-1]
        == "jetgate: 1 dead letters of group billing kept (not redriven: see above)"
    )
    assert "\x1b[" not in out + err  # off a terminal: no bar, no escape sequences
    assert "redriving" not in err

    # What is left can be purged; a redrive with nothing to keep exits 0.
    code, out, err = await dlq(nats_url, "purge", "--group", GROUP)
    assert code == 0, err
    code, out, err = await dlq(nats_url, "redrive", "--group", GROUP)
    assert (code, out.splitlines()[-1]) == (0, "redrove 0 dead letters of group billing"), err


async def redrive_on_a_terminal(nats_url: str, **env: str) -> tuple[int, str, str]:
    """`jetgate dlq redrive` with stderr on a pseudo-terminal: exit code, stdout, terminal."""
    main, terminal = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "NO_COLOR"))}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-W", "error", "-m", "consumers", "dlq", "redrive"),
        *("--group", GROUP, "--nats-url", nats_url),
        cwd=REPO,
        env={**clean, "TERM": "xterm-256color", "COLUMNS": "120", **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)

    def read_terminal() -> bytes:
        chunks = []
        with contextlib.suppress(OSError):  # EIO once the child has closed its end
            while chunk := os.read(main, 4096):
                chunks.append(chunk)
        return b"".join(chunks)

    try:
        reading = asyncio.get_running_loop().run_in_executor(None, read_terminal)
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        shown = await asyncio.wait_for(reading, 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(main)
    assert process.returncode is not None
    return process.returncode, out.decode(), shown.decode(errors="replace")


async def test_redrive_shows_a_progress_bar_on_a_terminal(
    js: JetStreamContext, nats_url: str
) -> None:
    await dead_letters(js, 6, unredrivable=1)

    code, out, shown = await redrive_on_a_terminal(nats_url)

    assert code == 3, shown
    assert "redriving dead letters of group billing" in shown
    assert "6/6" in shown
    assert "1 kept" in shown
    assert "not redriven: dead letter" in shown
    assert COLOUR.search(shown), shown  # a terminal gets colour...
    assert "\x1b[" not in out  # ...and stdout, a pipe here, the plain lines
    assert "redrove 5 dead letters of group billing" in out


async def test_no_color_leaves_the_bar_without_colour(js: JetStreamContext, nats_url: str) -> None:
    await dead_letters(js, 2)

    code, out, shown = await redrive_on_a_terminal(nats_url, NO_COLOR="1")

    assert code == 0, shown
    assert "2/2" in shown
    assert not COLOUR.search(shown), shown
    assert "redrove 2 dead letters of group billing" in out

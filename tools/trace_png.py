"""Draw one trace from Jaeger's query API as a waterfall PNG (the README's docs/trace.png).

    python tools/trace_png.py TRACE.json OUT.png

TRACE.json is what `GET /api/traces/<id>` or `GET /api/traces?service=...` answers; the
first trace (`data[0]`) is drawn: one row per span in tree order (a span under its first
reference, CHILD_OF or FOLLOWS_FROM), indented by depth, one colour per service, a bar from
start to end on a common time axis, labelled "service: operation" and with the duration.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948"]
ROW, PAD, INDENT, BAR_WIDTH, FONT_SIZE = 26, 16, 16, 560, 13
AXIS = 44  # header line + time axis, above the first row


@dataclass
class Span:
    span_id: str
    parent: str | None
    service: str
    operation: str
    kind: str
    start: int  # µs since the epoch
    duration: int  # µs
    children: list[Span] = field(default_factory=list)


def load_spans(trace: dict[str, Any]) -> list[Span]:
    """The spans of one Jaeger v1 JSON trace (`{"spans": [...], "processes": {...}}`)."""
    processes = trace["processes"]
    spans = []
    for raw in trace["spans"]:
        refs = raw.get("references") or []
        tags = {tag["key"]: tag["value"] for tag in raw.get("tags") or []}
        spans.append(
            Span(
                span_id=raw["spanID"],
                parent=refs[0]["spanID"] if refs else None,
                service=processes[raw["processID"]]["serviceName"],
                operation=raw["operationName"],
                kind=str(tags.get("span.kind", "")),
                start=int(raw["startTime"]),
                duration=int(raw["duration"]),
            )
        )
    return spans


def tree_order(spans: list[Span]) -> list[tuple[int, Span]]:
    """(depth, span) depth-first, siblings by start time; spans whose parent is missing
    from the trace are roots."""
    by_id = {span.span_id: span for span in spans}
    roots = []
    for span in sorted(spans, key=lambda s: s.start):
        parent = by_id.get(span.parent) if span.parent else None
        if parent is None or parent is span:
            roots.append(span)
        else:
            parent.children.append(span)
    ordered: list[tuple[int, Span]] = []
    stack = [(0, root) for root in reversed(roots)]
    seen: set[str] = set()
    while stack:
        depth, span = stack.pop()
        if span.span_id in seen:  # a reference cycle: draw each span once
            continue
        seen.add(span.span_id)
        ordered.append((depth, span))
        stack.extend((depth + 1, child) for child in reversed(span.children))
    return ordered


def tick_step(total_ms: float, ticks: int = 6) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving about `ticks` ticks."""
    raw = max(total_ms / ticks, 1e-3)
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def ms(us: float) -> str:
    value = us / 1000
    return (
        f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    )


def render(trace: dict[str, Any], out: Path) -> tuple[int, int]:
    """Draw `trace` into the PNG `out`; returns its (width, height)."""
    rows = tree_order(load_spans(trace))
    if not rows:
        raise ValueError("the trace has no spans")
    font = ImageFont.load_default(size=FONT_SIZE)
    small = ImageFont.load_default(size=FONT_SIZE - 2)
    colours: dict[str, str] = {}
    for _, span in rows:
        colours.setdefault(span.service, PALETTE[len(colours) % len(PALETTE)])
    labels = [f"{span.service}: {span.operation}" for _, span in rows]
    label_width = max(
        depth * INDENT + font.getlength(text) for (depth, _), text in zip(rows, labels, strict=True)
    )
    t0 = min(span.start for _, span in rows)
    total = max(max(span.start + span.duration for _, span in rows) - t0, 1)
    left = PAD + int(label_width) + PAD
    tail = int(max(small.getlength(f"{ms(s.duration)}  {s.kind}") for _, s in rows)) + PAD
    width = left + BAR_WIDTH + tail
    height = AXIS + len(rows) * ROW + PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def x_at(us: float) -> float:
        return left + BAR_WIDTH * us / total

    services = ", ".join(colours)
    title = f"trace {trace.get('traceID', '?')}: {len(rows)} spans, {ms(total)} ({services})"
    draw.text((PAD, 4), title, fill="black", font=font)
    step = tick_step(total / 1000)
    tick = 0.0
    while tick * 1000 <= total:
        x = x_at(tick * 1000)
        draw.line([(x, AXIS - 6), (x, height - PAD)], fill="#dddddd")
        text = f"{tick:g} ms"
        draw.text((x - small.getlength(text) / 2, AXIS - 22), text, fill="#555555", font=small)
        tick += step
    draw.line([(left, AXIS - 6), (left + BAR_WIDTH, AXIS - 6)], fill="#888888")
    for row, ((depth, span), label) in enumerate(zip(rows, labels, strict=True)):
        top = AXIS + row * ROW
        if row % 2:
            draw.rectangle([(0, top), (left - 4, top + ROW - 1)], fill="#f6f6f6")
        colour = colours[span.service]
        draw.text((PAD + depth * INDENT, top + 6), label, fill=colour, font=font)
        x0 = x_at(span.start - t0)
        x1 = max(x_at(span.start - t0 + span.duration), x0 + 2)
        draw.rectangle([(x0, top + 5), (x1, top + ROW - 6)], fill=colour)
        note = f"{ms(span.duration)}  {span.kind}".rstrip()
        note_x = (
            x1 + 4 if x1 + 4 + small.getlength(note) <= width else x0 - 4 - small.getlength(note)
        )
        draw.text((note_x, top + 7), note, fill="#333333", font=small)
    image.save(out, format="PNG")
    return width, height


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path, help="Jaeger /api/traces JSON")
    parser.add_argument("out", type=Path, help="PNG to write")
    args = parser.parse_args(argv)
    document = json.loads(args.trace.read_text())
    traces = document.get("data") or []
    if not traces:
        parser.error(f"{args.trace}: no trace in 'data'")
    width, height = render(traces[0], args.out)
    print(f"{args.out}: {width}x{height}, {len(traces[0]['spans'])} spans")


if __name__ == "__main__":
    main()

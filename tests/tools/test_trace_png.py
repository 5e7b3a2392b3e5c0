"""tools/trace_png.py: a waterfall PNG from Jaeger's /api/traces JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from tests.integration.conftest import REPO

SCRIPT = REPO / "tools" / "trace_png.py"


def _module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("trace_png", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


def _span(
    span_id: str, process: str, name: str, start: int, duration: int, **ref: str
) -> dict[str, Any]:
    references = [{"refType": ref["type"], "traceID": "t1", "spanID": ref["parent"]}] if ref else []
    return {
        "traceID": "t1",
        "spanID": span_id,
        "operationName": name,
        "references": references,
        "startTime": start,
        "duration": duration,
        "tags": [{"key": "span.kind", "type": "string", "value": "internal"}],
        "processID": process,
    }


TRACE = {
    "data": [
        {
            "traceID": "t1",
            "spans": [
                # Out of order, one FOLLOWS_FROM, one whose parent is not in the trace.
                _span(
                    "c",
                    "p2",
                    "process orders.OrderPlaced.o-1",
                    1_002_000,
                    3_000,
                    type="FOLLOWS_FROM",
                    parent="b",
                ),
                _span("a", "p1", "/jetgate.v1.EventGateway/Publish", 1_000_000, 1_500),
                _span(
                    "b",
                    "p1",
                    "publish orders.OrderPlaced.o-1",
                    1_000_200,
                    900,
                    type="CHILD_OF",
                    parent="a",
                ),
                _span("d", "p2", "orphan", 1_004_000, 10, type="CHILD_OF", parent="gone"),
            ],
            "processes": {
                "p1": {"serviceName": "jetgate-gateway", "tags": []},
                "p2": {"serviceName": "billing", "tags": []},
            },
            "warnings": None,
        }
    ]
}


def test_tree_order_follows_references_and_start_times(monkeypatch: pytest.MonkeyPatch) -> None:
    trace_png = _module(monkeypatch)
    rows = trace_png.tree_order(trace_png.load_spans(TRACE["data"][0]))
    assert [(depth, span.span_id) for depth, span in rows] == [
        (0, "a"),
        (1, "b"),
        (2, "c"),
        (0, "d"),
    ]


def test_renders_a_png(tmp_path: Path) -> None:
    source, out = tmp_path / "trace.json", tmp_path / "trace.png"
    source.write_text(json.dumps(TRACE))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(source), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 600 < width < 2000
        assert 4 * 26 < height < 400  # four rows of 26 px plus the axis
        colours = {colour for _, colour in image.convert("RGB").getcolors(1 << 20) or []}
    assert {(0x4E, 0x79, 0xA7), (0xF2, 0x8E, 0x2B)} <= colours  # one colour per service


def test_no_trace_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "empty.json"
    source.write_text(json.dumps({"data": []}))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(source), str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no trace" in done.stderr

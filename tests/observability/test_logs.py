"""observability.logs: the trace context on log records and in the log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from observability import configure_logging
from observability.logs import LOG_FORMAT, RepeatFilter, TraceContextFilter


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    """A private SDK provider (not the global one): its spans are valid and never exported."""
    sdk = TracerProvider(shutdown_on_exit=False)
    yield sdk
    sdk.shutdown()


def _record(message: str = "hello") -> logging.LogRecord:
    return logging.LogRecord("jetgate.test", logging.WARNING, __file__, 1, message, None, None)


def _filtered() -> logging.LogRecord:
    record = _record()
    assert TraceContextFilter().filter(record) is True
    return record


def test_inside_a_span_records_carry_its_ids(provider: TracerProvider) -> None:
    with provider.get_tracer("test").start_as_current_span("work") as span:
        record = _filtered()
    context = span.get_span_context()
    trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
    assert (record.trace_id, record.span_id) == (trace_id, span_id)
    assert record.trace_context == f" [trace_id={trace_id} span_id={span_id}]"


def test_a_child_span_gives_its_own_span_id(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("parent") as parent, tracer.start_as_current_span("child"):
        record = _filtered()
    assert record.trace_id == f"{parent.get_span_context().trace_id:032x}"
    assert record.span_id != f"{parent.get_span_context().span_id:016x}"
    assert len(record.span_id) == 16


def test_outside_a_span_the_fields_are_empty() -> None:
    record = _filtered()
    assert (record.trace_id, record.span_id, record.trace_context) == ("", "", "")


def test_an_unrecorded_span_of_the_api_gives_no_ids() -> None:
    # The no-op tracer's spans are invalid: no ids to show.
    with trace.NoOpTracer().start_as_current_span("noop"):
        record = _filtered()
    assert (record.trace_id, record.span_id, record.trace_context) == ("", "", "")


def test_the_log_line_shows_the_context_only_inside_a_span(provider: TracerProvider) -> None:
    formatter = logging.Formatter(LOG_FORMAT)
    plain = formatter.format(_filtered())
    assert plain.endswith(" WARNING jetgate.test: hello")
    with provider.get_tracer("test").start_as_current_span("work") as span:
        line = formatter.format(_filtered())
    context = span.get_span_context()
    assert line.endswith(
        f" WARNING jetgate.test [trace_id={context.trace_id:032x} "
        f"span_id={context.span_id:016x}]: hello"
    )


def test_configure_logging_installs_a_filtered_stderr_handler(provider: TracerProvider) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = []  # basicConfig does nothing while the root logger has handlers
    try:
        configure_logging("debug")
        (handler,) = root.handlers
        installed = root.handlers[:]
        level = root.level
    finally:
        for added in root.handlers:
            added.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
    assert level == logging.DEBUG
    assert installed == [handler]
    assert isinstance(handler, logging.StreamHandler)
    assert any(isinstance(f, TraceContextFilter) for f in handler.filters)
    assert handler.formatter is not None
    record = _record()
    with provider.get_tracer("test").start_as_current_span("work") as span:
        assert handler.filter(record)
    assert f"trace_id={span.get_span_context().trace_id:032x}" in handler.format(record)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _sdk_record(message: str = "Queue full, dropping %s.") -> logging.LogRecord:
    name = "opentelemetry.sdk._shared_internal"
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, ("span",), None)


def test_repeat_filter_passes_an_opentelemetry_message_once_per_interval() -> None:
    clock = Clock()
    repeats = RepeatFilter(interval=10.0, clock=clock)
    assert repeats.filter(_sdk_record())
    assert not any(repeats.filter(_sdk_record()) for _ in range(500))
    assert repeats.filter(_sdk_record("Exception while exporting %s."))  # another message
    clock.now += 10.0
    record = _sdk_record()
    assert repeats.filter(record)
    assert record.getMessage() == "Queue full, dropping span. (500 more like this in 10s)"
    clock.now += 10.0
    quiet = _sdk_record()
    assert repeats.filter(quiet)
    assert quiet.getMessage() == "Queue full, dropping span."


def test_repeat_filter_leaves_other_loggers_alone() -> None:
    repeats = RepeatFilter(clock=Clock())
    assert all(repeats.filter(_record()) for _ in range(10))


def test_configure_logging_holds_back_a_storm_of_sdk_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = []
    try:
        configure_logging("info")
        sdk = logging.getLogger("opentelemetry.sdk._shared_internal")
        for _ in range(1000):
            sdk.warning("Queue full, dropping %s.", "span")
    finally:
        for added in root.handlers:
            added.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
    assert capsys.readouterr().err.count("Queue full, dropping span.") == 1

"""observability.setup.configure: which providers the OTEL_* variables give.

`configure` reads os.environ (as OpenTelemetry itself does); every test starts with no
`OTEL_*` variable set and `configure(..., environ=...)` here sets some through monkeypatch.
"""

from __future__ import annotations

import asyncio
import os
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, ParentBased
from prometheus_client.parser import text_string_to_metric_families

from observability import setup
from observability.prometheus import MetricsServer
from observability.setup import GATEWAY_SERVICE, Telemetry, TelemetryConfigError

# Never contacted: no span is ever ended through these providers.
ENDPOINT = "http://127.0.0.1:1"


_patches: list[pytest.MonkeyPatch] = []


@pytest.fixture(autouse=True)
def no_otel_variables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    _patches.append(monkeypatch)
    yield
    _patches.clear()


def configure(service: str, *, environ: dict[str, str] | None = None, **kwargs: Any) -> Telemetry:
    """`setup.configure` with the `OTEL_*` variables of `environ` set for this test."""
    for name, value in (environ or {}).items():
        _patches[-1].setenv(name, value)
    return setup.configure(service, **kwargs)


@pytest.fixture
def made() -> Iterator[list[Telemetry]]:
    """Telemetry objects the test registers here are shut down after it."""
    telemetries: list[Telemetry] = []
    yield telemetries
    for telemetry in telemetries:
        telemetry.shutdown()


def _configure(
    made: list[Telemetry], service: str = GATEWAY_SERVICE, **kwargs: object
) -> Telemetry:
    telemetry = configure(service, **kwargs)  # type: ignore[arg-type]
    made.append(telemetry)
    return telemetry


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_without_an_endpoint_or_metrics_address_everything_is_off(made: list[Telemetry]) -> None:
    telemetry = _configure(made, environ={})
    assert telemetry == Telemetry()
    assert (telemetry.tracer_provider, telemetry.meter_provider) == (None, None)
    assert telemetry.metrics_server is None


def test_an_otlp_endpoint_turns_tracing_on_with_the_default_service_name(
    made: list[Telemetry],
) -> None:
    telemetry = _configure(made, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT})
    provider = telemetry.tracer_provider
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes[SERVICE_NAME] == "jetgate-gateway"
    assert telemetry.meter_provider is None  # metrics go to Prometheus only


def test_the_traces_endpoint_alone_turns_tracing_on(made: list[Telemetry]) -> None:
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{ENDPOINT}/v1/traces"}
    telemetry = _configure(made, "billing", environ=environ)
    assert isinstance(telemetry.tracer_provider, TracerProvider)
    assert telemetry.tracer_provider.resource.attributes[SERVICE_NAME] == "billing"


def test_otel_service_name_overrides_the_default(made: list[Telemetry]) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_SERVICE_NAME": "checkout-gw"}
    provider = _configure(made, environ=environ).tracer_provider
    assert provider is not None
    assert provider.resource.attributes[SERVICE_NAME] == "checkout-gw"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_both_otlp_protocols_are_accepted(made: list[Telemetry], protocol: str) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    assert isinstance(_configure(made, environ=environ).tracer_provider, TracerProvider)


@pytest.mark.parametrize("exporters", ["none", "otlp,none", " None "])
def test_traces_exporter_none_turns_tracing_off(made: list[Telemetry], exporters: str) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_TRACES_EXPORTER": exporters}
    assert _configure(made, environ=environ).tracer_provider is None


def test_the_console_exporter_needs_no_endpoint(made: list[Telemetry]) -> None:
    telemetry = _configure(made, environ={"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(telemetry.tracer_provider, TracerProvider)


def test_an_unknown_traces_exporter_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(TelemetryConfigError, match="OTEL_TRACES_EXPORTER") as caught:
        configure(GATEWAY_SERVICE, environ={"OTEL_TRACES_EXPORTER": "zipkin"})
    assert "zipkin" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_an_unknown_traces_protocol_is_a_config_error_naming_the_variable() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
    }
    with pytest.raises(TelemetryConfigError, match="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") as caught:
        configure(GATEWAY_SERVICE, environ=environ)
    assert "http/json" in str(caught.value)


def test_a_bad_general_protocol_names_the_variable_that_was_set() -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    with pytest.raises(TelemetryConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        configure(GATEWAY_SERVICE, environ=environ)


@pytest.mark.parametrize("value", ["true", "TRUE", " True "])
def test_sdk_disabled_turns_everything_off(made: list[Telemetry], value: str) -> None:
    port = _free_port()
    environ = {
        "OTEL_SDK_DISABLED": value,
        "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
        "OTEL_TRACES_EXPORTER": "console",
    }
    telemetry = _configure(made, metrics_listen=f"127.0.0.1:{port}", environ=environ)
    assert telemetry == Telemetry()
    MetricsServer.start(f"127.0.0.1:{port}").close()  # the port was never taken


def test_sdk_disabled_false_keeps_tracing_on(made: list[Telemetry]) -> None:
    environ = {"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"}
    assert _configure(made, environ=environ).tracer_provider is not None


def test_the_default_sampler_follows_the_parent_and_samples_roots(made: list[Telemetry]) -> None:
    provider = _configure(made, environ={"OTEL_TRACES_EXPORTER": "console"}).tracer_provider
    assert provider is not None
    assert isinstance(provider.sampler, ParentBased)
    assert provider.sampler.get_description().startswith("ParentBased{root:AlwaysOnSampler")
    assert (
        provider.sampler.should_sample(None, 0x1234, "root").decision == Decision.RECORD_AND_SAMPLE
    )


def test_the_sampler_variable_is_honoured(made: list[Telemetry]) -> None:
    environ = {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_off"}
    provider = _configure(made, environ=environ).tracer_provider
    assert provider is not None
    assert provider.sampler.get_description() == "AlwaysOffSampler"
    assert provider.sampler.should_sample(None, 0x1234, "root").decision == Decision.DROP


def test_resource_attributes_are_added(made: list[Telemetry]) -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }
    provider = _configure(made, environ=environ).tracer_provider
    assert provider is not None
    assert provider.resource.attributes.get("deployment.environment") == "test"


async def test_metrics_listen_serves_prometheus_and_shutdown_frees_the_port() -> None:
    telemetry = configure("billing", metrics_listen="127.0.0.1:0", environ={})
    try:
        assert telemetry.tracer_provider is None
        assert telemetry.meter_provider is not None
        server = telemetry.metrics_server
        assert server is not None
        assert server.host == "127.0.0.1"
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        counter = telemetry.meter_provider.get_meter("test").create_counter("test.hits")
        counter.add(3)
        status, body = await _get(server.url)
        assert status == 200
        samples = {s.name: s for f in text_string_to_metric_families(body) for s in f.samples}
        assert samples["test_hits_total"].value == 3
        assert samples["target_info"].labels["service_name"] == "billing"
    finally:
        telemetry.shutdown()
    MetricsServer.start(f"127.0.0.1:{server.port}").close()


async def test_metrics_port_tries_moves_past_a_taken_port(made: list[Telemetry]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        telemetry = _configure(
            made, metrics_listen=f"127.0.0.1:{port}", metrics_port_tries=50, environ={}
        )
    assert telemetry.metrics_server is not None
    assert port < telemetry.metrics_server.port < port + 50


def test_a_taken_metrics_port_is_an_os_error_with_one_try() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="already in use"):
            configure(GATEWAY_SERVICE, metrics_listen=f"127.0.0.1:{port}", environ={})


def test_a_config_error_leaves_no_metrics_server_running(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[MetricsServer] = []

    class Recording(MetricsServer):
        @classmethod
        def start(cls, listen: str, *, tries: int = 1) -> MetricsServer:
            server = MetricsServer.start(listen, tries=tries)
            started.append(server)
            return server

    monkeypatch.setattr(setup, "MetricsServer", Recording)
    port = _free_port()
    environ = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "bogus"}
    try:
        with pytest.raises(TelemetryConfigError, match="OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"):
            configure(GATEWAY_SERVICE, metrics_listen=f"127.0.0.1:{port}", environ=environ)
        MetricsServer.start(f"127.0.0.1:{port}").close()  # OSError while the leak runs
    finally:
        for server in started:
            server.close()


def test_shutdown_without_providers_does_nothing() -> None:
    Telemetry().shutdown()


async def _get(url: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()

    return await asyncio.to_thread(get)

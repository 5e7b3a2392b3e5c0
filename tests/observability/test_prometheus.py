"""observability.prometheus.MetricsServer: binding, port fallback, scrapes, closing."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client.parser import text_string_to_metric_families

from observability.prometheus import MetricsServer


@pytest.fixture
def servers() -> Iterator[list[MetricsServer]]:
    """Servers the test registers here are closed after it."""
    started: list[MetricsServer] = []
    yield started
    for server in started:
        server.close()


def _start(servers: list[MetricsServer], listen: str, tries: int = 1) -> MetricsServer:
    server = MetricsServer.start(listen, tries=tries)
    servers.append(server)
    return server


def _taken_pair() -> tuple[socket.socket, int]:
    """A listening socket on port P where P + 1 looked free a moment ago."""
    for _ in range(20):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                taken.close()
                continue
        return taken, port
    raise AssertionError("no two consecutive free ports found")


async def _scrape(url: str) -> tuple[int, str, str]:
    def get() -> tuple[int, str, str]:
        with urllib.request.urlopen(url, timeout=5) as response:
            content_type = response.headers.get("Content-Type", "")
            return response.status, content_type, response.read().decode()

    return await asyncio.to_thread(get)


async def test_port_zero_binds_a_free_port_and_serves_the_reader(
    servers: list[MetricsServer],
) -> None:
    server = _start(servers, "127.0.0.1:0")
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    provider = MeterProvider(metric_readers=[server.reader], shutdown_on_exit=False)
    try:
        provider.get_meter("test").create_counter("widgets.made", unit="{widget}").add(2)
        status, content_type, body = await _scrape(server.url)
        assert status == 200
        assert content_type.startswith("text/plain")
        values = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
        assert values["widgets_made_total"] == 2
        # Any path is answered.
        _, _, other = await _scrape(f"http://127.0.0.1:{server.port}/")
        assert "widgets_made_total" in other
    finally:
        provider.shutdown()


async def test_each_server_has_its_own_registry(servers: list[MetricsServer]) -> None:
    first, second = _start(servers, "127.0.0.1:0"), _start(servers, "127.0.0.1:0")
    provider = MeterProvider(metric_readers=[first.reader], shutdown_on_exit=False)
    try:
        provider.get_meter("test").create_counter("only.first").add(1)
        _, _, body = await _scrape(first.url)
        assert "only_first_total" in body
        _, _, other = await _scrape(second.url)
        assert "only_first" not in other
    finally:
        provider.shutdown()


def test_with_several_tries_a_taken_port_moves_to_the_next(servers: list[MetricsServer]) -> None:
    taken, port = _taken_pair()
    with taken:
        server = _start(servers, f"127.0.0.1:{port}", tries=3)
    assert server.port == port + 1


def test_with_one_try_a_taken_port_raises(servers: list[MetricsServer]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="already in use"):
            _start(servers, f"127.0.0.1:{port}", tries=1)
    assert servers == []


def test_close_frees_the_port(servers: list[MetricsServer]) -> None:
    server = MetricsServer.start("127.0.0.1:0")
    port = server.port
    try:
        with pytest.raises(OSError, match="already in use"):
            _start(servers, f"127.0.0.1:{port}")
    finally:
        server.close()
    again = _start(servers, f"127.0.0.1:{port}")
    assert again.port == port


@pytest.mark.parametrize(
    "listen", ["127.0.0.1", "127.0.0.1:", "127.0.0.1:http", ":-1", "", "localhost:9x"]
)
def test_a_bad_address_is_a_value_error(servers: list[MetricsServer], listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        _start(servers, listen)


def test_an_empty_host_means_loopback(servers: list[MetricsServer]) -> None:
    server = _start(servers, ":0")
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"


def test_an_ipv6_host_is_bracketed_in_the_url(servers: list[MetricsServer]) -> None:
    try:
        server = _start(servers, "[::1]:0")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    assert server.host == "::1"
    assert server.url == f"http://[::1]:{server.port}/metrics"


def test_a_port_out_of_range_is_a_value_error(servers: list[MetricsServer]) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        _start(servers, "127.0.0.1:99999")

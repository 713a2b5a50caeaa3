"""A real mosquitto per test (sim_hw.broker): `broker` with TLS, client certificates and
the swapnet ACL (stations ST-A and ST-B, back end "backend"); `plain_broker` without TLS,
anonymous, no ACL. Loaded by tests/integration/conftest.py (a module of the installed
package, so a conftest copied elsewhere, as tests/integration/test_rig.py does, still finds it;
pytest is a test dependency: only tests import this).

mosquitto missing is a failure, not a skip: CI installs it (scripts/_system_deps.sh), and
a suite that silently skips the broker tests would pass without testing the link."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sim_hw.broker import Broker, find_mosquitto

STATIONS = ("ST-A", "ST-B")
BACKEND = "backend"


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: these tests run a real broker. Install it "
                    "(`apt-get install -y mosquitto`, or ./scripts/test as root does) or set "
                    "SWAP_MOSQUITTO to its path", pytrace=False)


def _run(broker: Broker) -> Iterator[Broker]:
    broker.start()
    try:
        yield broker
    finally:
        try:
            broker.stop()
        finally:
            broker.kill()  # nothing left behind even if the graceful stop failed
        print(f"mosquitto log ({broker.log_file}):\n{broker.log_tail(20)}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """TLS on a free loopback port: broker.ca_file, broker.client_files("ST-A" | "ST-B" |
    "backend") -> (cert, key), broker.host/port/url, stop()/kill()/restart()."""
    _require_mosquitto()
    yield from _run(Broker(tmp_path / "broker", stations=STATIONS, backends=(BACKEND,)))


@pytest.fixture
def plain_broker(tmp_path: Path) -> Iterator[Broker]:
    """Plain MQTT on a free loopback port, anyone may connect and publish anything."""
    _require_mosquitto()
    yield from _run(Broker(tmp_path / "plain-broker", tls=False))

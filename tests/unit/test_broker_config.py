"""The broker's generated configuration (sim_hw.broker) and the production example
(deploy/mosquitto/) agree; no mosquitto needed (tests/integration/test_broker_acl.py runs it)."""

from __future__ import annotations

import stat
from pathlib import Path

from sim_hw.broker import Broker, acl_rules, conf_rules
from station.cloud.topics import COMMANDS, STATION_LEAVES
from station.config import CloudSection

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for rule in conf_rules(text):
        key, _, value = rule.partition(" ")
        out.setdefault(key, []).append(value.strip())
    return out


def test_the_deployed_acl_is_the_one_the_tests_run() -> None:
    deployed = conf_rules((DEPLOY / "swapnet.acl").read_text())
    assert deployed == acl_rules("swapnet/v1", ("swapnet-backend",)), (
        "deploy/mosquitto/swapnet.acl and sim_hw.broker.acl_rules drifted apart")


def test_a_station_writes_its_own_leaves_and_reads_only_its_commands() -> None:
    rules = acl_rules("net/v9", ("be1", "be2"))
    patterns = [r for r in rules if r.startswith("pattern ")]
    assert patterns == [f"pattern write net/v9/%u/{leaf}" for leaf in STATION_LEAVES] + [
        f"pattern read net/v9/%u/{COMMANDS}"]
    assert COMMANDS not in STATION_LEAVES  # a station never writes commands
    assert rules[len(patterns):] == [
        "user be1", "topic read net/v9/#", "topic write net/v9/+/commands",
        "user be2", "topic read net/v9/#", "topic write net/v9/+/commands"]


def test_the_tls_conf(tmp_path: Path) -> None:
    b = Broker(tmp_path, stations=("ST-A",), port=18883)
    s = settings(b.conf_file.read_text())
    assert s["listener"] == ["18883 127.0.0.1"]
    assert s["tls_version"] == ["tlsv1.2"]
    assert s["require_certificate"] == ["true"] and s["use_identity_as_username"] == ["true"]
    assert s["allow_anonymous"] == ["false"]
    assert conf_rules(Path(s["acl_file"][0]).read_text()) == acl_rules("swapnet/v1",
                                                                     ("backend",))
    assert s["persistence"] == ["true"] and s["autosave_interval"] == ["1"]
    assert int(s["max_inflight_messages"][0]) >= CloudSection().max_in_flight
    assert b.url == "mqtts://127.0.0.1:18883"
    keys = [Path(s["keyfile"][0]), b.client_files("ST-A")[1], b.client_files("backend")[1],
            tmp_path / "ca" / "ca.key"]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_the_plain_conf_has_no_tls_and_no_acl(tmp_path: Path) -> None:
    b = Broker(tmp_path, tls=False, persistence=False)
    s = settings(b.conf_file.read_text())
    assert s["allow_anonymous"] == ["true"] and s["persistence"] == ["false"]
    assert not {"acl_file", "cafile", "certfile", "require_certificate"} & s.keys()
    assert b.url.startswith("mqtt://127.0.0.1:")


def test_the_production_conf_is_tls_with_client_certificates_and_the_acl() -> None:
    s = settings((DEPLOY / "swapnet.conf").read_text())
    assert s["listener"] == ["8883"]
    assert s["tls_version"] == ["tlsv1.2"]
    assert s["require_certificate"] == ["true"] and s["use_identity_as_username"] == ["true"]
    assert s["allow_anonymous"] == ["false"]
    assert s["acl_file"] == ["/etc/mosquitto/swapnet.acl"] and s["persistence"] == ["true"]
    # the station's replay window must not be throttled by the broker's Receive Maximum
    assert int(s["max_inflight_messages"][0]) >= CloudSection().max_in_flight
    # a command at the station's own size ceiling still reaches it (to be answered too_large)
    ceiling = CloudSection.model_fields["max_command_bytes"].metadata
    assert int(s["max_packet_size"][0]) > max(getattr(m, "le", 0) for m in ceiling)


def test_a_template_keeps_its_settings_but_not_its_paths(tmp_path: Path) -> None:
    b = Broker(tmp_path, stations=("ST-A",), conf_template=DEPLOY / "swapnet.conf")
    text = b.conf_file.read_text()
    assert "/etc/" not in text and "/var/" not in text and "syslog" not in text
    s = settings(text)
    assert len(s["listener"]) == 1 and s["listener"][0].endswith(" 127.0.0.1")
    assert s["max_inflight_messages"] == ["200"] and s["tls_version"] == ["tlsv1.2"]
    assert s["acl_file"] == [str(b.acl_file)]

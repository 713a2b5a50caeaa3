"""Simulator configuration: defaults, the generated rack, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim_hw.config import (
    SimConfig,
    SimConfigError,
    load_sim_config,
    parse_sim_config,
    with_overrides,
)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_work_without_a_file() -> None:
    c = SimConfig()
    assert c.speed == 1.0
    assert c.modbus.host == "127.0.0.1" and c.modbus.port == 5020
    assert c.can.interface == "virtual" and c.can.channel == "swapstation"
    assert c.station.slots == 13 and c.station.bolt_count == 10
    assert c.station.swap_height_mm == 500 and c.station.shuttle_car_mm == 3000
    assert c.ctrl_heartbeat_timeout_s == 1.0
    assert c.timing.total() == pytest.approx(144.0)  # NIO PSS 4.0


def test_generated_rack_is_deterministic_and_leaves_one_slot_free() -> None:
    rack = SimConfig(seed=7).initial_rack()
    assert [p.slot for p in rack] == list(range(1, 13))
    assert [p.family for p in rack[:4]] == [20, 25, 20, 25]
    assert [p.chemistry for p in rack[:4]] == ["nmc", "lfp", "sodium_ion", "nmc"]
    assert all(85.0 <= p.soc <= 100.0 for p in rack)
    assert len({p.serial for p in rack}) == 12
    assert rack == SimConfig(seed=7).initial_rack()
    assert rack != SimConfig(seed=8).initial_rack()


def test_explicit_rack_from_file(tmp_path: Path) -> None:
    f = tmp_path / "sim.toml"
    f.write_text(
        """
[sim]
speed = 50
vehicles = 3
[sim.station]
slots = 4
[[sim.rack_pack]]
slot = 2
serial = 4242
family = 25
chemistry = "lfp"
soc = 91.5
"""
    )
    c = load_sim_config(f)
    assert c.speed == 50 and c.vehicles == 3
    assert [(p.slot, p.serial, p.family) for p in c.initial_rack()] == [(2, 4242, 25)]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[sim]\nspeed = 0\n", "sim.speed"),
        ("[sim.station]\nslots = 0\n", "sim.station.slots"),
        ("[sim.can]\ninterface = 'pcan'\n", "sim.can.interface"),
        ("[sim.timing]\nlift = -1\n", "sim.timing.lift"),
        ("[sim]\nspeeed = 2\n", "sim.speeed"),
        ("[simulator]\nspeed = 2\n", "simulator"),
        (
            "[[sim.rack_pack]]\nslot = 1\nserial = 1\nfamily = 30\nchemistry = 'nmc'\nsoc = 50\n",
            "sim.rack_pack.0.family",
        ),
        (
            "[sim.station]\nslots = 2\n[[sim.rack_pack]]\nslot = 3\nserial = 1\nfamily = 20\n"
            "chemistry = 'nmc'\nsoc = 50\n",
            "sim.rack_pack.0.slot",
        ),
        ("[sim]\nvins = ['SHORT']\n", "sim.vins.0"),
        ("[sim]\nvins = ['LSJA24U61NG12345*']\n", "sim.vins.0"),  # '*' ends the field
        ("[sim]\nvins = ['LSJA24U61NG12345\u00e9']\n", "sim.vins.0"),  # ASCII only
        ("[sim.arrivals]\nschedule = [{at_s = 1, family = 20, chemistry = 'nmc', soc = 10,"
         " temp_c = 20, vin = 'X'}]\n", "sim.arrivals.schedule.0.vin"),
        (  # a DBC chemistry the simulator has no cell model for
            "[[sim.rack_pack]]\nslot = 1\nserial = 1\nfamily = 20\nchemistry = 'lto'\nsoc = 50\n",
            "sim.rack_pack.0.chemistry",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(SimConfigError, match=key):
        load_sim_config(f)


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(SimConfigError, match="cannot read"):
        load_sim_config(tmp_path / "missing.toml")
    f = tmp_path / "broken.toml"
    f.write_text("[sim\n")
    with pytest.raises(SimConfigError, match="not valid TOML"):
        load_sim_config(f)


def test_vins_may_break_iso_3779_so_a_bench_can_send_a_bad_one() -> None:
    c = parse_sim_config({"sim": {"vins": ["LSJA24U61NG12345O"], "vin_broadcast": False}})
    assert c.vins == ["LSJA24U61NG12345O"] and c.vin_broadcast is False
    assert SimConfig().vin_broadcast is True and SimConfig().vins == []


def test_overrides_are_validated() -> None:
    c = with_overrides(SimConfig(), speed=10.0, vehicles=None)
    assert c.speed == 10.0 and c.vehicles == 0
    with pytest.raises(SimConfigError, match=r"sim\.speed"):
        with_overrides(c, speed=-1.0)


def test_shipped_example_config_loads() -> None:
    c = load_sim_config(REPO / "deploy" / "swap-sim.toml")
    assert c.can.interface == "udp_multicast" and c.can.channel == "239.74.163.2"
    assert c.modbus.port == 5020 and c.speed == 1.0 and c.vehicles == 0


def test_cli_config_error_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sim_hw.cli import main

    f = tmp_path / "bad.toml"
    f.write_text("[sim.modbus]\nport = 70000\n")
    assert main(["--config", str(f)]) == 2
    assert "sim.modbus.port" in capsys.readouterr().err
    assert main(["--speed", "0"]) == 2
    assert "sim.speed" in capsys.readouterr().err


def test_generated_rack_uses_every_simulated_chemistry() -> None:
    from sim_hw.packs import CHEMISTRIES

    rack = SimConfig(seed=3).initial_rack()
    assert {p.chemistry for p in rack} == set(CHEMISTRIES)


# ---- the PLC over OPC UA -----------------------------------------------------------------

def test_opcua_defaults_are_secure_and_the_protocol_is_modbus() -> None:
    c = SimConfig()
    assert c.plc_protocol == "modbus"
    o = c.opcua
    assert (o.host, o.port, o.path) == ("127.0.0.1", 4840, "/swapstation")
    assert o.policies == ["Basic256Sha256", "Aes256Sha256RsaPss"] and "None" not in o.policies
    assert o.policy_types() == ["Basic256Sha256_SignAndEncrypt",
                                "Aes256Sha256RsaPss_SignAndEncrypt"]
    assert o.node_map is None and o.pki_dir is None and o.trust_any_client
    assert o.users == {} and o.certificate_valid_s is None and o.scan_s == 0.005


def test_opcua_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "sim.toml"
    f.write_text('[sim]\nplc_protocol = "opcua"\n[sim.opcua]\nport = 0\n'
                 'policies = ["None", "Basic256Sha256_Sign", "Aes128Sha256RsaOaep"]\n'
                 'trust_any_client = false\nusers = { operator = "pw" }\n')
    c = load_sim_config(f)
    assert c.plc_protocol == "opcua" and c.opcua.port == 0 and not c.opcua.trust_any_client
    assert c.opcua.policy_types() == ["NoSecurity", "Basic256Sha256_Sign",
                                      "Aes128Sha256RsaOaep_SignAndEncrypt"]
    assert c.opcua.users == {"operator": "pw"}


def test_opcua_policy_names_are_asyncuas() -> None:
    from asyncua import ua

    from sim_hw.config import OPCUA_MODES, OPCUA_POLICY_BASES, opcua_policy_type

    for base in OPCUA_POLICY_BASES:
        for name in (base, *(f"{base}_{m}" for m in OPCUA_MODES)):
            assert opcua_policy_type(name) in ua.SecurityPolicyType.__members__
    assert opcua_policy_type("None") == ua.SecurityPolicyType.NoSecurity.name


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[sim]\nplc_protocol = 'profinet'\n", "sim.plc_protocol"),
        ("[sim.opcua]\nport = 70000\n", "sim.opcua.port"),
        ("[sim.opcua]\npolicies = ['Basic512']\n", "sim.opcua.policies"),
        ("[sim.opcua]\npolicies = ['Basic256Sha256_Encrypt']\n", "sim.opcua.policies"),
        ("[sim.opcua]\npolicies = []\n", "sim.opcua.policies"),
        ("[sim.opcua]\npolicies = ['Basic256Sha256', 'Basic256Sha256_SignAndEncrypt']\n",
         "sim.opcua.policies"),
        ("[sim.opcua]\nusers = { operator = '' }\n", "sim.opcua.users"),
        ("[sim.opcua]\nusers = { '' = 'pw' }\n", "sim.opcua.users"),
        ("[sim.opcua]\npath = 'no-slash'\n", "sim.opcua.path"),
        ("[sim.opcua]\nscan_s = 0\n", "sim.opcua.scan_s"),
        ("[sim.opcua]\ncertificate_valid_s = 0\n", "sim.opcua.certificate_valid_s"),
        ("[sim.opcua]\nsecurity = 'high'\n", "sim.opcua.security"),
    ],
)
def test_bad_opcua_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(SimConfigError, match=key):
        load_sim_config(f)


def test_cli_plc_and_opcua_port_override(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from sim_hw.cli import main

    assert main(["--plc", "opcua", "--opcua-port", "70000"]) == 2
    assert "sim.opcua.port" in capsys.readouterr().err
    f = tmp_path / "sim.toml"
    f.write_text('[sim]\nplc_protocol = "opcua"\n[sim.opcua]\nnode_map = "'
                 f'{tmp_path / "missing.toml"}"\n')
    assert main(["--config", str(f)]) == 2
    assert "missing.toml" in capsys.readouterr().err

"""Configuration: defaults run the simulated station; a bad file names the key and the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from station.config import ConfigError, OpcUaSection, StationConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_example_files_load() -> None:
    plc = StationConfig().plc
    assert plc.protocol == "modbus" and plc.link_section().port == 5020  # type: ignore[attr-defined]
    cfg = load_config(ROOT / "deploy" / "swapd.toml")
    assert cfg.can.interface == "udp_multicast"
    assert cfg.chemistry["sodium_ion"].charge_temp_min_c < 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[plc.modbus]\nport = "five"\n', "plc.modbus.port: Input should be a valid integer"),
        ("[plc]\nprot = 502\n", "plc.prot: unknown key"),
        ("[plc.modbus]\nprot = 502\n", "plc.modbus.prot: unknown key"),
        ("[plc]\nport = 502\n", "'port' is a key of protocol 'modbus': it belongs in "
         "[plc.modbus]"),
        ('[plc]\nprotocol = "profinet"\n', "plc.protocol: Input should be 'modbus'"),
        ("[sequence.timeouts]\nlfit = 30\n", "timeouts.lfit: no such step"),
        ("[sequence.timeouts]\nlift = 0\n", "timeouts.lift: 0"),
        ("[charging]\nstation_power_cap_kw = -5\n", "charging.station_power_cap_kw"),
        ("[can]\nidentity_timeout_s = 3\n", "can.identity_timeout_s: unknown key"),
        ("[plc]\nstale_after_s = inf\n", "plc.stale_after_s: Input should be a finite number"),
        ("[pack_safety]\nmin_insulation_kohm = nan\n", "Input should be a finite number"),
        ("[api]\nsocket_mode = 0o666\n", "world-writable"),
        ("[can]\ninterface = \"pcan\"\n", "can.interface: Input should be"),
        ("[sequence]\nlock_torque_nm = [130, 110]\n", "lock_torque_nm: lower bound"),
        ("[selection]\nmin_soc_pct = 120\n", "selection.min_soc_pct"),
        ("[plc\nport = 1\n", "not valid TOML"),
    ],
)
def test_bad_file_names_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert expected in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml")


def _swapd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "station.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_daemon_refuses_to_start_on_bad_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[plc.modbus]\nport = 70000\nbogus = true\n")
    r = _swapd("--config", str(f))
    assert r.returncode == 2
    assert "plc.modbus.port" in r.stderr and "plc.modbus.bogus: unknown key" in r.stderr
    r = _swapd("--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_step_timeouts_default_from_the_step_rows_and_override_by_name() -> None:
    from station.config import SequenceSection
    from station.sequence import STEPS_BY_NAME

    seq = SequenceSection(timeouts={"lift": 12.0})
    assert seq.timeout("lift") == 12.0
    assert seq.timeout("release") == STEPS_BY_NAME["release"].timeout_s


def test_a_section_or_key_of_another_protocol_is_named() -> None:
    with pytest.raises(ValueError, match=r"section of protocol 'opcua', but plc\.protocol is "
                                         r"'modbus'"):
        StationConfig.model_validate({"plc": {"protocol": "modbus", "opcua": {}}})
    with pytest.raises(ValueError, match=r"section of protocol 'modbus', but plc\.protocol is "
                                         r"'opcua'"):
        StationConfig.model_validate({"plc": {"protocol": "opcua", "modbus": {}}})
    with pytest.raises(ValueError, match="'endpoint' is a key of protocol 'opcua'"):
        StationConfig.model_validate({"plc": {"endpoint": "opc.tcp://x:4840"}})
    with pytest.raises(ValueError, match="'poll_period_s' is a key of protocol 'modbus'"):
        StationConfig.model_validate({"plc": {"protocol": "opcua", "poll_period_s": 0.1}})


def test_opcua_is_secure_unless_the_file_says_otherwise() -> None:
    cfg = StationConfig.model_validate({"plc": {"protocol": "opcua"}})
    section = cfg.plc.link_section()
    assert isinstance(section, OpcUaSection)
    assert (section.security_policy, section.security_mode) == ("Basic256Sha256",
                                                                "SignAndEncrypt")
    with pytest.raises(ValueError, match="allow_insecure"):
        StationConfig.model_validate(
            {"plc": {"protocol": "opcua", "opcua": {"security_policy": "None"}}})
    ok = StationConfig.model_validate({"plc": {"protocol": "opcua", "opcua": {
        "security_policy": "None", "allow_insecure": True}}})
    assert ok.plc.endpoint == "opc.tcp://127.0.0.1:4840"
    with pytest.raises(ValueError, match="password"):  # a password in the clear: never
        StationConfig.model_validate({"plc": {"protocol": "opcua", "opcua": {
            "security_policy": "None", "allow_insecure": True, "username": "swapd",
            "password_file": "/etc/swapd/opcua.password"}}})
    with pytest.raises(ValueError, match="go together"):
        StationConfig.model_validate({"plc": {"protocol": "opcua", "opcua": {
            "username": "swapd"}}})
    for bad in ("http://plc:4840", "opc.tcp://plc:port", "opc.tcp://pl c"):
        with pytest.raises(ValueError, match="endpoint"):
            StationConfig.model_validate({"plc": {"protocol": "opcua", "opcua": {
                "endpoint": bad}}})


def test_a_subscription_quieter_than_staleness_allows_is_refused() -> None:
    # keep-alive every 50 x 10 ms = 0.5 s: a quiet but healthy PLC would look dead
    with pytest.raises(ValueError, match="keepalive_count"):
        StationConfig.model_validate({"plc": {"protocol": "opcua", "opcua": {
            "keepalive_count": 50}}})


def test_a_broken_contract_or_dbc_file_stops_the_daemon(tmp_path: Path) -> None:
    bad_map = tmp_path / "map.toml"
    bad_map.write_text("[device]\nunit_id = 1\n")
    f = tmp_path / "swapd.toml"
    f.write_text(f'[plc.modbus]\nregister_map = "{bad_map}"\n')
    r = _swapd("check-config", str(f))
    assert r.returncode == 2 and "[plc]" in r.stderr and "map.toml" in r.stderr
    bad_dbc = tmp_path / "bad.dbc"
    bad_dbc.write_text("VERSION \"x\"\nBO_ nonsense\n")
    f.write_text(f'[can]\ndbc = "{bad_dbc}"\n')
    r = _swapd("--config", str(f))
    assert r.returncode == 2 and "[can] dbc" in r.stderr


# ---- issue 7, items 7-9: a configuration that would disable safety is refused ----------

def _check_config(tmp_path: Path, text: str | bytes) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "swapd.toml"
    if isinstance(text, bytes):
        f.write_bytes(text)
    else:
        f.write_text(text)
    return _swapd("check-config", str(f))


def _refused(r: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for text in expected:
        assert text in r.stderr, r.stderr


NMC = ("[chemistry.nmc]\ncharge_cutoff_cell_v = {v}\ncharge_temp_min_c = 0\n"
       "charge_temp_max_c = 45\nalarm_temp_c = 60\n")


def test_item7_millivolts_for_volts_are_refused_with_a_hint(tmp_path: Path) -> None:
    """4200 typed for 4.2 V passed check-config; the daemon then died mid-swap."""
    _refused(_check_config(tmp_path, NMC.format(v=4200)),
             "chemistry.nmc.charge_cutoff_cell_v", "millivolts", "4.2")
    _refused(_check_config(tmp_path, NMC.format(v="inf")),
             "chemistry.nmc.charge_cutoff_cell_v")
    _refused(_check_config(tmp_path, NMC.format(v=0.42)), "chemistry.nmc.charge_cutoff_cell_v")
    r = _check_config(tmp_path, NMC.format(v=4.2))
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@pytest.mark.parametrize("key", [
    "plc.stale_after_s", "plc.heartbeat_period_s", "plc.modbus.poll_period_s",
    "sequence.handshake_timeout_s", "sequence.timeouts.lift", "sequence.height_tolerance_mm",
    "interlocks.pack_silent_s", "interlocks.vehicle_drift_mm", "pack_safety.min_insulation_kohm",
    "pack_safety.max_temp_rise_c_per_min", "check.min_insulation_kohm",
    "charging.max_pack_current_a", "charging.station_power_cap_kw",
    "chemistry.nmc.alarm_temp_c", "plc.modbus.port", "can.bitrate",
])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf", str(2**63), "1e308", "-1e308"])
def test_item8_non_finite_and_huge_safety_limits_are_refused(
        tmp_path: Path, key: str, value: str) -> None:
    *section, name = key.split(".")
    text = f"[{'.'.join(section)}]\n{name} = {value}\n"
    if section == ["chemistry", "nmc"]:
        text = NMC.format(v=4.2).replace("alarm_temp_c = 60", f"alarm_temp_c = {value}")
    f = tmp_path / "swapd.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert key in str(exc.value)


@pytest.mark.parametrize("mode", ["0o777", "0o666", "0o662", "0o002", "511"])
def test_item8_world_writable_socket_is_refused(tmp_path: Path, mode: str) -> None:
    _refused(_check_config(tmp_path, f'[api]\nsocket = "{tmp_path}/s.sock"\n'
                                     f"socket_mode = {mode}\n"), "world-writable")


@pytest.mark.parametrize(("text", "keys"), [
    # a dead PLC must be noticed: poll and heartbeat well inside the staleness
    ("[plc]\nstale_after_s = 0.03\n[plc.modbus]\npoll_period_s = 0.02\n",
     ["plc.stale_after_s", "plc.modbus.poll_period_s"]),
    ("[plc]\nstale_after_s = 0.05\nheartbeat_period_s = 0.1\n",
     ["plc.heartbeat_period_s", "plc.stale_after_s"]),
    ("[sequence]\nunlock_angle_deg = [760, 680]\n", ["unlock_angle_deg"]),
    ("[sequence]\nhandshake_timeout_s = 5\n[sequence.timeouts]\nlift = 4\n",
     ["timeouts.lift", "handshake_timeout_s"]),
    ("[sequence.timeouts]\nlock = -3\n", ["timeouts.lock"]),
    ("[sequence]\nposition_tolerance_mm = 20\n", ["sequence.position_tolerance_mm",
                                                  "interlocks.vehicle_drift_mm"]),
    ("[sequence]\nheight_tolerance_mm = 25\n", ["sequence.height_tolerance_mm",
                                                "interlocks.lift_overtravel_mm"]),
    ("[sequence]\nshuttle_home_tolerance_mm = 60\n",
     ["sequence.shuttle_home_tolerance_mm", "interlocks.shuttle_tolerance_mm"]),
    ("[check]\nmin_soc_pct = 90\n", ["check.min_soc_pct", "selection.min_soc_pct"]),
    ("[charging]\ntarget_soc_pct = 70\n", ["charging.target_soc_pct", "selection.min_soc_pct"]),
    ("[charging]\nstalled_current_a = 50\nmax_pack_current_a = 40\n",
     ["charging.stalled_current_a", "charging.max_pack_current_a"]),
    (NMC.format(v=4.2).replace("charge_temp_max_c = 45", "charge_temp_max_c = 70"),
     ["charge_temp_max_c", "alarm_temp_c"]),
    ("[plc]\nstale_after_s = 2\n", ["plc.stale_after_s"]),
    ("[sequence]\nspeed_factor = 0.001\n", ["sequence.speed_factor"]),
    ('[can]\ninterface = "udp_multicast"\nchannel = "can0"\n', ["can.channel"]),
    ('[selection]\ncompatible_families = { "twenty" = [20] }\n', ["compatible_families"]),
    # no chemistry at all: the daemon died on the first pack it heard (the strictest alarm
    # of no chemistry); a misspelt one would never match a pack
    ("[chemistry]\n", ["chemistry"]),
    # NMC's cut-off copied into the LFP profile would overcharge LFP packs
    (NMC.format(v=4.2).replace("nmc", "lfp"), ["chemistry.lfp.charge_cutoff_cell_v", "3.65"]),
    (NMC.format(v=4.2).replace("nmc", "nmcc"), ["chemistry.nmcc", "no such chemistry"]),
])
def test_related_values_are_checked_together_naming_the_keys(
        tmp_path: Path, text: str, keys: list[str]) -> None:
    _refused(_check_config(tmp_path, text), *keys)


def test_contract_timing_bounds_the_staleness(tmp_path: Path) -> None:
    """Judged at 2 x stale_after_s, a silent PLC heartbeat must be noticed within the
    contract's plc_heartbeat_timeout_ms (1000 ms)."""
    _refused(_check_config(tmp_path, "[plc]\nstale_after_s = 0.8\n"),
             "plc.stale_after_s", "plc_heartbeat_timeout_ms")
    r = _check_config(tmp_path, "[plc]\nstale_after_s = 0.5\n")
    assert r.returncode == 0, r.stderr


def test_item9_missing_dbc_file(tmp_path: Path) -> None:
    _refused(_check_config(tmp_path, f'[can]\ndbc = "{tmp_path}/nope.dbc"\n'),
             "can.dbc", "nope.dbc")
    f = tmp_path / "swapd.toml"
    f.write_text(f'[can]\ndbc = "{tmp_path}/nope.dbc"\n')
    r = _swapd("--config", str(f))
    _refused(r, "nope.dbc")


@pytest.mark.parametrize("content", [
    "x = 1\n",                        # a TOML file, but no register map
    "signal = 5\n",
    'contract_version = "1.0"\ndevice = 3\nsignal = [1, 2]\n',
    "[[signal]]\nname = 3\n",
    b"\x89PNG\r\n\x1a\n\x00\x00",       # not text at all
])
def test_item9_a_register_map_that_is_not_a_map(tmp_path: Path, content: str | bytes) -> None:
    m = tmp_path / "map.toml"
    if isinstance(content, bytes):
        m.write_bytes(content)
    else:
        m.write_text(content)
    _refused(_check_config(tmp_path, f'[plc.modbus]\nregister_map = "{m}"\n'), "map.toml")


def test_item9_a_register_map_or_contract_that_is_a_directory_or_missing(
        tmp_path: Path) -> None:
    _refused(_check_config(tmp_path, f'[plc.modbus]\nregister_map = "{tmp_path}"\n'),
             "plc.modbus.register_map", "not a file")
    _refused(_check_config(tmp_path, f'[plc]\ncontract = "{tmp_path}/none.toml"\n'),
             "plc.contract", "no such file")


def test_item9_missing_api_group(tmp_path: Path) -> None:
    text = f'[api]\nsocket = "{tmp_path}/s.sock"\ngroup = "no-such-group-swapd"\n'
    _refused(_check_config(tmp_path, text), "api.group", "no-such-group-swapd")
    f = tmp_path / "run.toml"
    f.write_text(text)
    _refused(_swapd("--config", str(f)), "no-such-group-swapd")


def test_item9_socket_path_too_long(tmp_path: Path) -> None:
    long = tmp_path / ("s" * 120 + ".sock")
    _refused(_check_config(tmp_path, f'[api]\nsocket = "{long}"\n'), "socket", "107")
    r = _check_config(tmp_path, f'[api]\nsocket = "{tmp_path}/no/dir/s.sock"\n')
    assert r.returncode == 0, r.stderr  # the daemon makes its directory (RuntimeDirectory)
    (tmp_path / "file").write_text("")
    _refused(_check_config(tmp_path, f'[api]\nsocket = "{tmp_path}/file/s.sock"\n'),
             "api.socket", "not a directory")


def test_item9_journal_path_that_is_a_directory_or_cannot_be_made(tmp_path: Path) -> None:
    _refused(_check_config(tmp_path, f'[journal]\npath = "{tmp_path}"\n'),
             "journal.path", "is a directory")
    _refused(_check_config(tmp_path, f'[journal]\npath = "{tmp_path}/none/j.sqlite"\n'),
             "journal.path", "does not exist")
    not_db = tmp_path / "notes.txt"
    not_db.write_text("not a journal\n")
    _refused(_check_config(tmp_path, f'[journal]\npath = "{not_db}"\n'),
             "journal.path", "not an SQLite journal")
    f = tmp_path / "run.toml"
    f.write_text(f'[journal]\npath = "{tmp_path}"\n')
    _refused(_swapd("--config", str(f)), "journal.path")


def test_item9_arrays_nested_1000_deep(tmp_path: Path) -> None:
    deep = "[" * 1000 + "]" * 1000
    _refused(_check_config(tmp_path, f"[station]\nname = {deep}\n"), "nested too deeply")
    _refused(_check_config(tmp_path, "x = " + "{a = " * 1000 + "1" + "}" * 1000 + "\n"),
             "nested too deeply")


def test_item9_invalid_utf8(tmp_path: Path) -> None:
    _refused(_check_config(tmp_path, b'[station]\nname = "\xff\xfe caf\xe9"\n'),
             "not valid UTF-8")
    f = tmp_path / "run.toml"
    f.write_bytes(b'[station]\nname = "\xff"\n')
    _refused(_swapd("--config", str(f)), "not valid UTF-8")


def test_a_nul_in_a_path_is_refused(tmp_path: Path) -> None:
    _refused(_check_config(tmp_path, '[journal]\npath = "a\\u0000b"\n'), "journal.path", "NUL")


def test_run_on_a_socket_another_daemon_serves_exits_2_without_traceback(
        tmp_path: Path) -> None:
    import socket

    path = tmp_path / "s.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    try:
        f = tmp_path / "run.toml"
        f.write_text(f'[api]\nsocket = "{path}"\nsocket_mode = 0o600\n'
                     f'[journal]\npath = "{tmp_path}/j.sqlite"\n[log]\nformat = "json"\n')
        r = _swapd("--config", str(f))
    finally:
        srv.close()
    _refused(r, "another process is serving")


def test_a_file_that_is_not_a_configuration_is_refused(tmp_path: Path) -> None:
    _refused(_swapd("check-config", "/dev/zero"), "larger than")
    _refused(_swapd("check-config", str(tmp_path)), "cannot read")
    _refused(_check_config(tmp_path, b"\x00\x01\x02"), "not valid TOML")


def test_the_commented_opcua_examples_load() -> None:
    """deploy/swapd.toml and deploy/swap-sim.toml show OPC UA in comments: uncommented,
    they must load (an example that does not is a trap for an integrator)."""
    import re
    import tomllib

    from sim_hw.config import SimConfig

    s = (ROOT / "deploy" / "swapd.toml").read_text().replace('protocol = "modbus"',
                                                             'protocol = "opcua"')
    a, b, c = s.index("[plc.modbus]"), s.index("# [plc.opcua]"), s.index("[can]")
    s = s[:a] + re.sub(r"^# ([a-z_\[])", r"\1", s[b:c], flags=re.M) + s[c:]
    cfg = StationConfig.model_validate(tomllib.loads(s))
    section = cfg.plc.link_section()
    assert isinstance(section, OpcUaSection) and section.username == "swapd"
    t = (ROOT / "deploy" / "swap-sim.toml").read_text()
    t = re.sub(r"^# (\[sim.opcua\]|port = 4840|path|policies|pki_dir|trust_any|users)", r"\1",
               t, flags=re.M)
    sim = tomllib.loads(t)["sim"]
    assert "opcua" in sim
    SimConfig.model_validate({**sim, "plc_protocol": "opcua"})

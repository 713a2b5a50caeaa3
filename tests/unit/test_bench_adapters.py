"""The bench config, the prompt adapter and what a bench target refuses to run."""

from __future__ import annotations

import asyncio
import io
import os
import textwrap
from pathlib import Path

import pytest

from station.benchtool.adapters import FaultMeans, PromptAdapter, PromptDeclined, coil_makes
from station.benchtool.bench_config import BenchConfigError, CoilFault, load_bench_config
from station.benchtool.bench_target import BenchTarget, compare_rack, describe_setup
from station.benchtool.scenario import Scenario, load_scenario

BASE = """
[bench]
name = "hil-1"
socket = "swapd.sock"
setup = "assume"
"""
RELAY = """
[[bench.relay]]
name = "relays-1"
host = "10.0.0.50"
[bench.relay.coils]
0 = "estop"
1 = "light_curtain"
2 = {fault = "pack_over_temp", target = "vehicle", value = 75}
"""


def write(tmp_path: Path, text: str, name: str = "bench.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def bench(tmp_path: Path, text: str = BASE + RELAY, prompt: PromptAdapter | None = None
          ) -> BenchTarget:
    return BenchTarget(load_bench_config(write(tmp_path, text)), prompt=prompt)


def scenario(tmp_path: Path, body: str, name: str = "s.toml") -> Scenario:
    head = """
    [scenario]
    name = "s"
    description = "d"
    until = {at_s = 10}
    """
    tail = """
    [[expect]]
    final_state = ".*"
    """
    return load_scenario(write(tmp_path, head + textwrap.dedent(body) + tail, name))


# ---- config ------------------------------------------------------------------------------

def test_config_loads_and_resolves_paths(tmp_path: Path) -> None:
    cfg = load_bench_config(write(tmp_path, BASE + RELAY))
    assert cfg.bench.socket == tmp_path / "swapd.sock"
    coils = cfg.bench.relay[0].coils
    assert coils[0] == CoilFault(fault="estop")
    assert coils[2].target == "vehicle" and coils[2].value == 75


@pytest.mark.parametrize("text, where, what", [
    (BASE + RELAY.replace('1 = "light_curtain"', '1 = "laser_beam"'),
     "bench.relay.0.coils.1", "unknown fault 'laser_beam'"),
    (BASE + RELAY.replace('1 = "light_curtain"', '"01" = "light_curtain"\n"1" = "smoke"'),
     "bench.relay.0.coils", "coil 1 is given twice"),
    (BASE + RELAY.replace('1 = "light_curtain"', '1 = "estop"'),
     "bench.relay.0.coils", "coils 0 and 1 both make estop"),
    (BASE + "colour = 'red'\n", "bench.colour", "Extra inputs"),
    (BASE + RELAY.replace('host = "10.0.0.50"', 'host = "10.0.0.50"\nbaud = 9600'),
     "bench.relay.0.baud", "Extra inputs"),
    (BASE + "[bench.prompt]\nfaults = ['heat_gun']\n", "bench.prompt.faults",
     "unknown fault 'heat_gun'"),
    (BASE + RELAY.replace('0 = "estop"', '0 = {fault = "estop", target = "vehicle"}'),
     "bench.relay.0.coils.0", "estop takes no target"),
    (BASE.replace('setup = "assume"', 'setup = "maybe"'), "bench.setup", "'prompt'"),
    (BASE + "[bench.swapd]\nkill = ['true']\n", "bench.swapd.start", "Field required"),
])
def test_config_errors_name_the_key(tmp_path: Path, text: str, where: str, what: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(BenchConfigError) as exc:
        load_bench_config(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: {where}: "), msg
    assert what in msg, msg


def test_config_not_toml(tmp_path: Path) -> None:
    p = write(tmp_path, BASE + "[bench\n")
    with pytest.raises(BenchConfigError, match="not TOML"):
        load_bench_config(p)


def test_coil_honours_target_and_value() -> None:
    hot = CoilFault(fault="pack_over_temp", target="vehicle", value=75)
    # no target, no value: the fault's defaults (the bay's pack, 75 degC), as wired
    assert coil_makes(hot, "pack_over_temp", None, None)
    assert coil_makes(CoilFault(fault="pack_over_temp"), "pack_over_temp", None, 75.0)
    assert coil_makes(hot, "pack_over_temp", "vehicle", 75.0)
    assert coil_makes(hot, "pack_over_temp", "vehicle", 80.0) is False
    assert coil_makes(hot, "pack_over_temp", 3, 75) is False
    assert coil_makes(CoilFault(fault="estop"), "estop", None, None)
    assert coil_makes(CoilFault(fault="estop"), "smoke", None, None) is False


# ---- prompt ------------------------------------------------------------------------------

def test_prompt_confirm(tmp_path: Path) -> None:
    out = io.StringIO()
    p = PromptAdapter(io.StringIO("\n"), out, timeout_s=5)
    label = asyncio.run(p.make("light_curtain", None, None))
    assert "made by hand" in label
    assert "Make fault light_curtain (light curtain / area scanner breached) now, then " \
        "press Enter; type 'skip' to abandon" in out.getvalue()
    assert p.made == {"light_curtain": (None, None)}


def test_prompt_says_target_and_value() -> None:
    out = io.StringIO()
    p = PromptAdapter(io.StringIO("\n"), out, timeout_s=5)
    asyncio.run(p.make("pack_over_temp", "vehicle", 80.0))
    assert "Make fault pack_over_temp at vehicle, value 80.0 degC" in out.getvalue()


def test_prompt_skip() -> None:
    p = PromptAdapter(io.StringIO("  Skip \n"), io.StringIO(), timeout_s=5)
    with pytest.raises(PromptDeclined, match="skipped by the engineer: Make fault estop"):
        asyncio.run(p.make("estop", None, None))
    assert p.made == {}


def test_prompt_input_closed() -> None:
    p = PromptAdapter(io.StringIO(""), io.StringIO(), timeout_s=5)
    with pytest.raises(PromptDeclined, match="input closed"):
        asyncio.run(p.make("estop", None, None))


def test_prompt_timeout_and_late_answer_not_reused() -> None:
    r, w = os.pipe()
    with os.fdopen(r) as rin, os.fdopen(w, "w") as win:
        p = PromptAdapter(rin, io.StringIO(), timeout_s=0.05)

        async def go() -> None:
            with pytest.raises(PromptDeclined, match=r"no answer within 0\.05 s"):
                await p.make("estop", None, None)
            win.write("\n")  # the late Enter for the first question
            win.flush()
            pending = p._pending
            assert pending is not None
            await asyncio.wait_for(asyncio.shield(pending), 5)
            # the second question must not take the first one's late answer
            with pytest.raises(PromptDeclined, match="no answer"):
                await p.make("smoke", None, None)
            win.write("\n")
            win.flush()
            await p.ask("again", timeout_s=5)  # picks up the line meant for it

        asyncio.run(go())


def test_prompt_close_asks_to_undo() -> None:
    out = io.StringIO()
    p = PromptAdapter(io.StringIO("\n\n"), out, timeout_s=5)

    async def go() -> None:
        await p.make("door_open", None, None)
        await p.close()

    asyncio.run(go())
    assert "Clear fault door_open" in out.getvalue()
    assert p.made == {}


# ---- what a bench cannot run -------------------------------------------------------------

def test_cannot_reasons(tmp_path: Path) -> None:
    t = bench(tmp_path)
    cfg_path = str(tmp_path / "bench.toml")
    ok = scenario(tmp_path, """
        [[action]]
        when = {at_s = 1}
        do = "fault"
        fault = "estop"
        [[action]]
        when = {at_s = 2}
        do = "clear_fault"
        fault = "estop"
        [[expect]]
        observer = true
    """, "ok.toml")
    assert t.cannot(ok) is None

    smoke = scenario(tmp_path, """
        [[action]]
        when = {at_s = 1}
        do = "fault"
        fault = "smoke"
    """, "smoke.toml")
    assert t.cannot(smoke) == (
        f"needs fault smoke: no relay coil or prompt for it in {cfg_path}")

    hotter = scenario(tmp_path, """
        [[action]]
        when = {at_s = 1}
        do = "fault"
        fault = "pack_over_temp"
        value = 90
    """, "hot.toml")
    why = t.cannot(hotter)
    assert why is not None and why.startswith("needs fault pack_over_temp =90: no relay coil "
                                              "makes that target/value")

    cloud = scenario(tmp_path, """
        [[action]]
        when = {at_s = 1}
        do = "cloud"
        command = "request_stop"
    """, "cloud.toml")
    assert t.cannot(cloud) == (
        f"action cloud request_stop: needs [bench.broker] in {cfg_path}")

    tele = scenario(tmp_path, """
        [[expect]]
        telemetry = "state"
    """, "tele.toml")
    assert t.cannot(tele) == f"expects telemetry: needs [bench.broker] in {cfg_path}"

    kill = scenario(tmp_path, """
        [[action]]
        when = {at_s = 1}
        do = "swapd"
        state = "kill"
    """, "kill.toml")
    assert t.cannot(kill) == (
        f"action swapd kill: needs [bench.swapd] kill and start in {cfg_path}")

    conf = scenario(tmp_path, """
        [setup]
        swapd = {operation = {auto_start = false}}
    """, "conf.toml")
    why = t.cannot(conf)
    assert why is not None and "a bench runs its own configuration" in why


def test_cannot_prompt_faults_need_someone(tmp_path: Path) -> None:
    text = BASE + RELAY + "[bench.prompt]\nfaults = ['smoke']\n"
    s = scenario(tmp_path, """
        [[action]]
        when = {at_s = 1}
        do = "fault"
        fault = "smoke"
    """)
    why = bench(tmp_path, text).cannot(s)
    assert why is not None and "no one can be asked" in why
    asked = bench(tmp_path, text, PromptAdapter(io.StringIO(), io.StringIO()))
    assert asked.cannot(s) is None


def test_cannot_setup_prompt_without_prompt(tmp_path: Path) -> None:
    text = BASE.replace('"assume"', '"prompt"')
    s = scenario(tmp_path, "")
    why = bench(tmp_path, text).cannot(s)
    assert why is not None and 'setup = "prompt"' in why


def test_fault_means_prefers_relay(tmp_path: Path) -> None:
    cfg = load_bench_config(write(tmp_path, BASE + RELAY + "[bench.prompt]\n"
                                  "faults = ['estop', 'pack_over_temp']\n"))
    prompt = PromptAdapter(io.StringIO(), io.StringIO())
    means = FaultMeans.from_config(cfg, prompt)
    assert means.find("estop") is means.relays[0]
    assert means.find("pack_over_temp", 3) is prompt  # the coil's wiring is the bay's pack


def test_setup_lines_and_rack_comparison(tmp_path: Path) -> None:
    s = scenario(tmp_path, """
        [setup]
        ambient_c = 30
        [[setup.rack]]
        slot = 1
        chemistry = "lfp"
        family = 20
        soc = 90
        [[setup.rack]]
        slot = 2
        chemistry = "nmc"
        family = 20
        soc = 50
        temp_c = 40
    """)
    lines = describe_setup(s)
    assert lines[0] == "ambient 30 degC"
    assert "slot 2: nmc family 20, SOC 50 %, SOH 100 %, 40 degC" in lines
    status = {"pack_details": [
        {"location": "slot:1", "serial": 7, "chemistry": "lfp", "family": 20, "soc_pct": 88},
        {"location": "slot:2", "serial": 8, "chemistry": "lfp", "family": 25, "soc_pct": 20},
        {"location": "slot:3", "serial": 9, "chemistry": "nmc", "family": 20, "soc_pct": 20},
        {"location": "bay", "serial": 10, "chemistry": "nmc", "family": 20, "soc_pct": 20}]}
    assert compare_rack(s, status) == [
        "slot:2: chemistry lfp, the scenario says nmc",
        "slot:2: family 25, the scenario says 20",
        "slot:2: SOC 20 %, the scenario says 50 %",
        "slot:3: swapd reports a pack the scenario does not have"]


def test_the_example_bench_config_loads() -> None:
    cfg = load_bench_config(Path(__file__).parents[2] / "deploy" / "bench.toml")
    assert cfg.bench.broker is not None and cfg.bench.swapd is not None
    means = FaultMeans.from_config(cfg, None)
    for name in ("estop", "light_curtain", "door_open", "can_bus_off", "plc_silent"):
        assert means.find(name) is means.relays[0], name


# ---- [sim.relay]: swap-sim serves a relay board ------------------------------------------

def test_sim_relay_section() -> None:
    from sim_hw.config import SimConfigError, parse_sim_config

    cfg = parse_sim_config({"sim": {"relay": {"port": 0, "count": 8, "coils": {
        "0": "estop", "3": {"fault": "pack_over_temp", "target": "vehicle", "value": 70}}}}})
    assert cfg.relay is not None
    wiring = cfg.relay.wiring()
    assert wiring[0].fault == "estop" and wiring[3].value == 70
    with pytest.raises(SimConfigError, match="laser"):
        parse_sim_config({"sim": {"relay": {"coils": {"0": "laser"}}}})
    with pytest.raises(SimConfigError, match="beyond the board's 8 coils"):
        parse_sim_config({"sim": {"relay": {"count": 8, "coils": {"8": "estop"}}}})

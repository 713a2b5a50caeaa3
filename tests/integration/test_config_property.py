"""Property test (issue 7, items 7-9): whatever a configuration file says, `swapd
check-config` either refuses it (exit 2, a message, never a traceback) or says ok; and a
configuration it says ok for runs: the daemon starts against the simulator and completes a
swap.

The files are mutations of a valid configuration: a value replaced by an odd number (zero,
negative, tiny, huge, 2^63, 1e308, inf, nan), scaled by a unit mistake (x1000, /1000, x60),
or by a value of the wrong type; a key removed, a section removed or emptied, an unknown
key added; related values swapped (poll and staleness, a window's bounds, temperatures);
and files whose text is cut, nested 1000 deep or not UTF-8. check-config runs in this
process (`station.cli.main`), so an exception escaping it fails the test with its traceback.

"ok => a swap": values drawn inside their bounds for keys whose every allowed value a
station that works must honour, in the ranges the simulated station can show (its packs
arrive at 85-100 % SOC and 5 MOhm, its car is positioned within 2 mm, its bolts tighten to
110-130 N*m): a handful of examples, each one swap on the in-process rig, as fast as it
allows for the drawn poll period (80 % of `highest_speed`, at most x200).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from sim_hw.config import SimConfig
from station import cli
from station.config import (
    ApiSection,
    JournalSection,
    ModbusSection,
    PlcSection,
    SequenceSection,
    StationConfig,
    load_config,
)
from station.rig import Rig, highest_speed

Tree = dict[str, Any]
KeyPath = tuple[str | int, ...]


# ---- a valid configuration and TOML ---------------------------------------------------

def _drop_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_none(x) for x in v]
    return v


def base_tree(workdir: Path) -> Tree:
    """Every key of a valid configuration written out (TOML has no None: those are left
    out), its journal and operator socket in `workdir`."""
    cfg = StationConfig(
        plc=PlcSection(modbus=ModbusSection()),
        sequence=SequenceSection(timeouts={"lift": 30.0, "release": 60.0}),
        journal=JournalSection(path=workdir / "journal.sqlite"),
        api=ApiSection(socket=workdir / "swapd.sock", socket_mode=0o660),
    )
    tree: Tree = _drop_none(cfg.model_dump(mode="json"))
    return tree


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON's escapes are TOML's
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}"
                               for k, x in v.items()) + "}"
    raise TypeError(v)


def toml_text(tree: Tree) -> str:
    """One line per top-level key (sections as inline tables)."""
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in tree.items())


def check_config(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["check-config", str(path)])
    return rc, out.getvalue(), err.getvalue()


def assert_answered(path: Path) -> int:
    """check-config says ok, or refuses with a message; never anything else."""
    rc, out, err = check_config(path)
    assert rc in (0, 2), (rc, out, err)
    assert "Traceback" not in err, err
    if rc == 0:
        assert out.strip() == f"{path}: ok" and not err, (out, err)
        load_config(path)  # and the daemon's own loader agrees
    else:
        assert err.strip() and not out, (out, err)
    return rc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("cfgprop")


def test_the_base_configuration_is_ok(workdir: Path) -> None:
    f = workdir / "base.toml"
    f.write_text(toml_text(base_tree(workdir)))
    assert check_config(f)[0] == 0


# ---- mutations ------------------------------------------------------------------------

ODD_NUMBERS: list[Any] = [0, -1, -0.0, 1e-9, 0.001, 0.5, 1, 2, 59, 100, 4200, 65535, 65536,
                          1e6, 1e308, -1e308, 2**63 - 1, 2**63, -(2**63), 2**64,
                          math.inf, -math.inf, math.nan]
UNIT_MISTAKES = [1000, 0.001, -1, 10, 0.1, 60, 1 / 60, 3600]
WRONG_TYPES: list[Any] = ["x", "", "inf", "4.2", "1e3", True, False, [1, 2], [], {"a": 1},
                          [[[1]]], "\u0000", "é" * 300, "/", ".", "0o777"]
UNKNOWN_KEYS = ["bogus", "Port", "stale_after_ms", "timeout", "modbus", "chemistry", ""]
# pairs of related values a careless edit swaps
RELATED: list[tuple[KeyPath, KeyPath]] = [
    (("plc", "stale_after_s"), ("plc", "modbus", "poll_period_s")),
    (("plc", "stale_after_s"), ("plc", "heartbeat_period_s")),
    (("sequence", "lock_torque_nm", 0), ("sequence", "lock_torque_nm", 1)),
    (("sequence", "unlock_angle_deg", 0), ("sequence", "unlock_angle_deg", 1)),
    (("sequence", "handshake_timeout_s"), ("sequence", "timeouts", "lift")),
    (("sequence", "swap_height_mm"), ("sequence", "height_tolerance_mm")),
    (("sequence", "position_tolerance_mm"), ("interlocks", "vehicle_drift_mm")),
    (("chemistry", "nmc", "charge_temp_max_c"), ("chemistry", "nmc", "alarm_temp_c")),
    (("chemistry", "lfp", "charge_temp_min_c"), ("chemistry", "lfp", "charge_temp_max_c")),
    (("selection", "min_soc_pct"), ("check", "min_soc_pct")),
    (("charging", "stalled_current_a"), ("charging", "max_pack_current_a")),
    (("interlocks", "shuttle_tolerance_mm"), ("interlocks", "shuttle_car_mm")),
    (("plc", "modbus", "port"), ("can", "bitrate")),
]


def leaves(tree: Any, prefix: KeyPath = ()) -> list[KeyPath]:
    """Paths to every value that is not a table (list items too)."""
    out: list[KeyPath] = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += leaves(v, (*prefix, k))
    elif isinstance(tree, list) and tree and not isinstance(tree[0], list | dict):
        out.append(prefix)
        out += [(*prefix, i) for i in range(len(tree))]
    else:
        out.append(prefix)
    return out


def tables(tree: Tree, prefix: KeyPath = ()) -> list[KeyPath]:
    out: list[KeyPath] = [prefix]
    for k, v in tree.items():
        if isinstance(v, dict):
            out += tables(v, (*prefix, k))
    return out


def get(tree: Any, path: KeyPath) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def put(tree: Any, path: KeyPath, value: Any) -> None:
    get(tree, path[:-1])[path[-1]] = value


def remove(tree: Any, path: KeyPath) -> None:
    parent = get(tree, path[:-1])
    del parent[path[-1]]


@st.composite
def mutated_trees(draw: st.DrawFn, base: Tree) -> Tree:
    tree = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["odd", "unit", "type", "remove", "unknown", "swap",
                                     "table"]))
        paths = leaves(tree)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        if kind == "swap":
            a, b = draw(st.sampled_from(RELATED))
            with contextlib.suppress(KeyError, IndexError, TypeError):
                va, vb = get(tree, a), get(tree, b)
                put(tree, a, vb)
                put(tree, b, va)
            continue
        if kind == "table":  # a whole section removed or emptied
            where_path = draw(st.sampled_from(tables(tree)[1:] or [("station",)]))
            with contextlib.suppress(KeyError, TypeError):
                if draw(st.booleans()):
                    remove(tree, where_path)
                else:
                    put(tree, where_path, {})
            continue
        if kind == "unknown":
            where = get(tree, draw(st.sampled_from(tables(tree))))
            where[draw(st.sampled_from(UNKNOWN_KEYS))] = draw(st.sampled_from(ODD_NUMBERS))
            continue
        if not path:
            continue
        if kind == "remove":
            remove(tree, path)
            continue
        old = get(tree, path)
        if kind == "unit" and isinstance(old, int | float) and not isinstance(old, bool):
            new: Any = old * draw(st.sampled_from(UNIT_MISTAKES))
        elif kind == "type":
            new = copy.deepcopy(draw(st.sampled_from(WRONG_TYPES)))  # never the constant
        else:
            new = draw(st.sampled_from(ODD_NUMBERS) | st.floats() | st.integers())
        put(tree, path, new)
    return tree


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_check_config_answers_every_mutated_file(workdir: Path, data: st.DataObject) -> None:
    tree = data.draw(mutated_trees(base_tree(workdir)))
    f = workdir / "mutated.toml"
    f.write_text(toml_text(tree), encoding="utf-8")
    assert_answered(f)


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_check_config_answers_every_damaged_text(workdir: Path, data: st.DataObject) -> None:
    text = toml_text(base_tree(workdir)).encode()
    kind = data.draw(st.sampled_from(["cut", "insert", "nest", "replace"]))
    at = data.draw(st.integers(0, len(text)))
    if kind == "cut":
        raw = text[:at]
    elif kind == "insert":
        raw = text[:at] + data.draw(st.binary(min_size=1, max_size=8)) + text[at:]
    elif kind == "nest":
        depth = data.draw(st.sampled_from([10, 100, 500, 1000, 5000]))
        raw = text + f"deep = {'[' * depth}{']' * depth}\n".encode()
    else:
        raw = text[:at] + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\x1b",
                                                     b'"', b"]", b"="])) + text[at + 1:]
    f = workdir / "damaged.toml"
    f.write_bytes(raw)
    assert_answered(f)


# ---- ok => the daemon starts and completes a swap -------------------------------------

def _in_range(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


# key -> values inside its bounds that a working station must accept (see the docstring)
RUN_VALUES: dict[KeyPath, st.SearchStrategy[Any]] = {
    ("plc", "stale_after_s"): _in_range(0.1, 0.5),
    ("plc", "heartbeat_period_s"): _in_range(0.01, 0.1),
    ("plc", "modbus", "poll_period_s"): _in_range(0.005, 0.03),
    ("plc", "modbus", "timeout_s"): _in_range(0.2, 30.0),
    ("sequence", "handshake_timeout_s"): _in_range(0.1, 5.0),
    ("sequence", "timeouts", "lift"): _in_range(10.0, 600.0),
    ("sequence", "timeouts", "release"): _in_range(10.0, 600.0),
    ("sequence", "position_tolerance_mm"): _in_range(2.5, 14.0),
    ("sequence", "height_tolerance_mm"): _in_range(2.0, 19.0),
    ("sequence", "shuttle_home_tolerance_mm"): _in_range(2.0, 50.0),
    ("sequence", "lock_torque_nm"): st.tuples(_in_range(1.0, 110.0), _in_range(130.0, 2000.0)),
    ("interlocks", "vehicle_drift_mm"): _in_range(15.0, 200.0),
    ("interlocks", "lift_overtravel_mm"): _in_range(20.0, 500.0),
    ("interlocks", "shuttle_tolerance_mm"): _in_range(50.0, 500.0),
    ("interlocks", "pack_silent_s"): _in_range(0.5, 5.0),
    ("selection", "min_soc_pct"): _in_range(50.0, 85.0),
    ("check", "min_soc_pct"): _in_range(0.0, 50.0),
    ("check", "min_insulation_kohm"): _in_range(20.0, 4000.0),
    ("pack_safety", "min_insulation_kohm"): _in_range(20.0, 4000.0),
    ("pack_safety", "temp_rise_window_s"): _in_range(5.0, 600.0),
    ("charging", "target_soc_pct"): _in_range(85.0, 100.0),
    ("charging", "station_power_cap_kw"): _in_range(1.0, 20_000.0),
    ("charging", "max_pack_current_a"): _in_range(2.0, 1000.0),
    ("charging", "stalled_after_s"): _in_range(5.0, 3600.0),
    ("chemistry", "nmc", "charge_cutoff_cell_v"): _in_range(3.9, 4.35),
    ("chemistry", "sodium_ion", "charge_cutoff_cell_v"): _in_range(3.5, 4.1),
    ("chemistry", "lfp", "max_charge_c_rate"): _in_range(0.05, 6.0),
    ("chemistry", "sodium_ion", "alarm_temp_c"): _in_range(56.0, 100.0),
    ("api", "socket_mode"): st.sampled_from([0o600, 0o640, 0o660, 0o700, 0o770, 0o750]),
    ("log", "level"): st.sampled_from(["debug", "info", "warning", "error"]),
}


def _run_config(loaded: StationConfig, base: StationConfig) -> StationConfig:
    """The file's configuration, pointed at the rig's simulator, journal and socket."""
    assert loaded.plc.modbus is not None and base.plc.modbus is not None
    modbus = loaded.plc.modbus.model_copy(update={"host": base.plc.modbus.host,
                                                  "port": base.plc.modbus.port})
    workdir = base.journal.path.parent
    return loaded.model_copy(update={
        "plc": loaded.plc.model_copy(update={"modbus": modbus}),
        "can": base.can,
        "journal": base.journal,
        "sequence": loaded.sequence.model_copy(
            update={"speed_factor": base.sequence.speed_factor}),
        "api": loaded.api.model_copy(update={"socket": workdir / "swapd.sock"}),
    })


async def _one_swap(loaded: StationConfig) -> list[dict[str, Any]]:
    poll = loaded.plc.modbus.poll_period_s if loaded.plc.modbus else 0.02
    top, _, _ = highest_speed(SimConfig(), poll)
    speed = float(min(200, int(top * 0.8)))
    async with Rig(speed=speed, vehicles=1, poll_period_s=poll, name="cfgprop", plc="modbus",
                   config=lambda base: _run_config(loaded, base)) as rig:
        await rig.wait_for(lambda: bool(rig.ended()), timeout=60, what="the first swap")
        return rig.ended()


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_a_configuration_check_config_accepts_runs_a_swap(
        workdir: Path, data: st.DataObject) -> None:
    tree = base_tree(workdir)
    keys = data.draw(st.lists(st.sampled_from(sorted(RUN_VALUES)), min_size=3,
                              max_size=len(RUN_VALUES), unique=True))
    for key in keys:
        value = data.draw(RUN_VALUES[key])
        put(tree, key, list(value) if isinstance(value, tuple) else value)
    f = workdir / "run.toml"
    f.write_text(toml_text(tree))
    rc = assert_answered(f)
    assume(rc == 0)  # related values the draw got wrong: refused, with a message
    note(f"{len(keys)} keys drawn: {', '.join('.'.join(map(str, k)) for k in keys)}")
    ended = asyncio.run(_one_swap(load_config(f)))
    assert [e["outcome"] for e in ended] == ["completed"], ended

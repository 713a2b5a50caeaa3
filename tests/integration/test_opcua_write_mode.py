"""A PLC that takes no method call: the node map's "write" mode. swapd writes the output
block as Write requests in the map's order, cmd_seq alone and last, each acknowledged
before the next; the simulated PLC applies each Write request as it comes. A whole swap
completes, and the PLC never sees a new cmd_seq before the code and parameters it belongs
to."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from drivers.plc.nodemap import load_node_map
from station.rig import Rig

pytestmark = pytest.mark.timeout(120)

SHIPPED_MAP = Path(__file__).resolve().parents[2] / "drivers/plc/maps/opcua_map.toml"


def write_mode_map(tmp: Path) -> Path:
    text = SHIPPED_MAP.read_text()
    start = text.index("\n[outputs]\n") + 1
    method = text[start:text.index("\n[[signal]]\n", start) + 1]
    text = text.replace(method, '''[outputs]
mode = "write"
write_order = [["cmd_code", "cmd_param1", "cmd_param2"], ["stop_request", "ctrl_heartbeat"],
               ["cmd_seq"]]

''')
    path = tmp / "opcua_write_map.toml"
    path.write_text(text)
    assert load_node_map(path).output_mode == "write"
    return path


async def test_a_swap_over_ordered_writes_with_cmd_seq_last(tmp_path: Path) -> None:
    node_map = str(write_mode_map(tmp_path))
    async with Rig(speed=50, vehicles=1, workdir=tmp_path, plc="opcua", name="wm",
                   sim={"opcua": {"node_map": node_map}},
                   config={"plc": {"opcua": {"node_map": node_map}}}) as rig:
        seen: list[dict[str, Any]] = []  # every output block the PLC took, in order
        model = rig.sim.model
        take = model.set_outputs

        def spy(values: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            seen.append(dict(values))
            return take(values, *args, **kwargs)

        model.set_outputs = spy  # type: ignore[method-assign]
        await rig.wait_for(lambda: len(rig.ended()) >= 1, timeout=90, what="one swap")
        assert [e["outcome"] for e in rig.ended()] == ["completed"], rig.ended()
        assert rig.sim.observer.violations == []
        link = rig.daemon.link
        assert link.nmap.output_mode == "write" and link.stats.write_errors == 0
    new_commands = 0
    for before, after in itertools.pairwise(seen):
        if after["cmd_seq"] != before["cmd_seq"]:
            new_commands += 1
            # the code and parameters were in place before the new number arrived
            for key in ("cmd_code", "cmd_param1", "cmd_param2"):
                assert after[key] == before[key], (key, before, after)
    assert new_commands >= 10  # every commanded step of the swap

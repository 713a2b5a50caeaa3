"""The metrics endpoint of a daemon driving the simulated station, scraped over HTTP."""

from __future__ import annotations

import asyncio
import math
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from station.rig import PlcProtocol, Rig
from station.sequence import STEP_NAMES

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        body: bytes = r.read()
    return body.decode()


async def scrape(port: int) -> Samples:
    """One scrape, off the event loop (the daemon's loop must keep running meanwhile)."""
    text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(got: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in got.items()
               if n == name and all(dict(lab).get(k) == w for k, w in labels.items()))


async def test_one_swap_scraped(tmp_path: Path, plc: PlcProtocol) -> None:
    async with Rig(speed=50.0, vehicles=1, workdir=tmp_path, name="metrics", plc=plc,
                   config={"metrics": {"port": 0}}) as rig:
        metrics = rig.daemon.metrics
        assert metrics is not None
        await rig.wait_for(lambda: metrics.port is not None, timeout=20, what="the endpoint")
        port = metrics.port
        assert port is not None and port != 9468  # 0 took a free one
        await rig.wait_for(lambda: len(rig.ended()) >= 1, timeout=90, what="one swap")
        assert [e["outcome"] for e in rig.ended()] == ["completed"]
        slots = rig.daemon.image.rack_slot_count()
        assert slots > 0

        # the polled gauges follow at the daemon's slow tick: scrape until they have
        got: Samples = {}
        for _ in range(100):
            got = await scrape(port)
            if total(got, "swapd_packs") == slots and total(got, "swapd_plc_connected") == 1:
                break
            await asyncio.sleep(0.1)

        assert total(got, "swapd_swaps_total", outcome="completed") >= 1
        assert total(got, "swapd_swaps_total", outcome="aborted") == 0
        assert total(got, "swapd_swap_duration_seconds_count") == 1
        for step in STEP_NAMES:
            assert total(got, "swapd_step_duration_seconds_count", step=step) >= 1, step
        assert total(got, "swapd_step_duration_seconds_sum", step="lift") > 0
        assert total(got, "swapd_can_frames_total", bus="pack", kind="received") > 0
        assert total(got, "swapd_can_frames_total", bus="pack", kind="decoded") > 0
        assert total(got, "swapd_can_frames_total", bus="pack", kind="sent") > 0
        assert total(got, "swapd_can_bus_state", bus="pack", state="active") == 1
        age = total(got, "swapd_plc_input_age_seconds")
        assert 0 <= age < rig.daemon.cfg.plc.stale_after_s  # the daemon's own judgement
        assert total(got, "swapd_plc_connected") == 1
        rtt = total(got, "swapd_plc_read_round_trip_seconds")
        if plc == "modbus":
            assert 0 < rtt < rig.daemon.cfg.plc.stale_after_s
        else:
            assert math.isnan(rtt)  # OPC UA pushes its inputs: no read round trip
        assert total(got, "swapd_packs") == slots
        assert total(got, "swapd_packml_state") == 1
        assert total(got, "swapd_command_results_total", origin="start-up",
                     result="accepted") >= 1  # the start-up reset
        assert total(got, "swapd_outbox_backlog_events") == 0  # no cloud link
        assert total(got, "swapd_interlock_trips_total") >= 0
        assert ("swapd_info", (("plc_protocol", plc), ("station", rig.daemon.cfg.station.id),
                               ("version", "0.1.0"))) in got
    # stopped with the daemon
    try:
        await scrape(port)
    except OSError:
        pass
    else:
        raise AssertionError("the endpoint still answers after the daemon stopped")

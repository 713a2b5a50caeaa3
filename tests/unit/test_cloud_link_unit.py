"""The cloud link's own decisions, without a broker: what it does with a message on its
commands topic (answer, journal, count, bound the journal under a flood), and what it counts
as a significant rack change."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from station.cloud import link as cloud_link
from station.cloud.link import CloudLink, _rack_signature
from station.commands import CommandRequest, CommandResult, Origin
from station.config import StationConfig
from station.events import CloudCommandRejected, Event
from station.journal import Journal
from tests.integration.cloud_support import make_keys, signed


def make_link(tmp: Path) -> tuple[CloudLink, list[Event], list[CommandRequest], Any]:
    key_dir = tmp / "keys"
    key = make_keys(key_dir)
    cfg = StationConfig.model_validate({"station": {"id": "ST-A"}, "cloud": {
        "enabled": True, "trusted_keys_dir": str(key_dir)}})
    recorded: list[Event] = []
    submitted: list[CommandRequest] = []

    async def record(events: list[Event]) -> None:
        recorded.extend(events)

    async def submit(req: CommandRequest) -> CommandResult:
        submitted.append(req)
        return CommandResult(req.request_id, req.command, True, None, "Idle")

    link = CloudLink(cfg, Journal(tmp / "j.sqlite"), status=dict, rack=dict, submit=submit,
                     record=record, contracts={}, software_version="t",
                     started_wall=time.time())
    return link, recorded, submitted, key


async def test_a_flood_of_bad_messages_is_answered_but_journaled_at_most_60_a_minute(
        tmp_path: Path) -> None:
    link, recorded, submitted, _ = make_link(tmp_path)
    answers = [await link.handle_command(b"{not json") for _ in range(75)]
    assert {a["code"] for a in answers} == {"malformed_json"}
    assert all(not a["accepted"] and a["reason"] for a in answers)
    assert len(recorded) == cloud_link.REJECTIONS_PER_MIN
    assert all(isinstance(e, CloudCommandRejected) for e in recorded)
    assert link.stats.rejected == {"malformed_json": 75}
    assert link.stats.rejections_not_journaled == 75 - cloud_link.REJECTIONS_PER_MIN
    assert submitted == []


async def test_a_signed_command_reaches_the_entry_as_the_cloud(tmp_path: Path) -> None:
    link, recorded, submitted, key = make_link(tmp_path)
    cmd = signed("snapshot", {}, station="ST-A", key=key)
    answer: dict[str, Any] = await link.handle_command(json.dumps(cmd).encode())
    assert (answer["accepted"], answer["code"], answer["request_id"]) == \
        (True, "ok", cmd["request_id"])
    assert [(r.command, r.origin, r.request_id) for r in submitted] == \
        [("snapshot", Origin.CLOUD, cmd["request_id"])]
    assert submitted[0].sender == "cloud key backend-1"
    assert recorded == []
    assert link._snapshot  # status, state and rack go out at once


def test_a_rack_change_is_significant_by_state_pack_reservation_or_soc_step() -> None:
    slot = {"slot": 1, "state": "charging", "serial": 7, "reserved_for": None, "soc_pct": 61.0}
    base = _rack_signature({"slots": [slot], "power_cap_kw": 500.0})
    assert _rack_signature({"slots": [{**slot, "soc_pct": 63.9}],
                            "power_cap_kw": 500.0}) == base  # same 5 % step
    for change in ({"soc_pct": 65.0}, {"state": "ready"}, {"serial": 8},
                   {"reserved_for": "LSJA24U67MS123456"}):
        assert _rack_signature({"slots": [{**slot, **change}], "power_cap_kw": 500.0}) != base
    assert _rack_signature({"slots": [slot], "power_cap_kw": 50.0}) != base

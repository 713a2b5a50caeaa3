"""The one command entry: checked by the core, journaled with its result, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from station.commands import CommandEntry, CommandRequest, Origin
from station.core import Decision
from station.journal import Journal
from station.packml import State
from tests.unit.core_harness import make_run


@pytest.fixture
def entry(tmp_path: Path) -> tuple[CommandEntry, Journal, list[Decision]]:
    run = make_run()
    run.until(lambda: run.core.step is not None and run.core.step.name == "lift")
    journal = Journal(tmp_path / "j.sqlite")
    applied: list[Decision] = []

    async def apply(d: Decision) -> None:
        journal.record(d.events)
        applied.append(d)

    return CommandEntry(run.core, journal, apply, lambda: run.now), journal, applied


def kinds(journal: Journal) -> list[str]:
    return [r["kind"] for r in journal.events_after(0)]


async def test_accepted_command_is_journaled_with_what_it_decided(entry) -> None:  # type: ignore[no-untyped-def]
    e, journal, applied = entry
    r = await e.submit(CommandRequest("request_hold", Origin.CLOUD, "backend",
                                      request_id="c-1"))
    assert r.accepted and r.state == "Holding" and not r.repeated and r.code == "ok"
    assert kinds(journal) == ["command_received", "fault", "state", "command_accepted"] or \
        kinds(journal) == ["command_received", "state", "command_accepted"]
    assert applied[0].outputs is not None and applied[0].outputs["stop_request"] == "cat2"
    rows = journal.events_after(0)
    assert json.loads(rows[0]["data"])["origin"] == "cloud: backend"


async def test_refusal_is_journaled_and_changes_nothing(entry) -> None:  # type: ignore[no-untyped-def]
    e, journal, applied = entry
    r = await e.submit(CommandRequest("reset", Origin.LOCAL, "swapctl", request_id="c-2"))
    assert not r.accepted and "reset is not allowed in Execute" in (r.reason or "")
    assert kinds(journal) == ["command_received", "command_refused"]
    assert e.core.state == State.EXECUTE and applied[0].outputs is None


async def test_same_request_id_again_gets_the_same_answer_and_does_nothing(entry) -> None:  # type: ignore[no-untyped-def]
    e, journal, _ = entry
    first = await e.submit(CommandRequest("request_hold", Origin.CLOUD, "backend",
                                          request_id="c-3"))
    n = len(kinds(journal))
    again = await e.submit(CommandRequest("request_hold", Origin.CLOUD, "backend",
                                          request_id="c-3"))
    assert again.repeated and again.accepted == first.accepted and again.state == first.state
    assert again.code == first.code == "ok"
    assert len(kinds(journal)) == n  # nothing done, nothing journaled twice


@pytest.mark.parametrize(("req", "why", "code"), [
    (CommandRequest("launch", Origin.CLOUD, "x", request_id="c-4"), "unknown command",
     "unknown_command"),
    (CommandRequest("hold", Origin.LOCAL, "x", request_id="c-5", args={"slot": 3}),
     "takes no arguments", "bad_args"),
    (CommandRequest("sc", Origin.CLOUD, "x", request_id="c-6"), "unknown command",
     "unknown_command"),
])
async def test_malformed_requests_are_refused_and_journaled(entry, req, why, code) -> None:  # type: ignore[no-untyped-def]
    e, journal, _ = entry
    r = await e.submit(req)
    assert not r.accepted and why in (r.reason or "") and r.code == code
    assert kinds(journal) == ["command_received", "command_refused"]
    assert e.core.state == State.EXECUTE


@pytest.mark.parametrize("rid", ["", "x" * 65, "a b", "id\n", "../../etc"])
async def test_a_bad_request_id_is_refused_without_acting(entry, rid: str) -> None:  # type: ignore[no-untyped-def]
    e, journal, _ = entry
    r = await e.submit(CommandRequest("abort", Origin.CLOUD, "x", request_id=rid))
    assert not r.accepted and "request id" in (r.reason or "")
    assert kinds(journal) == [] and e.core.state == State.EXECUTE

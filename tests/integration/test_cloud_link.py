"""swapd on the network: the daemon against the simulated station, publishing to a real
mosquitto (TLS, a client certificate per station, the ACL) and taking signed commands.

Every message the back end receives is checked against its JSON Schema (cloud_support);
every test asserts none failed."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from sim_hw.broker import Broker
from station.cloud import messages
from station.rig import ProcessRig, Rig
from tests.integration.cloud_support import Backend, cloud_config, make_keys, signed

STATION = "ST-A"


def journal_events(path: Path) -> list[tuple[int, str]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(int(r[0]), str(r[1])) for r in
                db.execute("SELECT id, kind FROM events ORDER BY id")]
    finally:
        db.close()


def assert_delivered_once_in_order(backend: Backend, journal: Path) -> list[dict[str, Any]]:
    """Every journaled event reached the back end (after deduplication by event id), in
    journal order, with seq 1..n and no gap."""
    events = backend.events(STATION)
    expected = journal_events(journal)
    got = [(e["event_id"], e["kind"]) for e in events]
    assert got == expected, (len(got), len(expected), got[-5:], expected[-5:])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


def rig_config(broker: Broker, keys: Path, **cloud: Any) -> dict[str, Any]:
    return {"station": {"id": STATION}, "cloud": cloud_config(broker, STATION, keys, **cloud)}


def describe(rig: Any) -> Any:
    cloud = getattr(rig.daemon, "cloud", None)
    return cloud.describe() if cloud is not None else "(another process)"


async def wait_delivered(rig: Any, backend: Backend, journal: Path, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        expected = len(journal_events(journal))
        if len(backend.events(STATION)) >= expected > 0:
            return
        assert loop.time() < end, (f"{len(backend.events(STATION))} of {expected} events "
                                   f"delivered; the link: {describe(rig)}")
        await asyncio.sleep(0.05)


async def delivered_at_stop(rig: Any, backend: Backend) -> None:
    """swapd has stopped (a clean stop: it delivers its backlog before it says offline):
    every event it journaled reaches the back end, those of its last moments too (the
    swap's end and the states after it, journaled while the test waited for the rest)."""
    await wait_delivered(rig, backend, rig.journal_path, 10)
    async with asyncio.timeout(10):
        while backend.on("status")[-1]["online"] is not False:
            await asyncio.sleep(0.05)


async def test_a_swap_seen_from_the_back_end(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    make_keys(keys)
    with Broker(tmp_path / "broker", stations=[STATION]) as broker:
        # a disk "nearly full" below 1 TB free: the alarm is raised, journaled, published
        cfg = rig_config(broker, keys, disk_alarm_free_mb=1_000_000)
        async with Backend(broker) as backend:
            async with Rig(speed=50, vehicles=1, workdir=tmp_path, config=cfg) as rig:
                await rig.wait_for(lambda: len(rig.ended()) == 1, 90, "one swap")
                await wait_delivered(rig, backend, rig.journal_path)
                await rig.wait_for(lambda: backend.on("swaps"), 10, "the swap record")
                status = backend.on("status")
                assert status[0]["online"] is True and status[0]["session"] >= 1
                assert backend.on("state")[-1]["packml_state"] == rig.status()["packml_state"]
                assert backend.on("rack") and backend.on("rack")[-1]["slots"]
            await delivered_at_stop(rig, backend)
        # the daemon stopped: its last word on status is offline
        assert backend.invalid == []
        assert_delivered_once_in_order(backend, rig.journal_path)
        record = backend.on("swaps")[0]
        swap = rig.ended()[0]
        assert record["record_id"] == swap["swap_id"]
        assert record["outcome"] == "completed"
        assert record["pack_in"]["serial"] != record["pack_out"]["serial"]
        assert record["energy_kwh"] is None or record["energy_kwh"] > 0
        assert record["duration_s"] > 0
        assert backend.on("status")[-1]["online"] is False
        disk = [e for e in backend.events(STATION) if e["kind"] == "alarm"
                and e["data"]["alarm"] == "disk_low"]
        assert len(disk) == 1 and "MB free under the journal" in disk[0]["data"]["reason"]


async def test_broker_outage_during_swaps_loses_nothing(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    make_keys(keys)
    with Broker(tmp_path / "broker", stations=[STATION]) as broker:
        async with Backend(broker) as backend:
            async with Rig(speed=50, vehicles=3, workdir=tmp_path,
                           config=rig_config(broker, keys)) as rig:
                await rig.wait_for(lambda: rig.daemon.cloud.stats.published > 5, 30,
                                   "publishing")
                broker.stop()
                # the station goes on swapping without its broker
                ended_before = len(rig.ended())
                await rig.wait_for(lambda: len(rig.ended()) >= ended_before + 1, 120,
                                   "a swap during the outage")
                assert not rig.daemon.cloud.stats.connected, describe(rig)
                assert rig.daemon.cloud.outbox.backlog() > 0
                broker.start()
                await rig.wait_for(lambda: len(rig.ended()) == 3, 120, "three swaps")
                await wait_delivered(rig, backend, rig.journal_path)
                await rig.wait_for(lambda: len(backend.on("swaps")) >= 3, 20,
                                   "3 swap records")
            await delivered_at_stop(rig, backend)
        assert backend.invalid == []
        events = assert_delivered_once_in_order(backend, rig.journal_path)
        assert any(e["replayed"] for e in events), "the backlog is marked replayed"
        assert not events[0]["replayed"]
        # after the outage the present goes first: the birth, then the state, then backlog
        order = [(r.topic.rsplit("/", 1)[-1], r.body) for r in backend.received]
        first_replayed = next(i for i, (leaf, b) in enumerate(order)
                              if leaf == "events" and b["replayed"])
        births = [i for i, (leaf, b) in enumerate(order)
                  if leaf == "status" and b["online"] and b["session"] > 1]
        states = [i for i, (leaf, _) in enumerate(order) if leaf == "state"]
        assert births and births[0] < first_replayed, (births, first_replayed)
        assert any(births[0] < i < first_replayed for i in states), "state before backlog"
        assert len({r["record_id"] for r in backend.on("swaps")}) == 3


async def test_sigkill_while_publishing_loses_nothing(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    make_keys(keys)
    with Broker(tmp_path / "broker", stations=[STATION]) as broker:
        async with Backend(broker) as backend:
            async with ProcessRig(speed=50, vehicles=2, workdir=tmp_path,
                                  config=rig_config(broker, keys)) as rig:
                for _ in range(3):
                    await rig.wait_for(lambda: len(backend.events(STATION)) > 0, 30,
                                       "publishing")
                    await asyncio.sleep(0.7)
                    rig.daemon.kill()
                    # the will: the broker says the station is offline, for its session
                    async with asyncio.timeout(15):
                        while backend.on("status")[-1]["online"] is not False:
                            await asyncio.sleep(0.05)
                    assert backend.on("status")[-1]["reason"] == "connection lost"
                    rig.daemon.start()
                    await resume_after_restart(rig)
                await rig.wait_for(lambda: sum(1 for v in rig.sim.truth()["history"]
                                               if v.get("pack_in")) >= 2, 120, "two swaps")
                await wait_delivered(rig, backend, rig.journal_path, 60)
            await delivered_at_stop(rig, backend)
        assert backend.invalid == []
        events = assert_delivered_once_in_order(backend, rig.journal_path)
        sessions = [s["session"] for s in backend.on("status")]
        assert sessions == sorted(sessions) and len(set(sessions)) >= 4
        # a copy sent again after a restart (acknowledged, but the cursor not yet written)
        # is marked replayed and carries the seq of its first copy
        first = {e["event_id"]: e for e in events}
        for copy in backend.on("events", STATION):
            original = first[copy["event_id"]]
            assert copy["seq"] == original["seq"]
            if copy is not original and copy != original:
                assert copy["replayed"], copy


async def resume_after_restart(rig: ProcessRig) -> None:
    """A restart mid-swap holds the swap until an operator's unhold (the kill tests show
    why); here the operator says go on."""
    st = await rig.daemon.status()
    while st["packml_state"] == "Held" and "waiting" in (st["reason"] or ""):
        await asyncio.sleep(0.05)
        st = await rig.daemon.status()
    if st["packml_state"] == "Held":
        # just restarted, the packs may not be heard yet (pack_silent): ask again
        async with asyncio.timeout(15):
            while not (r := await rig.daemon.command("unhold"))["ok"]:
                assert "interlocks active" in r["error"], r
                await asyncio.sleep(0.2)


async def test_commands_answered_and_journaled(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    key = make_keys(keys)
    with Broker(tmp_path / "broker", stations=[STATION]) as broker:
        async with Backend(broker) as backend, Rig(
                speed=50, vehicles=0, workdir=tmp_path, config=rig_config(broker, keys)) as rig:
            await rig.wait_for(lambda: rig.daemon.cloud.stats.connected, 15, "connected")
            ok = signed("snapshot", {}, station=STATION, key=key)
            await backend.send(STATION, ok)
            r = await backend.wait_response(ok["request_id"])
            assert (r["accepted"], r["code"]) == (True, "ok"), r
            # the same request again: the first answer, nothing done twice
            await backend.send(STATION, ok)
            await rig.wait_for(lambda: sum(1 for b in backend.on("responses")
                                           if b["request_id"] == ok["request_id"]) == 2, 10)
            again = [b for b in backend.on("responses") if b["request_id"] == ok["request_id"]]
            assert again[1]["repeated"] is True and again[1]["accepted"] is True
            bad = dict(signed("request_stop", {}, station=STATION, key=key))
            bad["signature"] = bad["signature"][:-4] + "AAA="
            cases: list[tuple[dict[str, Any] | bytes, str]] = [
                (bad, "bad_signature"),
                (signed("snapshot", {}, station="ST-B", key=key), "wrong_station"),
                (signed("snapshot", {}, station=STATION, key=key, ttl_s=-1), "expired"),
                (signed("snapshot", {}, station=STATION, key=key, key_id="nobody"),
                 "unknown_key"),
                (signed("reset", {}, station=STATION, key=key), "not_permitted"),
                (signed("launch", {}, station=STATION, key=key), "unknown_command"),
                (signed("slot_maintenance", {"slot": 0, "action": "lock", "reason": "x"},
                        station=STATION, key=key), "bad_args"),
            ]
            now = time.time()
            auth = {"version": 1, "valid_from": messages.utc(now - 60),
                    "valid_until": messages.utc(now + 3600),
                    "entries": [{"vin_prefix": "SWS", "families": [20, 25]}]}
            cases += [
                (signed("set_authorisations", auth, station=STATION, key=key), "ok"),
                # the core says no: a list must be newer than the one in force
                (signed("set_authorisations", auth, station=STATION, key=key), "refused"),
            ]
            for body, code in cases:
                assert isinstance(body, dict)
                await backend.send(STATION, body)
                r = await backend.wait_response(body["request_id"])
                assert (r["accepted"], r["code"]) == (code == "ok", code), r
                assert code == "ok" or r["reason"], r
            # the cloud may hold a swap, and never lift the hold
            await rig.wait_for(lambda: rig.status()["packml_state"] == "Execute", 60, "a swap")
            hold = signed("request_hold", {"reason": "grid event"}, station=STATION, key=key)
            await backend.send(STATION, hold)
            assert (await backend.wait_response(hold["request_id"]))["accepted"]
            await rig.wait_for(lambda: rig.status()["packml_state"] == "Held", 10, "Held")
            unhold = signed("unhold", {}, station=STATION, key=key)
            await backend.send(STATION, unhold)
            r = await backend.wait_response(unhold["request_id"])
            assert (r["accepted"], r["code"]) == (False, "not_permitted"), r
            await asyncio.sleep(0.3)
            assert rig.status()["packml_state"] == "Held"
            await backend.send(STATION, b"{not json")
            await backend.send(STATION, b"x" * 1_000_000)
            await rig.wait_for(lambda: {"malformed_json", "too_large"} <= {
                b["code"] for b in backend.on("responses")}, 10, "malformed and too large")
            assert rig.task is not None and not rig.task.done()  # swapd runs on
        assert backend.invalid == []
        kinds = [k for _, k in journal_events(rig.journal_path)]
        assert kinds.count("cloud_command_rejected") >= 6
        assert "command_refused" in kinds  # reset from the cloud


async def test_swaps_go_on_with_no_broker_at_all(tmp_path: Path) -> None:
    """Broker unreachable from the start: swaps complete, the backlog waits on disk, and it
    is all delivered once a broker appears."""
    keys = tmp_path / "keys"
    make_keys(keys)
    broker = Broker(tmp_path / "broker", stations=[STATION])
    try:
        async with Rig(speed=50, vehicles=1, workdir=tmp_path,
                       config=rig_config(broker, keys)) as rig:
            await rig.wait_for(lambda: len(rig.ended()) == 1, 90, "a swap with no broker")
            assert rig.daemon.cloud.stats.last_error is not None
            assert rig.daemon.cloud.outbox.backlog() > 0
            broker.start()
            async with Backend(broker) as backend:
                await wait_delivered(rig, backend, rig.journal_path)
                assert_delivered_once_in_order(backend, rig.journal_path)
                assert all(e["replayed"] for e in backend.events(STATION)[:5])
    finally:
        broker.stop()


async def test_acl_denial_is_not_counted_delivered(tmp_path: Path) -> None:
    """A station whose certificate is another station's: the broker's ACL refuses its
    publications (MQTT 5 PUBACK reason code); the cursor does not move, the link says why,
    and the station goes on swapping."""
    keys = tmp_path / "keys"
    make_keys(keys)
    with Broker(tmp_path / "broker", stations=[STATION, "ST-B"]) as broker:
        cfg = rig_config(broker, keys)
        cert, key = broker.client_files("ST-B")
        cfg["cloud"].update(cert_file=str(cert), key_file=str(key))
        async with Rig(speed=50, vehicles=1, workdir=tmp_path, config=cfg) as rig:
            await rig.wait_for(lambda: len(rig.ended()) == 1, 90, "a swap")
            await rig.wait_for(lambda: "refused" in (rig.daemon.cloud.stats.last_error or ""),
                               15, "the refusal")
            assert rig.daemon.cloud.outbox.cursor().event_id == 0
            assert rig.daemon.cloud.stats.published == 0


async def test_authorisation_from_the_network_decides_who_swaps(tmp_path: Path) -> None:
    """The whole chain: the car's VIN over CAN (J1939 BAM), the list from a signed cloud
    command over the broker, the decision at identify, the inhibit published, the swap
    record naming the VIN. No list: nobody swaps. A list for other families: still not.
    The brand's VIN prefix for this family: the swap goes."""
    from sim_hw.vehicles import VIN_WMI, default_vin

    keys = tmp_path / "keys"
    key = make_keys(keys)
    with Broker(tmp_path / "broker", stations=[STATION]) as broker:
        cfg = rig_config(broker, keys)
        cfg["network"] = {"require_authorisation": True}
        async with Backend(broker) as backend, Rig(
                speed=50, vehicles=1, workdir=tmp_path, config=cfg) as rig:
            def inhibit() -> str:
                return str(rig.status()["start_inhibited"] or "")

            await rig.wait_for(lambda: "no authorisation list received" in inhibit(), 30,
                               "the no-list inhibit")
            family = int(rig.sim.truth()["vehicle_family"])
            other = 20 if family != 20 else 25
            now = time.time()

            async def send_list(version: int, families: list[int]) -> None:
                cmd = signed("set_authorisations", {
                    "version": version, "valid_from": messages.utc(now - 60),
                    "valid_until": messages.utc(now + 3600),
                    "entries": [{"vin_prefix": VIN_WMI, "families": families}]},
                    station=STATION, key=key)
                await backend.send(STATION, cmd)
                r = await backend.wait_response(cmd["request_id"])
                assert r["accepted"], r

            await send_list(1, [other])
            vin = default_vin(1)
            refusal = f"vehicle {vin} not authorised for family {family}"
            await rig.wait_for(lambda: refusal in inhibit(), 30, "the refusal")
            await asyncio.sleep(0.5)
            assert rig.ended() == [] and rig.status()["packml_state"] == "Idle"
            await send_list(2, [family, other])
            await rig.wait_for(lambda: len(rig.ended()) == 1, 90, "the authorised swap")
            await wait_delivered(rig, backend, rig.journal_path)
            await rig.wait_for(lambda: backend.on("swaps"), 10, "the swap record")
        assert backend.invalid == []
        assert any(refusal in str(s["start_inhibited"]) for s in backend.on("state"))
        assert any(e["kind"] == "inhibit" and refusal in str(e["data"]["reason"])
                   for e in backend.events(STATION))
        record = backend.on("swaps")[0]
        assert record["vehicle"]["vin"] == vin and record["outcome"] == "completed"
        assert backend.on("state")[-1]["authorisation_version"] == 2


async def test_a_reserved_pack_goes_to_its_vehicle_and_the_cap_is_honoured(
        tmp_path: Path) -> None:
    """reserve_pack and set_power_cap, signed, over the broker: the first car does not get
    the pack kept for the second; the second does; the network's cap is in force."""
    from sim_hw.config import ArrivalsConfig
    from sim_hw.vehicles import default_vin

    keys = tmp_path / "keys"
    key = make_keys(keys)
    first, second = "SWSBSTN20TS000101", "SWSBSTN20TS000102"
    cars = [{"at_s": at, "family": 20, "chemistry": "nmc", "soc": 15.0, "temp_c": 30.0,
             "vin": vin} for at, vin in ((120.0, first), (130.0, second))]
    assert default_vin(1) not in (first, second)
    with Broker(tmp_path / "broker", stations=[STATION]) as broker:
        async with Backend(broker) as backend, Rig(
                speed=50, vehicles=2, workdir=tmp_path, config=rig_config(broker, keys),
                sim={"arrivals": ArrivalsConfig.model_validate(
                    {"schedule": cars, "patience_s": None})}) as rig:
            def ready20() -> list[dict[str, Any]]:
                return [s for s in rig.core.rack_status(rig.daemon.image, rig.daemon.clock())
                        ["slots"] if s["state"] == "ready" and s["family"] == 20]

            await rig.wait_for(lambda: len(ready20()) >= 2, 30, "two ready family-20 packs")
            best = max(ready20(), key=lambda s: (s["soc_pct"], -s["slot"]))
            reserve = signed("reserve_pack", {
                "vin": second, "family": 20, "min_soc_pct": 80,
                "expires_at": messages.utc(time.time() + 3600)}, station=STATION, key=key)
            cap = signed("set_power_cap", {"cap_kw": 50.0}, station=STATION, key=key)
            for cmd in (reserve, cap):
                await backend.send(STATION, cmd)
            r = await backend.wait_response(reserve["request_id"])
            assert r["accepted"] and r["result"]["serial"] == best["serial"], r
            assert (await backend.wait_response(cap["request_id"]))["accepted"]
            await rig.wait_for(lambda: len(rig.ended()) == 2, 120, "both swaps")
            await rig.wait_for(lambda: len(backend.on("swaps")) == 2, 20, "both records")
            await rig.wait_for(lambda: any(b["power_cap_kw"] == 50.0
                                           for b in backend.on("rack")), 20, "the cap")
        assert backend.invalid == []
        records = {rec["vehicle"]["vin"]: rec for rec in backend.on("swaps")}
        assert records[first]["pack_in"]["serial"] != best["serial"]
        assert records[second]["pack_in"]["serial"] == best["serial"]
        assert backend.on("state")[-1]["power_cap_kw"] == 50.0
        kinds = [e["kind"] for e in backend.events(STATION)]
        assert "reservation_made" in kinds and "power_cap_set" in kinds
        used = [e for e in backend.events(STATION) if e["kind"] == "reservation_ended"]
        assert used and used[0]["data"]["outcome"] == "used", used


async def test_the_back_end_console_and_mqtt5_correlation_against_a_station(
        tmp_path: Path) -> None:
    """`swapnet keygen` and `swapnet send` (a subprocess, TLS with the back end's
    certificate) against the real station; and an MQTT 5 command with a response topic and
    correlation data gets its answer on the responses leaf with the same correlation."""
    import ssl
    import sys

    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from station.cloud.signing import load_private_key

    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    swapnet = [sys.executable, "-m", "station.cloud.swapnet"]
    gen = await asyncio.create_subprocess_exec(
        *swapnet, "keygen", "--out", str(keys), "--key-id", "ops-1")
    assert await gen.wait() == 0
    key_file = keys / "ops-1.key"
    (tmp_path / "ops-1.key").write_bytes(key_file.read_bytes())  # the back end's copy
    (tmp_path / "ops-1.key").chmod(0o600)
    key_file.unlink()  # the station keeps only the public half
    with Broker(tmp_path / "broker", stations=[STATION]) as broker:
        cert, bkey = broker.client_files("backend")
        async with Rig(speed=50, vehicles=0, workdir=tmp_path,
                       config=rig_config(broker, keys)) as rig:
            await rig.wait_for(lambda: rig.daemon.cloud.stats.connected, 15, "connected")
            send = await asyncio.create_subprocess_exec(
                *swapnet, "send", "--broker", f"mqtts://{broker.host}:{broker.port}",
                "--ca", str(broker.ca_file), "--cert", str(cert), "--key", str(bkey),
                "--signing-key", str(tmp_path / "ops-1.key"), "--key-id", "ops-1",
                "--station", STATION, "snapshot", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await send.communicate()
            assert send.returncode == 0, (out, err)
            answer = json.loads(out)
            assert (answer["accepted"], answer["code"]) == (True, "ok"), answer

            ctx = ssl.create_default_context(cafile=str(broker.ca_file))
            ctx.load_cert_chain(str(cert), str(bkey))
            leaf = f"swapnet/v1/{STATION}/responses"
            async with aiomqtt.Client(broker.host, broker.port, identifier="backend-v5",
                                      protocol=aiomqtt.ProtocolVersion.V5,
                                      tls_context=ctx) as c:
                await c.subscribe(leaf, qos=1)
                cmd = signed("snapshot", {}, station=STATION, key_id="ops-1",
                             key=load_private_key(tmp_path / "ops-1.key"))
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = leaf
                props.CorrelationData = b"corr-42"
                await c.publish(f"swapnet/v1/{STATION}/commands", json.dumps(cmd), qos=1,
                                properties=props)
                async with asyncio.timeout(10):
                    async for m in c.messages:
                        body = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                        if body["request_id"] == cmd["request_id"]:
                            break
                assert m.properties is not None
                assert m.properties.CorrelationData == b"corr-42"
                assert body["accepted"] is True

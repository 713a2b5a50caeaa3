"""Pack trust: no CAN frame is believed on its own.

The pack bus carries no authentication (docs/security.md): anything on it can send any
identity, any SOC, any fault flag from any address. What the station does believe is the
PLC's presence sensors, and what it did itself. So:

- A location (the bay, a rack slot) is **bound** to one pack identity when the PLC shows a
  pack arriving there: to the pack the swap put there (STORE, INSTALL), or else to the
  first identity heard after the arrival (a car driving on, a pack found at start-up). It
  stays bound while the PLC shows the location full; the bay's binding also ends with the
  vehicle (another reader token is another car).
- Another identity, or other ratings (cell count, charge voltage, capacity), heard at a
  bound location is a **conflict**: the location is distrusted, and its pack is neither
  selected, charged, nor swapped until an operator releases it (or, at the bay, the car
  leaves). Nothing is ever picked between two identities.
- A SOC that rose more than the charge the station granted since it last judged it (plus
  a margin for the BMS's estimate), a SOC outside 0-100 %, cell readings that contradict
  each other (lowest above highest), or a rack pack charging with more current than it
  was granted are **implausible**: distrusted the same way.

Pure logic: the core calls `update` every scan and acts on the events it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from station.image import (
    BAY,
    Location,
    PackData,
    PackIdentity,
    PackRatings,
    PackReport,
    ProcessImage,
)

SOC_MARGIN_PCT = 3.0  # a BMS's SOC estimate may step by this much without charge
# A rack pack's charge current may exceed what was granted by this much (measurement and
# control overshoot): more is a charger or a BMS that ignores its limit, or a stranger.
OVERCURRENT_FACTOR, OVERCURRENT_MARGIN_A = 1.1, 5.0
CAPACITY_TOLERANCE = 0.001  # relative: a rated capacity is a fixed number of the pack's


@dataclass(frozen=True)
class TrustEvent:
    location: Location
    serial: int | None  # the bound pack's serial (not the one a stranger claims)
    kind: str  # identity_conflict | ratings_conflict | soc_implausible | readings_implausible
    detail: str


@dataclass
class Binding:
    location: Location
    since: float  # monotonic time the PLC showed the pack arrive (or the operator released)
    token: int = 0  # the bay: the vehicle whose pack it is
    identity: PackIdentity | None = None
    ratings: PackRatings | None = None
    capacity_ah: float | None = None
    soc_ref: float | None = None  # the last SOC judged, as the reference for the next
    ah_granted: float = 0.0  # charge the station allowed since soc_ref (ampere-hours)
    # the SOC reference came with the pack (the swap put it here, with what was learnt of it
    # where it was); False: bound on first hearing, it may still draw on an older grant
    history: bool = False
    distrust: TrustEvent | None = None  # why the location is not trusted (None: trusted)


def _same(bound: PackIdentity, heard: PackIdentity) -> bool:
    return (bound.serial, bound.family, bound.chemistry) == \
        (heard.serial, heard.family, heard.chemistry) and \
        (bound.rated_energy_kwh is None or heard.rated_energy_kwh == bound.rated_energy_kwh)


class PackTrust:
    def __init__(self, speed_factor: float = 1.0, settle_s: float = 5.0) -> None:
        self.speed_factor = speed_factor  # simulated seconds per real second (charge sums)
        # a pack may go on with a grant it had before it was bound here (a restart of the
        # station): its current is judged only this long after the binding
        self.settle_s = settle_s
        self.bindings: dict[Location, Binding] = {}
        self._expected: dict[Location,
                             tuple[PackIdentity, float | None, Binding | None, float]] = {}
        self._last_update: float | None = None

    # ---- what the core tells it ---------------------------------------------------------
    def expect(self, loc: Location, identity: PackIdentity, soc_pct: float | None,
               carried: Binding | None = None, granted_ah: float = 0.0) -> None:
        """The swap is about to put this pack at loc (STORE, INSTALL): bind it on arrival.
        `carried`: its binding where it came from (`snapshot`), so that what was learnt of
        it there (ratings, capacity, SOC and the charge granted since) travels with it.
        Without one, `soc_pct` is the reference and `granted_ah` the charge the station
        granted the pack since that SOC was read (`charge_granted_ah`, from the journal)."""
        self._expected[loc] = (identity, soc_pct, carried, granted_ah)

    def snapshot(self, loc: Location) -> Binding | None:
        """A copy of the binding at loc, to carry with the pack when the machine moves it."""
        b = self.bindings.get(loc)
        return None if b is None else dataclasses.replace(b)

    def release(self, loc: Location) -> None:
        """An operator has checked the pack: forget the binding; the next arrival, or the
        next identity heard while the PLC shows the location full, binds anew."""
        self.bindings.pop(loc, None)
        self._expected.pop(loc, None)

    # ---- views ----------------------------------------------------------------------------
    def trusted(self, loc: Location) -> bool:
        b = self.bindings.get(loc)
        return b is not None and b.distrust is None and b.identity is not None

    def distrust(self, loc: Location) -> TrustEvent | None:
        b = self.bindings.get(loc)
        return None if b is None else b.distrust

    def serial(self, loc: Location) -> int | None:
        b = self.bindings.get(loc)
        return None if b is None or b.identity is None else b.identity.serial

    def identity(self, loc: Location) -> PackIdentity | None:
        b = self.bindings.get(loc)
        return None if b is None else b.identity

    def binding_of(self, loc: Location) -> tuple[PackIdentity | None, float]:
        """(identity, since): who is bound at loc and since when; nothing heard before
        `since` is this pack's."""
        b = self.bindings.get(loc)
        return (None, float("inf")) if b is None else (b.identity, b.since)

    def view(self, image: ProcessImage) -> ProcessImage:
        """The image with only the packs that may be acted on: present, bound, trusted,
        and last heard as the pack they are bound to."""
        packs = {}
        for loc, rep in image.packs.items():
            b = self.bindings.get(loc)
            if b is None or b.distrust is not None or b.identity is None:
                continue
            heard = rep.identity
            if heard is None or not _same(b.identity, heard) or \
                    rep.last_seen.get(PackData.IDENTITY, -1e18) < b.since or \
                    rep.last_seen.get(PackData.STATUS, -1e18) < b.since:
                continue  # not heard since it arrived (the bay after an install, say)
            if b.ratings is not None and rep.ratings != b.ratings:
                continue
            packs[loc] = rep
        return ProcessImage(pack_timeouts=image.pack_timeouts, plc=image.plc,
                            plc_read_at=image.plc_read_at, packs=packs)

    # ---- the scan -------------------------------------------------------------------------
    def update(self, image: ProcessImage, now: float,
               granted_a: Mapping[Location, float] | None = None) -> list[TrustEvent]:
        """Bind arrivals, drop departures, judge what was heard since the last scan.
        `granted_a`: the largest charge current granted to each location lately (what it
        may still be drawing)."""
        dt = 0.0 if self._last_update is None else max(0.0, now - self._last_update)
        self._last_update = now
        if image.plc_read_at is None:
            return []
        out: list[TrustEvent] = []
        token = int(image.plc.get("vehicle_token", 0) or 0)
        locations = [BAY, *(Location.rack(n) for n in range(1, image.rack_slot_count() + 1))]
        for loc in [loc for loc in self.bindings if loc not in locations]:
            del self.bindings[loc]  # the rack shrank (a PLC reconfigured)
        for loc in locations:
            if not image.pack_present(loc) or (loc.is_bay and self.bindings.get(loc) is not None
                                               and self.bindings[loc].token != token):
                self.bindings.pop(loc, None)
                continue
            b = self.bindings.get(loc)
            if b is None:
                b = self._bind(loc, image.plc_read_at, token)
            if granted_a:
                b.ah_granted += granted_a.get(loc, 0.0) * dt * self.speed_factor / 3600.0
            rep = image.packs.get(loc)
            if rep is None or b.distrust is not None:
                continue
            if rep is not None and not b.history and now - b.since <= self.settle_s and \
                    rep.max_charge_current_a:
                # bound on first hearing (a restart, a pack put in by hand): until it has
                # settled it may go on with a grant from before, at most at its own limit
                b.ah_granted += rep.max_charge_current_a * dt * self.speed_factor / 3600.0
            ev = self._judge(b, rep)
            if ev is None and not loc.is_bay and now - b.since > self.settle_s:
                ev = self._judge_current(b, rep, (granted_a or {}).get(loc, 0.0))
            if ev is not None:
                b.distrust = ev
                out.append(ev)
        return out

    def _bind(self, loc: Location, t: float, token: int) -> Binding:
        b = Binding(loc, since=t, token=token if loc.is_bay else 0)
        expected = self._expected.pop(loc, None)
        if expected is not None:
            identity, b.soc_ref, carried, b.ah_granted = expected
            b.identity, b.history = identity, b.soc_ref is not None
            if carried is not None and carried.distrust is None and \
                    carried.identity is not None and _same(identity, carried.identity):
                b.identity, b.ratings, b.capacity_ah = (carried.identity, carried.ratings,
                                                        carried.capacity_ah)
                if carried.soc_ref is not None:
                    b.soc_ref, b.ah_granted = carried.soc_ref, carried.ah_granted
                    b.history = True
        self.bindings[loc] = b
        return b

    def _judge(self, b: Binding, rep: PackReport) -> TrustEvent | None:
        since = b.since
        heard = set(rep.identities_latched)
        if rep.identity is not None and rep.last_seen.get(PackData.IDENTITY, -1e18) >= since:
            heard.add(rep.identity)
        if b.identity is None and heard:
            if len(heard) > 1:
                return self._conflict(b, "identity_conflict", "two identities heard at once: "
                                      + " and ".join(sorted(str(i) for i in heard)))
            b.identity = heard.pop()
        elif b.identity is not None:
            for other in sorted(heard, key=str):
                if not _same(b.identity, other):
                    return self._conflict(b, "identity_conflict",
                                          f"bound to {b.identity}, but {other} heard there")
            if b.identity.rated_energy_kwh is None:
                energies = {i.rated_energy_kwh for i in heard if i.rated_energy_kwh is not None}
                if energies:
                    b.identity = PackIdentity(b.identity.serial, b.identity.family,
                                              b.identity.chemistry, min(energies))
        if b.identity is None:
            return None  # nothing to judge against until the pack has said who it is
        ev = self._judge_ratings(b, rep)
        if ev is None:
            ev = self._judge_readings(b, rep)
        return ev

    def _judge_ratings(self, b: Binding, rep: PackReport) -> TrustEvent | None:
        heard = set(rep.ratings_latched)
        if rep.ratings is not None and rep.last_seen.get(PackData.LIMITS, -1e18) >= b.since:
            heard.add(rep.ratings)
        if b.ratings is None and len(heard) == 1:
            b.ratings = next(iter(heard))
        elif len(heard) > 1 or (b.ratings is not None and heard - {b.ratings}):
            others = ", ".join(sorted(str(r) for r in heard - {b.ratings}))
            return self._conflict(b, "ratings_conflict",
                                  f"ratings {b.ratings or 'unknown'} bound, but {others} heard")
        cap = rep.rated_capacity_ah
        if cap is not None and rep.last_seen.get(PackData.HEALTH, -1e18) >= b.since:
            if b.capacity_ah is None:
                b.capacity_ah = cap
            elif abs(cap - b.capacity_ah) > CAPACITY_TOLERANCE * b.capacity_ah:
                return self._conflict(b, "ratings_conflict",
                                      f"rated capacity {b.capacity_ah:g} Ah bound, but "
                                      f"{cap:g} Ah heard")
        return None

    def _judge_current(self, b: Binding, rep: PackReport, granted: float
                       ) -> TrustEvent | None:
        if b.identity is None or rep.current_a is None or \
                rep.last_seen.get(PackData.STATUS, -1e18) < b.since:
            return None
        limit = granted * OVERCURRENT_FACTOR + OVERCURRENT_MARGIN_A
        if rep.current_a > limit:
            return self._conflict(b, "overcurrent",
                                  f"charging at {rep.current_a:g} A, granted {granted:g} A "
                                  f"(at most {limit:g} A allowed)")
        return None

    def _judge_readings(self, b: Binding, rep: PackReport) -> TrustEvent | None:
        fresh_status = rep.last_seen.get(PackData.STATUS, -1e18) >= b.since
        if not fresh_status:
            return None
        socs = [s for s in (rep.soc_pct, rep.peak_soc_pct) if s is not None]
        if any(not 0.0 <= s <= 100.0 for s in socs):
            return self._conflict(b, "soc_implausible",
                                  f"SOC {max(socs, key=lambda s: abs(s - 50)):g} % outside 0-100 %")
        lo, hi = rep.min_cell_temp_c, rep.max_cell_temp_c
        if lo is not None and hi is not None and lo > hi:
            return self._conflict(b, "readings_implausible",
                                  f"lowest cell temperature {lo:g} C above the highest {hi:g} C")
        vlo, vhi = rep.min_cell_v, rep.max_cell_v
        if vlo is not None and vhi is not None and vlo > vhi:
            return self._conflict(b, "readings_implausible",
                                  f"lowest cell voltage {vlo:g} V above the highest {vhi:g} V")
        if not socs:
            return None
        soc, peak = rep.soc_pct, max(socs)
        if b.soc_ref is None:
            b.soc_ref, b.ah_granted = soc, 0.0
            return None
        capacity = b.capacity_ah or rep.rated_capacity_ah
        rise = 0.0 if not capacity else 100.0 * b.ah_granted / capacity
        if not capacity and b.ah_granted > 0:
            rise = 100.0  # charged without a known capacity: no bound to judge by
        limit = b.soc_ref + rise + SOC_MARGIN_PCT
        if peak > limit:
            return self._conflict(
                b, "soc_implausible",
                f"SOC {peak:g} % heard, at most {limit:.1f} % possible (SOC {b.soc_ref:g} % "
                f"before, {b.ah_granted:.2f} Ah granted since)")
        if soc is not None and soc < b.soc_ref:
            b.soc_ref, b.ah_granted = soc, 0.0  # lower: the stricter reference from here
        return None

    @staticmethod
    def _conflict(b: Binding, kind: str, detail: str) -> TrustEvent:
        serial = b.identity.serial if b.identity is not None else None
        return TrustEvent(b.location, serial, kind, f"{b.location}: {detail}")


def charge_granted_ah(grants: Sequence[tuple[float, float]], until: float,
                      speed_factor: float = 1.0) -> float:
    """The most charge (Ah) a pack can have taken under a record of grants: `grants` are
    (time, current A) in the order given, each in force until the next, the last until
    `until` (seconds; a clock stepped back counts no time, never less). `speed_factor`:
    simulated seconds per second, as for `PackTrust`."""
    ends = [t for t, _ in grants[1:]] + [until] if grants else []
    seconds_amps = sum(max(0.0, a) * max(0.0, end - t)
                       for (t, a), end in zip(grants, ends, strict=True))
    return seconds_amps * speed_factor / 3600.0


@dataclass
class AlarmGate:
    """One alarm per location and kind until it clears, and at most `burst` alarms per
    `window_s` in all: a storm of frames must not become a storm of records."""

    burst: int = 20
    window_s: float = 60.0
    active: set[tuple[Location, str, int | None]] = field(default_factory=set)
    suppressed: int = 0  # alarms held back, in all
    _times: list[float] = field(default_factory=list)
    _flood_since: float | None = None  # the burst limit held one back, not yet reported
    _flood_reported: float = float("-inf")

    def admit(self, key: tuple[Location, str, int | None], now: float) -> bool:
        if key in self.active:
            self.suppressed += 1
            return False
        self._times = [t for t in self._times if now - t < self.window_s]
        if len(self._times) >= self.burst:
            self.suppressed += 1
            if self._flood_since is None:
                self._flood_since = now
            return False
        self.active.add(key)
        self._times.append(now)
        return True

    def flooded(self, now: float) -> bool:
        """True once per window while the burst limit holds alarms back: time to say so."""
        if self._flood_since is None or now - self._flood_reported < self.window_s:
            return False
        self._flood_since, self._flood_reported = None, now
        return True

    def clear(self, loc: Location) -> None:
        self.active = {k for k in self.active if k[0] != loc}

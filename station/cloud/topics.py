"""The topic tree, one place: `<prefix>/<station_id>/<leaf>` (prefix `swapnet/v1`).

The version is in the tree, so a v2 can run beside v1 while stations are upgraded; the
station id is one level, so a broker's ACL pattern (`%u`, the certificate's common name)
confines each station to its own subtree, and a clustered broker can shard by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

STATUS: Final = "status"  # retained, QoS 1: birth (online) and the MQTT will (offline)
STATE: Final = "state"  # retained, QoS 1: PackML state, step, interlocks, on change
RACK: Final = "rack"  # retained, QoS 0: every slot, periodic and on significant change
EVENTS: Final = "events"  # QoS 1: every journaled event, in journal order, from the outbox
SWAPS: Final = "swaps"  # QoS 1: one billing-grade record per finished swap, from the outbox
COMMANDS: Final = "commands"  # QoS 1, the back end -> this station: signed commands
RESPONSES: Final = "responses"  # QoS 1, this station -> the back end: one per command
STATION_LEAVES: Final = (STATUS, STATE, RACK, EVENTS, SWAPS, RESPONSES)  # what it publishes


@dataclass(frozen=True)
class Topics:
    prefix: str
    station_id: str

    def leaf(self, name: str) -> str:
        return f"{self.prefix}/{self.station_id}/{name}"

    @property
    def status(self) -> str:
        return self.leaf(STATUS)

    @property
    def state(self) -> str:
        return self.leaf(STATE)

    @property
    def rack(self) -> str:
        return self.leaf(RACK)

    @property
    def events(self) -> str:
        return self.leaf(EVENTS)

    @property
    def swaps(self) -> str:
        return self.leaf(SWAPS)

    @property
    def commands(self) -> str:
        return self.leaf(COMMANDS)

    @property
    def responses(self) -> str:
        return self.leaf(RESPONSES)

    def is_response_topic(self, topic: str) -> bool:
        """A command's MQTT 5 response topic is used only when it is this station's
        responses leaf: the broker's ACL lets a station write nowhere else (a back end
        tells its answers apart by request id and correlation data)."""
        return topic == self.responses


def station_of(topic: str, prefix: str) -> tuple[str, str] | None:
    """(station_id, leaf) of a topic under prefix, or None."""
    if not topic.startswith(prefix + "/"):
        return None
    rest = topic[len(prefix) + 1:].split("/", 1)
    if len(rest) != 2:
        return None
    return rest[0], rest[1]

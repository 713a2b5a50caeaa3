"""PLC link implementations by protocol name, imported only when chosen.

Like python-can's interface registry: a protocol name maps to (module, class name), so a
station that speaks Modbus never imports an OPC UA stack and the reverse. The names are
those of `station.config.PLC_PROTOCOL_SECTIONS` (`plc.protocol` and its `[plc.NAME]`
section); tests/unit/test_plc_contract.py checks that both lists agree.

    link = create_link(cfg.plc, clock=time.monotonic)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from drivers.plc.contract import PlcContract, load_contract
from drivers.plc.link import Clock, PlcLink

if TYPE_CHECKING:
    from station.config import PlcSection

# protocol name -> (module, class name of its PlcLink)
PLC_LINKS: dict[str, tuple[str, str]] = {
    "modbus": ("drivers.plc.modbus_link", "ModbusPlcLink"),
    "opcua": ("drivers.plc.opcua_link", "OpcUaPlcLink"),
}


class UnknownProtocolError(ValueError):
    """No link implementation is registered under that protocol name."""


def protocols() -> list[str]:
    """The protocol names a link can be created for."""
    return sorted(PLC_LINKS)


def link_class(protocol: str) -> type[PlcLink]:
    """Import and return the link class of a protocol."""
    try:
        module_name, class_name = PLC_LINKS[protocol]
    except KeyError:
        raise UnknownProtocolError(
            f"unknown PLC protocol {protocol!r}; known protocols: {', '.join(protocols())}"
        ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, PlcLink)):
        raise TypeError(f"{module_name}.{class_name} is not a PlcLink")
    return cls


def check_timing(plc: PlcSection, contract: PlcContract) -> None:
    """The configuration must keep the contract's promises to the PLC."""
    promised = contract.timing.ctrl_heartbeat_period_ms / 1000
    if plc.heartbeat_period_s > promised:
        raise ValueError(
            f"plc.heartbeat_period_s = {plc.heartbeat_period_s:g} s breaks the PLC contract "
            f"({contract.origin}, version {contract.version}): ctrl_heartbeat at least every "
            f"{promised:g} s"
        )


def create_link(plc: PlcSection, *, clock: Clock) -> PlcLink:
    """The link of `plc.protocol`, built from `[plc]`, its protocol section and the contract
    (`plc.contract`; None: the contract shipped with the package).

    Raises UnknownProtocolError, ContractError or the implementation's own addressing
    error (e.g. RegisterMapError), all ValueErrors naming the file and the problem."""
    cls = link_class(plc.protocol)
    contract = load_contract(plc.contract)
    check_timing(plc, contract)
    return cls.from_config(plc, plc.link_section(), contract, clock)

"""sim_hw: the simulated station hardware, speaking the real wire protocols.

- config.py      [sim] TOML config (pydantic), load_sim_config()
- packs.py       SimPack: one pack and its BMS (pure model)
- vehicles.py    arriving vehicles (pure, seeded)
- motion.py      timed, interpolated motions made of phases
- mechanics.py   StationModel: ground truth + the PLC's command handshake and interlocks
- plc_server.py  PlcServer: pymodbus Modbus TCP server over the model
- can_packs.py   CanPacks: the packs' CAN frames (python-can), PackControl in
- faults.py      FaultRegistry: named faults, set/clear at any moment
- observer.py    Observer: physical safety invariants on the ground truth
- control.py     ControlServer: the local control API (JSON lines on a Unix socket)
- station_sim.py SimStation: all of it on one clock
- cli.py         the swap-sim console script (run, fault list/set/clear, observer)
"""

"""The station's link to the network: MQTT telemetry from the journal's outbox, signed
commands from the back end (docs/telemetry.md is the contract)."""

"""swap-bench: scenarios written once, run against the simulator (CI) or a real bench.

scenario.py  the scenario file (TOML): set-up, actions, expectations
runner.py    runs one scenario on a target, records a timeline, checks the expectations
target.py    what a target offers the runner (the `Target` protocol)
sim_target.py   the simulator and swapd started here (the shared rig)
bench_target.py a running station's swapd (local API) and a fault adapter
adapters.py  fault adapters: a Modbus TCP relay/IO module, or a prompt to the engineer
result.py    what a run produced (verdict, checks, timeline): the reports read only this
junit.py, html_report.py  the reports
cli.py       `swap-bench run SCENARIOS... --target sim|bench`
"""

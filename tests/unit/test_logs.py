"""station.logs: structlog's events and the standard library's records (pymodbus,
python-can, ...) come out through one handler in one format."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from station.logs import (
    bind_swap,
    capture_to_file,
    configure_logging,
    is_configured,
    reset_logging,
)


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    reset_logging()


def lines(stream: io.StringIO) -> list[str]:
    return [ln for ln in stream.getvalue().splitlines() if ln.strip()]


def test_json_lines_for_structlog_and_foreign_loggers() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    bind_swap("S-0001", "lift")
    logging.getLogger("pymodbus.logging").warning("Failed to connect %s", "127.0.0.1:1")
    logging.getLogger("can").warning("bus up")
    structlog.get_logger("swapd").info("swap.step_done", slot=3)
    records = [json.loads(ln) for ln in lines(out)]  # every line is one JSON object
    assert len(records) == 3
    for r in records:
        assert {"level", "logger", "timestamp", "event"} <= r.keys(), r
        assert r["swap_id"] == "S-0001" and r["step"] == "lift", r
    modbus, can, own = records
    assert modbus["logger"] == "pymodbus.logging"
    assert modbus["level"] == "warning"
    assert modbus["event"] == "Failed to connect 127.0.0.1:1"
    assert can["logger"] == "can" and can["level"] == "warning"
    assert own["logger"] == "swapd" and own["event"] == "swap.step_done" and own["slot"] == 3


def test_level_applies_to_both() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", stream=out)
    logging.getLogger("pymodbus.logging").info("Connection to Modbus server established")
    structlog.get_logger("swapd").info("plc.connection", connected=True)
    logging.getLogger("pymodbus.logging").error("Repeating....")
    structlog.get_logger("swapd").warning("plc.disconnected")
    assert [json.loads(ln)["event"] for ln in lines(out)] == ["Repeating....",
                                                             "plc.disconnected"]


def test_exceptions_stay_on_one_json_line() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
        structlog.get_logger("swapd").exception("scan.failed")
    records = [json.loads(ln) for ln in lines(out)]
    assert len(records) == 2
    for r in records:
        assert "RuntimeError: boom" in r["exception"], r


def test_warnings_module_is_routed() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    (r,) = [json.loads(ln) for ln in lines(out)]
    assert r["logger"] == "py.warnings" and "deprecated thing" in r["event"]


def test_console_renders_foreign_records_too() -> None:
    out = io.StringIO()
    configure_logging("info", "console", stream=out)
    bind_swap("S-0002", None)
    logging.getLogger("pymodbus.logging").warning("Failed to connect")
    structlog.get_logger("swapd").info("swapd.start")
    text = lines(out)
    assert len(text) == 2
    assert "Failed to connect" in text[0] and "[pymodbus.logging]" in text[0]
    assert "swapd.start" in text[1] and "[swapd]" in text[1] and "swap_id=S-0002" in text[1]
    with pytest.raises(ValueError):
        json.loads(text[0])


def test_auto_is_json_off_a_terminal() -> None:
    out = io.StringIO()  # not a tty
    configure_logging("info", "auto", stream=out)
    logging.getLogger("pymodbus.logging").warning("x")
    assert json.loads(lines(out)[0])["logger"] == "pymodbus.logging"


def test_configuring_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", stream=first)
    configure_logging("info", "json", stream=second)
    logging.getLogger("pymodbus.logging").warning("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


def test_default_stream_is_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    logging.getLogger("pymodbus.logging").warning("to stderr")
    assert json.loads(capsys.readouterr().err.splitlines()[0])["event"] == "to stderr"


def test_capture_to_file_keeps_the_console_level(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("warning", "json", stream=out)
    path = tmp_path / "run" / "swapd.log.jsonl"
    with capture_to_file(path, level="info"):
        bind_swap("S-0003", "unlock")
        structlog.get_logger("swapd").info("swap.step_started")
        logging.getLogger("pymodbus.logging").warning("Failed to connect")
        logging.getLogger("pymodbus.logging").debug("not at info")
    structlog.get_logger("swapd").info("after the capture")
    captured = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert [r["event"] for r in captured] == ["swap.step_started", "Failed to connect"]
    assert captured[0]["swap_id"] == "S-0003"
    assert [json.loads(ln)["event"] for ln in lines(out)] == ["Failed to connect"]
    assert logging.getLogger().level == logging.WARNING


def test_capture_to_file_without_configuration_is_for_the_block_only(tmp_path: Path) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    path = tmp_path / "swapd.log.jsonl"
    with capture_to_file(path):
        structlog.get_logger("swapd").info("swapd.start")
        logging.getLogger("pymodbus.logging").info("Server listening.")  # a library at info
        logging.getLogger("pymodbus.logging").warning("Failed to connect")
    assert [json.loads(ln)["logger"] for ln in path.read_text().splitlines()] == [
        "swapd", "pymodbus.logging"]
    assert not is_configured()
    assert root.handlers == handlers and root.level == level


# ------------------------------------------------------------- the libraries' noise


def test_library_loggers_sit_at_warning_unless_configured_otherwise() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    logging.getLogger("pymodbus.logging").debug("send: 0x0 0x1 0x0 0x0")  # a frame dump
    logging.getLogger("asyncio").debug("Using selector: EpollSelector")
    logging.getLogger("can.interfaces.udp_multicast").info("could not connect ...")
    structlog.get_logger("swapd").debug("scan.done")  # swapd's own debug stays
    assert [json.loads(ln)["event"] for ln in lines(out)] == ["scan.done"]
    out2 = io.StringIO()
    configure_logging("debug", "json", stream=out2, library_level="debug")
    logging.getLogger("pymodbus.logging").debug("send: 0x0 0x1")
    assert [json.loads(ln)["event"] for ln in lines(out2)] == ["send: 0x0 0x1"]
    reset_logging()
    assert logging.getLogger("pymodbus").level == logging.NOTSET


def test_library_records_rate_limited_with_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import station.logs as logs

    now = [100.0]
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    monkeypatch.setattr(logs._library_limit.limiter, "_clock", lambda: now[0])
    log = logging.getLogger("pymodbus.logging")
    for tid in range(1, 11):  # the same error, its numbers aside
        log.error(f"ERROR: request ask for transaction_id={tid} but got id={tid + 1}")
    log.error("Invalid Modbus protocol id: 7")  # another kind: not held back
    structlog.get_logger("swapd").warning("plc.poll_error")  # swapd's own: never held
    structlog.get_logger("swapd").warning("plc.poll_error")
    now[0] += 1.5
    log.error("ERROR: request ask for transaction_id=99 but got id=3")
    records = [json.loads(ln) for ln in lines(out)]
    assert [(r["event"][:24], r.get("suppressed")) for r in records] == [
        ("ERROR: request ask for t", None),
        ("Invalid Modbus protocol ", None),
        ("plc.poll_error", None),
        ("plc.poll_error", None),
        ("ERROR: request ask for t", 9),
    ]


def test_a_record_of_many_lines_is_one_line_with_frames_and_detail() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("pymodbus.logging").error(
        "No response received after 0 retries\n>>>>> send: 0x0 0x1\n>>>>> recv: 0x0 0x2")
    logging.getLogger("asyncio").error(
        "Task exception was never retrieved\nfuture: <Task finished name='Task-4'>")
    modbus, aio = (json.loads(ln) for ln in lines(out))
    assert modbus["event"] == "No response received after 0 retries"
    assert modbus["frames"] == ["send: 0x0 0x1", "recv: 0x0 0x2"]
    assert aio["event"] == "Task exception was never retrieved"
    assert aio["detail"] == ["future: <Task finished name='Task-4'>"]


def test_a_record_whose_arguments_do_not_fit_is_logged_as_it_came(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("pymodbus.logging").warning("bad %d format", "args")
    (r,) = [json.loads(ln) for ln in lines(out)]
    assert "bad %d format" in r["event"] and "'args'" in r["event"]
    assert "Logging error" not in capsys.readouterr().err


def test_thread_and_unraisable_exceptions_are_records() -> None:
    import gc
    import threading

    before = threading.excepthook  # pytest's own
    out = io.StringIO()
    configure_logging("info", "json", stream=out)

    def fail() -> None:
        raise ZeroDivisionError("in a thread")

    t = threading.Thread(target=fail, name="worker-7")
    t.start()
    t.join()

    class Leaky:
        def __del__(self) -> None:
            raise ValueError("in __del__")

    Leaky()
    gc.collect()
    records = [json.loads(ln) for ln in lines(out)]
    thread = next(r for r in records if "worker-7" in r["event"])
    assert thread["logger"] == "python" and "ZeroDivisionError" in thread["exception"]
    assert any("in __del__" in r.get("exception", "") for r in records), records
    reset_logging()
    assert threading.excepthook is before  # ours is gone again

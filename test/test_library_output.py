"""Library output while a model loads: held back and folded into one line when the load fails,
passed on unchanged when it works (atdt_ros.library_output)."""

from __future__ import annotations

import logging
import os

import pytest

from atdt_ros.library_output import Captured, captured, clean, summary

ORT_LINE = ("\x1b[1;31m2026-12-02 23:47:50.803418522 [E:onnxruntime:, inference_session.cc:3437 "
            "operator()] Exception during initialization: /onnxruntime_src/onnxruntime/core/"
            "optimizer/initializer.cc:79 onnxruntime::Initializer::Initializer(const "
            "onnxruntime::Graph&, bool) [ONNXRuntimeError] : 1 : FAIL : tensorprotoutils.cc:2201 "
            "GetExtDataFromTensorProto External initializer: w offset: 0 size to read: 8 given "
            "file_length: 4 are out of bounds or can not be read in full.\x1b[m\n")


def test_what_a_failing_load_writes_to_fd_2_is_held_back_and_folded(capfd) -> None:
    with pytest.raises(RuntimeError) as err:
        with captured() as held:
            os.write(2, ORT_LINE.encode())  # as a C++ logger writes it, below Python
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : load failed")
    assert capfd.readouterr().err == ""
    assert summary(err.value, held) == (
        "RuntimeError: load failed (it printed: Exception during initialization: External "
        "initializer: w offset: 0 size to read: 8 given file_length: 4 are out of bounds or can "
        "not be read in full.)")


def test_what_a_working_load_writes_is_passed_on_unchanged(capfd) -> None:
    with captured("atdt_test.lib"):
        os.write(2, b"W: a library warning\n")
    assert capfd.readouterr().err == "W: a library warning\n"


def test_the_exception_a_library_logged_is_the_reason_given() -> None:
    # torch.export.load logs the real error with its traceback, then raises "check the warnings"
    lib = logging.getLogger("atdt_test.export")
    with pytest.raises(RuntimeError) as err:
        with captured("atdt_test.export") as held:
            try:
                raise ValueError("weight_3: file not found")
            except ValueError:
                lib.warning("Ran into the following error when deserializing", exc_info=True)
            raise RuntimeError("Please check the warnings above for possible errors.")
    assert summary(err.value, held) == "ValueError: weight_3: file not found"
    assert lib.handlers == [] and lib.propagate  # the logger is given back as it was


def test_a_message_already_in_the_exception_is_not_repeated() -> None:
    exc = RuntimeError(ORT_LINE.split("operator()] ")[1])
    assert summary(exc, Captured(text=ORT_LINE)) == clean(f"RuntimeError: {exc}")
    assert "\n" not in summary(exc, Captured(text=ORT_LINE))


def test_log_records_of_a_working_load_are_passed_on_as_their_levels_allow(caplog) -> None:
    lib = logging.getLogger("atdt_test.quiet")
    lib.setLevel(logging.ERROR)
    try:
        with caplog.at_level(logging.DEBUG, logger="atdt_test"):
            with captured("atdt_test.quiet"):
                lib.warning("below the logger's level: not shown")
                lib.error("shown after the load")
        assert [r.getMessage() for r in caplog.records] == ["shown after the load"]
    finally:
        lib.setLevel(logging.NOTSET)

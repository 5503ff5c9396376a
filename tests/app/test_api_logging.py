"""Structured logs: one JSON object per line with the request id of the request that logged."""

from __future__ import annotations

import json
import logging

import pytest

from app.observability import JsonFormatter, RequestIdFilter, request_id_var


def test_json_lines_carry_the_request_id_and_extra_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = logging.LogRecord("movierec.http", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    record.status = 200
    token = request_id_var.set("req-42")
    try:
        assert RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "GET /x" and doc["request_id"] == "req-42"
    assert doc["level"] == "INFO" and doc["logger"] == "movierec.http" and doc["status"] == 200

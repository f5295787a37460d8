"""What kafka-python's loggers let through once the project has set them up
(:func:`auditstream.kafka.interface.quiet_client_logs`)."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture
def fresh_selector_logger():
    """``kafka.net.selector`` as nobody configured it, put back after."""
    logger = logging.getLogger("kafka.net.selector")
    level = logger.level
    logger.setLevel(logging.NOTSET)
    yield logger
    logger.setLevel(level)


def test_kafka_pythons_slow_task_warning_is_quieted(fresh_selector_logger, caplog) -> None:
    """Review 2026-12-05: on a loaded machine 'broker start', 'dlq replay' and 'monitor' printed
    "WARNING kafka.net.selector: Task ... ran for 0.146s (>0.100s threshold). It is blocking the
    event loop" from the admin client that creates the topics."""
    from auditstream.kafka.interface import quiet_client_logs

    quiet_client_logs()
    assert fresh_selector_logger.getEffectiveLevel() == logging.ERROR
    with caplog.at_level(logging.WARNING):  # (the root's level: the selector's own stays)
        fresh_selector_logger.warning("Task <Task x> ran for 0.146s (>0.100s threshold). It is blocking the event loop")
        fresh_selector_logger.error("an error still shows")
    assert "blocking the event loop" not in caplog.text and "an error still shows" in caplog.text


def test_a_selector_level_set_on_purpose_is_kept(fresh_selector_logger) -> None:
    from auditstream.kafka.interface import quiet_client_logs

    fresh_selector_logger.setLevel(logging.DEBUG)
    quiet_client_logs()
    assert fresh_selector_logger.level == logging.DEBUG

"""kafka-python checksums with the crc32c C extension (a serve dependency); the check notices
the pure-Python fallback."""

from __future__ import annotations

import pytest

from auditstream.kafka.factory import kafka_python_has_fast_crc


def test_the_c_extension_is_used_and_its_absence_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    from kafka.record import _crc32c, util

    assert kafka_python_has_fast_crc()
    monkeypatch.setattr(util.calc_crc32c, "__defaults__", (_crc32c.crc,))
    assert not kafka_python_has_fast_crc()

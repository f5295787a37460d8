"""stack/faults_soak.py's figures from lag and memory samples (the soak itself is bench only)."""

from __future__ import annotations

import os
from pathlib import Path

from stack.faults_soak import log_errors, rss_mb, soak_figures


def test_lag_is_bounded_when_the_second_half_is_no_worse_than_the_first() -> None:
    steady = [(t, 40 + t % 3, [100.0, 100.0]) for t in range(0, 600, 10)]
    figures = soak_figures(steady, warmup_s=120, slack=64)
    assert figures["lag_bounded"] and figures["lag_max"] == 42 and figures["rss_growth_max"] == 0.0
    growing = [(t, t, [100.0 + t / 10, 100.0]) for t in range(0, 600, 10)]
    figures = soak_figures(growing, warmup_s=120, slack=64)
    assert not figures["lag_bounded"] and figures["lag_end"] == 590
    assert figures["rss_mb_after_warmup"] == [112.0, 100.0] and figures["rss_growth_max"] == round((159 - 112) / 112, 4)


def test_no_samples_is_not_a_pass() -> None:
    assert soak_figures([], warmup_s=0, slack=0)["lag_bounded"] is False


def test_errors_in_serve_logs_are_counted(tmp_path: Path) -> None:
    (tmp_path / "serve-0.log").write_text("2026-12-01 10:00:00,000 INFO x: fine\n"
                                          "2026-12-01 10:00:01,000 ERROR x: broke\nTraceback (most recent call last):\n")
    (tmp_path / "monitor-0.log").write_text("2026-12-01 10:00:01,000 ERROR x: not a serve log\n")
    assert log_errors(tmp_path) == 2
    assert rss_mb(os.getpid()) > 1

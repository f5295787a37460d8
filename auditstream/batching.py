"""When a micro-batch stops collecting: size, wait, and a latency budget (``latency_budget_ms``).

Triton's dynamic batcher runs a batch as soon as a preferred size can be formed and otherwise
delays requests at most ``max_queue_delay``; MLServer's adaptive batching cuts at
``max_batch_size`` or ``max_batch_time``; BentoML's dispatcher releases a batch once the time
already waited plus the *estimated* execution time would pass its latency goal. The loop
(:class:`auditstream.stream.StreamLoop`) does the same with what it can measure:

- a batch is cut when it holds ``max_batch_size`` records, or its oldest record has waited
  ``max_wait_ms`` -- counted from when it was written to Kafka (its timestamp) when that is
  plausible, as Triton counts its queue delay from a request's arrival: records that queued while
  the previous batch ran are batched at once, not held another ``max_wait_ms``;
- with a latency budget, also once ``waited + compute(full batch) >= budget``: waiting longer
  could make the oldest record's wait + its batch's compute overrun the budget. ``compute`` is
  fitted on the batches this process ran (:class:`ComputeEstimate`: a fixed cost per batch plus
  a cost per record, exponentially weighted so it follows load changes), "waited" again from
  the record's Kafka timestamp.

Pure functions and a small estimator: tested without a broker (tests/auditstream/test_batching.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ComputeEstimate:
    """Seconds a batch of ``n`` records takes, ``fixed_s + per_record_s * n``, from exponentially
    weighted least squares over the observed batches (``decay`` per observation)."""

    decay: float = 0.9
    _w: float = 0.0
    _wn: float = 0.0
    _wt: float = 0.0
    _wnn: float = 0.0
    _wnt: float = 0.0

    def observe(self, n: int, seconds: float) -> None:
        d = self.decay
        self._w, self._wn, self._wt = d * self._w + 1, d * self._wn + n, d * self._wt + seconds
        self._wnn, self._wnt = d * self._wnn + n * n, d * self._wnt + n * seconds

    def seconds(self, n: int) -> float | None:
        """The estimate for a batch of ``n``; None before any batch ran."""
        if self._w == 0:
            return None
        mean_n, mean_t = self._wn / self._w, self._wt / self._w
        var_n = self._wnn / self._w - mean_n * mean_n
        if var_n <= 1e-9 * max(1.0, mean_n * mean_n):  # one batch size so far: proportional to n
            return mean_t * n / mean_n if mean_n > 0 else mean_t
        slope = max(0.0, (self._wnt / self._w - mean_n * mean_t) / var_n)
        return max(0.0, mean_t + slope * (n - mean_n))


def collect_for_ms(max_wait_ms: float, latency_budget_ms: float, full_batch_s: float | None) -> float:
    """How long after its oldest record arrived a batch may keep collecting (ms): ``max_wait_ms``,
    shortened with a budget to ``budget - compute(full batch)`` (never below 0)."""
    if latency_budget_ms <= 0 or full_batch_s is None:
        return max_wait_ms
    return max(0.0, min(max_wait_ms, latency_budget_ms - full_batch_s * 1000.0))


def queued_s(timestamp_ms: int, now_s: float, at_most_ms: float) -> float:
    """How long a record already waited in Kafka: now − its timestamp, or 0 when the timestamp is
    missing or in the future (another host's clock); at most ``at_most_ms`` (the longer of
    ``max_wait_ms`` and the budget), so a producer whose clock lags only makes batches smaller,
    never stalls them."""
    if timestamp_ms <= 0:
        return 0.0
    return min(max(0.0, now_s - timestamp_ms / 1000.0), at_most_ms / 1000.0)

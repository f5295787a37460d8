"""Altair charts of the overview: data in, chart out (no Streamlit, no statistics).

Each builder takes rows that ``monitor`` already computed and only decides how they look, so the
charts are tested by building them and checking their data and encodings.
"""

from __future__ import annotations

from typing import Any, Sequence

import altair as alt
import pandas as pd

HEIGHT = 240
BUDGET_COLOUR = "#d62728"
MAIN_COLOUR = "#1f77b4"
BAR_STEP = 32  # pixels per bar of a bar_chart (band and gap)
TIME_AXIS = alt.Axis(format="%H:%M", labelAngle=0)


def _time(frame: pd.DataFrame, column: str = "t_s") -> pd.DataFrame:
    frame = frame.copy()
    # Vega-Lite draws naive timestamps as they are: UTC here, like the timestamps in the logs.
    frame["time"] = pd.to_datetime(frame[column], unit="s", utc=True).dt.tz_convert(None)
    return frame


def throughput_chart(series: Sequence[tuple[float, int]], bucket_s: float,
                     window_s: tuple[float, float] | None = None) -> alt.Chart:  # fmt: skip
    """Verdicts per minute over time (one bar spanning each bucket), over ``window_s`` (start,
    end; seconds) so a single busy minute shows as one bar in its hour, not the whole width."""
    frame = _time(pd.DataFrame(series, columns=["t_s", "verdicts"]))
    frame["end"] = frame["time"] + pd.to_timedelta(bucket_s, unit="s")
    frame["per_min"] = frame["verdicts"] * 60.0 / bucket_s
    return (
        alt.Chart(frame, height=HEIGHT)
        .mark_bar(color=MAIN_COLOUR, stroke="white", strokeWidth=1)
        .encode(
            x=alt.X("time:T", title=None, axis=TIME_AXIS, scale=_time_domain(window_s)),
            x2="end:T",
            y=alt.Y("per_min:Q", title="verdicts / min"),
            y2=alt.datum(0),  # bars rise from 0 (with x and x2 set, a bar without y2 is a dash at y)
            tooltip=[alt.Tooltip("time:T", format="%H:%M:%S"), "verdicts:Q"],
        )
    )


def _time_domain(window_s: tuple[float, float] | None) -> alt.Scale | None:
    if window_s is None:
        return alt.Undefined
    start, end = pd.to_datetime(list(window_s), unit="s", utc=True).tz_convert(None)
    return alt.Scale(domain=[start.isoformat(), end.isoformat()])


def coverage_chart(rows: Sequence[dict[str, Any]]) -> alt.Chart:
    """Share auto-accepted over time, one line per model: rows of {t_s, model, coverage}."""
    frame = _time(pd.DataFrame(rows))
    return (
        alt.Chart(frame, height=HEIGHT)
        .mark_line(point=True)
        .encode(
            x=alt.X("time:T", title=None, axis=TIME_AXIS),
            y=alt.Y("coverage:Q", title="auto-accepted", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("model:N", title="model"),
            tooltip=["model:N", alt.Tooltip("coverage:Q", format=".1%"), alt.Tooltip("time:T", format="%H:%M:%S")],
        )
    )


def error_interval_chart(rows: Sequence[dict[str, Any]],
                         rate: str = "error rate of auto-accepted answers") -> alt.LayerChart:
    """Audited error of auto-accepted answers (or another audited ``rate``: a detector's
    false-discovery rate of accepted boxes) with its 95% interval, against the certified budget:
    rows of {model, error, ci_low, ci_high, budget, audits}."""
    frame = pd.DataFrame(rows)
    base = alt.Chart(frame, height=max(90, 60 * len(frame)))
    y = alt.Y("model:N", title=None)
    interval = base.mark_rule(strokeWidth=3, color=MAIN_COLOUR).encode(
        y=y, x=alt.X("ci_low:Q", title=rate, axis=alt.Axis(format="%")), x2="ci_high:Q",
        tooltip=["model:N", "audits:Q", alt.Tooltip("error:Q", format=".2%"), alt.Tooltip("ci_low:Q", format=".2%"),
                 alt.Tooltip("ci_high:Q", format=".2%"), alt.Tooltip("budget:Q", format=".2%")],
    )  # fmt: skip
    point = base.mark_point(filled=True, size=90, color=MAIN_COLOUR).encode(y=y, x="error:Q")
    budget = base.mark_tick(color=BUDGET_COLOUR, thickness=3, size=30).encode(y=y, x="budget:Q")
    return alt.layer(interval, point, budget)


def risk_coverage_chart(points: Sequence[dict[str, float]], threshold_coverage: float | None,
                        budget: float | None) -> alt.LayerChart:  # fmt: skip
    """The model card's risk-coverage curve (error among accepted vs share accepted), with the
    certified operating point and the risk budget."""
    frame = pd.DataFrame(points)
    layers: list[alt.Chart] = [
        alt.Chart(frame, height=HEIGHT).mark_line(color=MAIN_COLOUR).encode(
            x=alt.X("coverage:Q", title="coverage (share auto-accepted)", axis=alt.Axis(format="%")),
            y=alt.Y("risk:Q", title="error among accepted", axis=alt.Axis(format="%")),
            tooltip=[alt.Tooltip(c, format=".3f") for c in frame.columns],
        )
    ]
    if budget is not None:
        layers.append(alt.Chart(pd.DataFrame({"budget": [budget]})).mark_rule(color=BUDGET_COLOUR, strokeDash=[6, 4])
                      .encode(y="budget:Q"))  # fmt: skip
    if threshold_coverage is not None:
        layers.append(alt.Chart(pd.DataFrame({"coverage": [threshold_coverage]})).mark_rule(color="gray", strokeDash=[2, 2])
                      .encode(x="coverage:Q"))  # fmt: skip
    return alt.layer(*layers)


def cost_chart(rows: Sequence[dict[str, Any]], optimum: float | None, current: float | None) -> alt.LayerChart:
    """Cost per item against the threshold, model+humans vs humans only: rows of
    {threshold, policy, cost_per_item}; rules at the optimum and the current threshold."""
    frame = pd.DataFrame(rows)
    layers: list[alt.Chart] = [
        alt.Chart(frame, height=HEIGHT).mark_line().encode(
            x=alt.X("threshold:Q", title="confidence threshold"),
            y=alt.Y("cost_per_item:Q", title="cost per item"),
            color=alt.Color("policy:N", title=None, legend=alt.Legend(orient="bottom"),
                            scale=alt.Scale(domain=["model + humans", "humans only"], range=[MAIN_COLOUR, "#888888"])),
            tooltip=["policy:N", alt.Tooltip("threshold:Q", format=".3f"), alt.Tooltip("cost_per_item:Q", format=".4f")],
        )
    ]
    for value, colour in ((optimum, "#2ca02c"), (current, "gray")):
        if value is not None:
            layers.append(alt.Chart(pd.DataFrame({"threshold": [value]})).mark_rule(color=colour, strokeDash=[4, 3])
                          .encode(x="threshold:Q"))  # fmt: skip
    return alt.layer(*layers)


def bar_chart(values: dict[str, float], title: str, percent: bool = False) -> alt.Chart:
    """Horizontal bars, one per key (auditor throughput, gold accuracy). The height is a step per
    bar (``alt.Step``), so every name keeps its row and the bars never overlap, however many."""
    frame = pd.DataFrame({"name": list(values), "value": list(values.values())})
    axis = alt.Axis(format="%") if percent else alt.Axis(format="d", tickMinStep=1)
    return (
        alt.Chart(frame, height=alt.Step(BAR_STEP))
        .mark_bar(color=MAIN_COLOUR)
        .encode(y=alt.Y("name:N", title=None, sort="-x"), x=alt.X("value:Q", title=title, axis=axis),
                tooltip=["name:N", alt.Tooltip("value:Q", format=".1%" if percent else "d")])  # fmt: skip
    )


def learning_curve_chart(rows: Sequence[dict[str, Any]]) -> alt.Chart:
    """Certified coverage and certified risk per model version (the learning curve read from the
    registry's cards, and the coverage certified from audits where ``certify --from-audits`` wrote
    one): rows of {version, measure, value}, version an integer."""
    frame = pd.DataFrame(rows)
    return (
        alt.Chart(frame, height=HEIGHT)
        .mark_line(point=True)
        .encode(
            x=alt.X("version:O", title="model version"),
            y=alt.Y("value:Q", title=None, axis=alt.Axis(format="%")),
            color=alt.Color("measure:N", title=None, legend=alt.Legend(orient="bottom"),
                            scale=alt.Scale(domain=["certified coverage", "coverage certified from audits",
                                                    "certified risk", "risk target"],
                                            range=[MAIN_COLOUR, "#2ca02c", "#ff7f0e", BUDGET_COLOUR])),
            tooltip=["version:O", "measure:N", alt.Tooltip("value:Q", format=".2%")],
        )
    )

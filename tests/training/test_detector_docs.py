"""docs/detector.md's Targets table and README's detector rows quote the shipped card
(stack/demo_models/detector/card.json). Review 2026-12-06: after the model was trained again
(4e676a4) they still gave the earlier model's figures (mAP 0.888, test FDR 1.10%, 543 s of
training, its calibration constants and certificate)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARD = json.loads((ROOT / "stack" / "demo_models" / "detector" / "card.json").read_text())


def _short(x: float) -> str:
    return f"{x:.1e}".replace("e-0", "e-")  # 1.1e-5, as the docs write it


def _targets_rows() -> dict[str, str]:
    text = (ROOT / "docs" / "detector.md").read_text()
    section = text[text.index("## Targets and what we measured"):]
    section = section[:section.index("\n## ", 1)]
    return {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}


def _card_figures() -> dict[str, list[str]]:
    m, cal, cert = CARD["metrics"], CARD["calibration"], CARD["extra"]["certificate"]
    test, hard, pool = m["test_triage"], m["hard_test_triage"], CARD["extra"]["certificate_outcome"]
    seconds = CARD["training"]["train_seconds"]
    return {
        "standard mAP@[.5:.95] ≥ 0.85": [f"**{m['map_50_95']:.3f}**", f"mAP@.75 {m['map_75']:.3f}"],
        "standard mAP@.5 ≥ 0.99": [f"**{m['map_50']:.3f}**"],
        "hard labels, same model": [f"**{m['hard_map_50_95']:.3f}**", f"**{m['hard_map_50']:.3f}**",
                                    f"mAP@.75 {m['hard_map_75']:.3f}"],
        "training ≤ 10 min on 2 cores": [f"**{seconds:,.0f} s: {'met' if seconds <= 600 else 'not met'}**"],
        "ONNX parity ≤ 1e-4": [f"**{_short(m['parity_max_abs_diff'])}**"],
        "score calibration": [f"a = {cal['a']:.2f}", f"a_rival = {cal['a_rival']:g}", f"a_read = {cal['a_read']:.2f}",
                              f"b = {cal['b']:.2f}", f"box ECE {cal['ece_before']:.1%} → {cal['ece_after']:.2%}"],
        "certificate": [f"δ_1 = {cert['delta']:.4f}", f"{cert['n_select']} selection labels",
                        f"**t_low = {cert['threshold_low']:g}**", f"bound {cert['low']['bound']:.5f}",
                        f"the other {cert['n_test']:,}, from {cert['high']['start']:g}",
                        f"{cert['high']['tested']} thresholds tested", f"last p = {cert['high']['last_p']:.5f}",
                        f"**t_high = t_low = {cert['threshold_high']:g}**",
                        f"served FDR {cert['high']['fdr_calibration']:.2%}"],
        "on the certificate labels": [f"FDR {pool['accepted_fdr']:.2%}", f"{pool['objects_auto_accepted']:.1%} of digits",
                                      f"miss share {pool['miss_rate']:.2%}",
                                      f"{pool['auditor_boxes_per_image']:g} auditor boxes"],
        "test FDR of accepted boxes ≤ 2%": [f"**{test['accepted_fdr']:.2%}: met**",
                                            f"{test['accepted_boxes_per_image'] * 1000:,.0f} accepted boxes"],
        "≥ 95% of test digits auto-accepted": [f"**{test['objects_auto_accepted']:.1%}**"],
        "test miss share (β = 1%)": [f"**{test['miss_rate']:.2%}: above β**", f"the certificate pool: {pool['miss_rate']:.2%}"],
        "auditor load (test)": [f"{test['auditor_boxes_per_image']:g} boxes per label"],
        "hard test labels (no promise: certified on standard)": [
            f"FDR {hard['accepted_fdr']:.2%}", f"{hard['objects_auto_accepted']:.1%} of digits",
            f"miss share {hard['miss_rate']:.2%}"],
    }


def test_the_targets_table_quotes_the_shipped_card() -> None:
    rows = _targets_rows()
    assert CARD["extra"]["certificate"]["threshold_high"] == CARD["extra"]["certificate"]["threshold_low"]  # as the row says
    for target, figures in _card_figures().items():
        assert target in rows, f"no row {target!r} in docs/detector.md's Targets table"
        for figure in figures:
            assert figure in rows[target], f"{target}: the card says {figure!r}; the row: {rows[target]}"


def test_readme_quotes_the_shipped_detector_card() -> None:
    m, test, pool = CARD["metrics"], CARD["metrics"]["test_triage"], CARD["extra"]["certificate_outcome"]
    readme = " ".join((ROOT / "README.md").read_text().split())  # line breaks as spaces
    assert (f"{m['map_50_95']:.3f} / {m['map_50']:.3f} / {_short(m['parity_max_abs_diff'])} / "
            f"{CARD['training']['train_seconds']:,.0f} s") in readme
    assert (f"{test['accepted_fdr']:.2%} ({pool['accepted_fdr']:.2%} on the certificate's labels) / "
            f"{test['objects_auto_accepted']:.1%} / {test['miss_rate']:.2%} ({pool['miss_rate']:.2%}") in readme
    assert f"{test['accepted_fdr']:.2%} of accepted boxes are false and {test['miss_rate']:.2%} of digits" in readme

"""The task-kind contract holds across the layers: every kind is registered in each layer, an
unknown kind is refused with a clear message, and no module outside the kinds' own compares a
task-kind value (variation lives in one module per kind per layer: STYLE habit 16)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from auditstream import tasks
from auditstream.errors import DecodeError, UnknownTaskKind
from auditstream.registry import ModelCard, TensorSpec, TriageSpec
from auditstream.wire import Prediction, Route, TaskKind

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("auditstream", "qc", "store", "serving", "monitor", "dashboards", "training", "stack")
KIND_VALUES = {k.value for k in TaskKind}


def test_every_kind_has_a_task_and_a_view() -> None:
    from dashboards import tasks as views

    for kind in TaskKind:
        assert tasks.lookup(kind).kind is kind
        assert views.lookup(kind).kind is kind
        assert tasks.lookup(kind.value) is tasks.lookup(kind)


def test_only_kinds_whose_equality_is_equal_keys_take_agreement_as_concordance() -> None:
    """The paired gate counts a shadow's agreement with live as a concordant pair only where
    ``same_answer`` is an equivalence (store/shadow.py); a kind that compares with a tolerance
    (its own ``same_answer``) must say it is not one."""
    for kind in TaskKind:
        task = tasks.lookup(kind)
        keyed = type(task).same_answer is tasks.Task.same_answer
        assert task.agreement_is_concordance is keyed, kind
    assert tasks.lookup("detection").agreement_is_concordance is False


def test_unknown_kinds_are_refused_with_the_known_ones_named() -> None:
    with pytest.raises(UnknownTaskKind, match=r"unknown task kind 'poetry'.*'classification'"):
        tasks.lookup("poetry")
    with pytest.raises(UnknownTaskKind, match="poetry"):
        ModelCard(name="m", version="1", task="poetry", inputs=[TensorSpec("x", "float32", [None, 2])],
                  outputs=[TensorSpec("probs", "float32", [None, 2])], triage=TriageSpec(0.5))
    record = {"v": 1, "request_id": "r", "model": "m", "model_version": "1", "task": "poetry", "output": 1,
              "confidence": 0.5, "route": "AUTO", "reason": "", "qc_inclusion_prob": 0.1, "created_at_s": 1.0}
    with pytest.raises(DecodeError, match="'task'"):
        Prediction.from_bytes(json.dumps(record).encode())


def test_the_kind_travels_as_its_value() -> None:
    p = Prediction("r", "m", "1", "sequence", "02139", 0.9, Route.AUTO, "", 0.1, 1.0)
    assert p.task is TaskKind.SEQUENCE and json.loads(p.to_bytes())["task"] == "sequence"
    assert Prediction.from_bytes(p.to_bytes()) == p


@pytest.mark.parametrize("kind,a,b,same", [
    ("classification", 3, 3, True),
    ("classification", 3, "3", False),
    ("sequence", "02139", "02139", True),
    ("caption", "a red  circle", "a red circle", True),
    ("caption", "a red circle", "a blue circle", False),
    ("detection", [{"box": [0, 0, 4, 4], "label": 1, "score": 0.9}, {"box": [5, 5, 9, 9], "label": 2}],
     [{"box": [5.01, 5, 9, 9], "label": 2, "score": 1.0}, {"box": [0, 0, 4, 4], "label": 1}], True),
    ("detection", [{"box": [0, 0, 4, 4], "label": 1}], [{"box": [0, 0, 4, 4], "label": 2}], False),
    ("policy", 1, 1, True),
    ("policy", None, None, True),
])
def test_answer_equality_is_equality_of_keys(kind: str, a, b, same: bool) -> None:
    task = tasks.lookup(kind)
    assert task.same_answer(a, b) is same and (task.answer_key(a) == task.answer_key(b)) is same


def _kind_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing a task-kind value: a kind name as a string, ``TaskKind.X``, or ``.task`` /
    ``task`` against anything (``==``, ``!=``, ``in``, ``is``), or a ``match`` on kind values."""
    def mentions_kind(node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value in KIND_VALUES:
                return True
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "TaskKind":
                return sub.attr in TaskKind.__members__
            if isinstance(sub, ast.Attribute) and sub.attr == "task":
                return True
            if isinstance(sub, ast.Name) and sub.id == "task":
                return True
        return False

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(mentions_kind(n) for n in [node.left, *node.comparators]):
            lines.append(node.lineno)
        elif isinstance(node, ast.match_case) and mentions_kind(node.pattern):
            lines.append(node.pattern.lineno)
    return lines


def test_no_module_outside_the_kinds_compares_task_kinds() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if "tasks" in rel.parts[:-1]:  # the kinds' own modules
                continue
            found += [f"{rel}:{line}" for line in _kind_comparisons(ast.parse(path.read_text(), str(rel)))]
    assert not found, f"task-kind comparisons outside the kind modules (look the kind up instead): {found}"


def test_the_comparison_finder_finds_comparisons() -> None:
    source = ('if card.task == "policy": pass\nif task in ("sequence", "caption"): pass\n'
              'x = kind is TaskKind.DETECTION\nmatch t:\n    case "caption": pass\n'
              'if settings.triage_policy == "no-qc": pass\n')
    assert _kind_comparisons(ast.parse(source)) == [1, 2, 3, 5]

"""dashboards.table_shortcuts: shortcut strings become the key events the page script compares."""

from __future__ import annotations

import pytest

from dashboards.table_shortcuts import key_combination


def test_letters_by_code_named_keys_by_key_and_the_modifiers() -> None:
    assert key_combination("Ctrl+Enter") == {"code": None, "key": "Enter", "mod": True, "alt": False, "shift": False}
    assert key_combination("Alt+X") == {"code": "KeyX", "key": None, "mod": False, "alt": True, "shift": False}
    assert key_combination("Cmd+Shift+4") == {"code": "Digit4", "key": None, "mod": True, "alt": False, "shift": True}


def test_an_unknown_modifier_says_what_to_use() -> None:
    with pytest.raises(ValueError, match="use modifiers Ctrl, Cmd, Alt, Shift"):
        key_combination("Hyper+X")

"""The form's keyboard shortcuts, also while a table cell is selected.

Streamlit's data editor (glide-data-grid) handles the keys pressed on a selected cell itself and
does not let them bubble to the page, where Streamlit listens for button shortcuts: without help,
Ctrl+Enter, Alt+X and Alt+S did nothing until Esc had cleared the selection. This adds one
capture-phase listener to the page (``st.html`` with its script allowed): a listed combination
pressed inside a table clicks the button it belongs to, before the grid sees it. Pressed on an
*open* cell editor (a text field in a pop-over outside the table), the keys stay the editor's:
Enter saves the cell first, then the shortcut works. The script comes from this module only,
never from data.

The click waits ``SETTLE_MS``: the data editor hands a saved cell to its form only after a 150 ms
debounce (Streamlit 1.67: ``useDebouncedCallback(…, 150)`` in its DataFrame bundle), so Enter
followed at once by Ctrl+Enter submitted the table as it was before the edit: a correction
recorded as an accept. ``streamlit>=1.40`` is not pinned; the browser test would catch a longer
debounce.
Timers fire in order of their due time, so a click due later than the debounce comes after it.
One click per press: a shortcut pressed again while its click waits does nothing more.
"""

from __future__ import annotations

import json
from typing import Sequence

import streamlit as st

_SCRIPT = """<span hidden></span><script>
(() => {
  const shortcuts = %s;
  window.__auditstreamTableShortcuts = shortcuts;  // the latest run's buttons
  if (window.__auditstreamTableListener) return;   // one listener per page
  window.__auditstreamTableListener = true;
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (!(target instanceof Element) || !target.closest("[data-testid='stDataFrame']")) return;
    const wanted = window.__auditstreamTableShortcuts.find((s) =>
      (s.key ? event.key === s.key : event.code === s.code) &&
      s.mod === (event.ctrlKey || event.metaKey) && s.alt === event.altKey && s.shift === event.shiftKey);
    if (!wanted) return;
    const find = () => [...document.querySelectorAll("button")].find(
      (b) => b.innerText.trim().startsWith(wanted.label) && !b.disabled && b.offsetParent !== null);
    if (!find()) return;
    event.preventDefault();
    event.stopPropagation();
    if (window.__auditstreamTableClickPending) return;
    window.__auditstreamTableClickPending = true;
    setTimeout(() => {  // after the table's last edit has reached the form
      window.__auditstreamTableClickPending = false;
      const button = find();
      if (button) button.click();
    }, %d);
  }, true);
})();
</script>"""

# Longer than the data editor's 150 ms debounce of a saved cell (see the module's docstring).
SETTLE_MS = 300


def key_combination(shortcut: str) -> dict[str, object]:
    """``"Ctrl+Enter"`` / ``"Alt+X"`` as the modifier flags and the key the script compares: a
    letter or digit by ``KeyboardEvent.code`` (Alt+X types a character on a Mac, so ``key`` would
    not say X), a named key by ``KeyboardEvent.key`` (Enter is ``code`` NumpadEnter on a keypad)."""
    *modifiers, key = [part.strip().lower() for part in shortcut.split("+")]
    unknown = set(modifiers) - {"ctrl", "cmd", "mod", "meta", "alt", "option", "shift"}
    if unknown or not key:
        raise ValueError(f"shortcut {shortcut!r}: use modifiers Ctrl, Cmd, Alt, Shift and one key, like 'Alt+X'")
    single = len(key) == 1 and key.isalnum()
    return {"code": (f"Key{key.upper()}" if key.isalpha() else f"Digit{key}") if single else None,
            "key": None if single else key.capitalize(),
            "mod": bool({"ctrl", "cmd", "mod", "meta"} & set(modifiers)),
            "alt": bool({"alt", "option"} & set(modifiers)), "shift": "shift" in modifiers}


def table_shortcuts_ui(buttons: Sequence[tuple[str, str]]) -> None:
    """Make each ``(shortcut, button label)`` work from inside a table too (the label's start
    identifies the button on the page)."""
    shortcuts = [{**key_combination(shortcut), "label": label} for shortcut, label in buttons]
    st.html(_SCRIPT % (json.dumps(shortcuts), SETTLE_MS), unsafe_allow_javascript=True)

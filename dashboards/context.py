"""What every page is given: the dashboard's options, the audit store, the model registry.

The store is opened once per server process (``st.cache_resource``) and shared by all sessions:
each read or write takes a connection from the store's bounded pool for its own duration, so
Streamlit's running every rerun on a new thread opens no new connection per rerun. Model cards
are read through a small cache (they change only when a new version is published, which gets a
new version number).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from auditstream.errors import ModelNotFound, ModelRefused
from auditstream.registry import ModelCard, ModelRegistry
from dashboards.config import DashboardConfig
from store.qc_history import QCHistory, QCPoint
from store import AuditStore


@dataclass(frozen=True)
class DashboardContext:
    config: DashboardConfig
    store: AuditStore
    registry: ModelRegistry
    history: QCHistory

    def qc_history(self, since_s: float) -> list[QCPoint]:
        """QC snapshots the monitor process recorded since ``since_s``, oldest first."""
        return self.history.since(since_s)

    def card(self, model: str, version: str | None = None) -> ModelCard | None:
        """The model card (``None`` if the registry does not have this model or version)."""
        return _card(str(self.registry.root), model, version)

    def labels(self, model: str, version: str | None = None) -> list[str]:
        card = self.card(model, version) or self.card(model)
        return list(card.labels) if card else []

    def models(self) -> list[str]:
        """Models that have items in the store or versions in the registry."""
        # store.models() is one DISTINCT over the items' model column; store_stats() aggregated
        # the whole verdict history on every workbench rerun.
        return sorted(set(self.store.models()) | set(self.registry.names()))


@st.cache_data(ttl=60, show_spinner=False)
def _card(root: str, model: str, version: str | None) -> ModelCard | None:
    try:
        return ModelRegistry(Path(root)).card(model, version)
    except (ModelNotFound, ModelRefused):
        return None

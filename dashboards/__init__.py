"""The Streamlit audit app: login and roles, the auditor's workbench, the overview. How each task
kind's item is drawn, shown and edited lives in :mod:`dashboards.tasks`.

May import: ``store`` (items, verdicts, accounts, QC history), ``qc`` (cost model, snapshots),
``auditstream``, streamlit; never the monitor process, ``serving``, ``training`` or torch.
"""

"""The API: chart JSON served from memory, built from snapshots (snapshots.py) by the chart registry
(charts.py); module-level endpoints (handlers.py) wired by the app factory (app.py); one settings table
(settings.py)."""

"""The API: chart JSON served from memory (app.py), built from snapshots (snapshots.py) by charts.py."""

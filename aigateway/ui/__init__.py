"""The dashboard: its routes and sign-in pages (dashboard.py) and the files it is made of
(static/: one HTML page, its script as ES modules and a style sheet, nothing built)."""

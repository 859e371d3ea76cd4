"""The Console: API, store and (later) Radar, served from one process.

``store`` holds the SQLAlchemy models and migrations, ``services`` the logic
(no HTTP types), ``api`` the FastAPI routers, ``app`` the application factory.
"""

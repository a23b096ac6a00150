"""The data layer: one schema and one set of queries for SQLite and PostgreSQL.

SQLAlchemy Core builds the SQL for either database (aiosqlite or asyncpg underneath) and
Alembic keeps the schema, so the store (store.py) writes each query once.
"""

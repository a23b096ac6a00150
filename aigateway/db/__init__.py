"""The data layer: one schema and one set of queries for SQLite and PostgreSQL.

SQLAlchemy Core builds the SQL for either database (aiosqlite or asyncpg underneath) and
Alembic keeps the schema. Store (store.py) is the connection (connection.py) and one
module of queries per table (keyrows, users, prices, sessions, models, usage, reports).
"""

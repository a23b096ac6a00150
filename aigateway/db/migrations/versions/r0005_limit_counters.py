"""limit_counters, gateway_instances, instance_in_flight, aigateway_admit(): shared limits

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "limit_counters",
        sa.Column("key_id", sa.BigInteger, primary_key=True),
        sa.Column("minute_start", sa.BigInteger, nullable=False),
        sa.Column("minute_used", sa.BigInteger, nullable=False),
        sa.Column("hour_start", sa.BigInteger, nullable=False),
        sa.Column("hour_used", sa.BigInteger, nullable=False),
        sa.Column("day_start", sa.BigInteger, nullable=False),
        sa.Column("day_tokens", sa.BigInteger, nullable=False),
        sa.Column("day_reserved", sa.BigInteger, nullable=False),
        sa.Column("in_flight", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "gateway_instances",
        sa.Column("instance", sa.Text, primary_key=True),
        sa.Column("seen_at", sa.Double, nullable=False),
    )
    op.create_table(
        "instance_in_flight",
        sa.Column("instance", sa.Text, primary_key=True),
        sa.Column("key_id", sa.BigInteger, primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("reserved", sa.BigInteger, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.get_bind().exec_driver_sql(ADMIT_FUNCTION)  # as written: no bind parameters


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")


# PostgreSQL only: admit up to len(p_reserves) requests of one key in one call (one round
# trip for every request of the key that arrived while the previous call was out), under
# the key's row lock, so simultaneous calls from any gateway are serialised and exact.
# Each request reserves its element of p_reserves (tokens; 0 without a token quota).
# Returns how many were admitted (the first ones) and the row as it is afterwards.
ADMIT_FUNCTION = """
CREATE OR REPLACE FUNCTION aigateway_admit(
    p_key bigint, p_rpm bigint, p_rph bigint, p_tpd bigint, p_cap bigint,
    p_reserves bigint[]
) RETURNS TABLE (
    admitted integer, minute_start bigint, minute_used bigint, hour_start bigint,
    hour_used bigint, day_start bigint, day_tokens bigint, day_reserved bigint,
    in_flight bigint, now double precision
) LANGUAGE plpgsql AS $$
DECLARE
    t double precision := extract(epoch FROM clock_timestamp());
    m bigint := (floor(t / 60) * 60)::bigint;
    h bigint := (floor(t / 3600) * 3600)::bigint;
    d bigint := (floor(t / 86400) * 86400)::bigint;
    c limit_counters%ROWTYPE;
    k integer := 0;
    r bigint;
BEGIN
    SELECT * INTO c FROM limit_counters WHERE key_id = p_key FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO limit_counters VALUES (p_key, m, 0, h, 0, d, 0, 0, 0)
            ON CONFLICT (key_id) DO NOTHING;
        SELECT * INTO c FROM limit_counters WHERE key_id = p_key FOR UPDATE;
    END IF;
    IF c.minute_start <> m THEN c.minute_start := m; c.minute_used := 0; END IF;
    IF c.hour_start <> h THEN c.hour_start := h; c.hour_used := 0; END IF;
    IF c.day_start <> d THEN c.day_start := d; c.day_tokens := 0; END IF;
    FOREACH r IN ARRAY p_reserves LOOP
        EXIT WHEN p_cap > 0 AND c.in_flight >= p_cap;
        EXIT WHEN p_rpm > 0 AND c.minute_used >= p_rpm;
        EXIT WHEN p_rph > 0 AND c.hour_used >= p_rph;
        EXIT WHEN p_tpd > 0 AND c.day_tokens + c.day_reserved >= p_tpd;
        c.minute_used := c.minute_used + 1;
        c.hour_used := c.hour_used + 1;
        c.in_flight := c.in_flight + 1;
        c.day_reserved := c.day_reserved + r;
        k := k + 1;
    END LOOP;
    IF k > 0 THEN
        UPDATE limit_counters AS l SET
            minute_start = c.minute_start, minute_used = c.minute_used,
            hour_start = c.hour_start, hour_used = c.hour_used,
            day_start = c.day_start, day_tokens = c.day_tokens,
            day_reserved = c.day_reserved, in_flight = c.in_flight
        WHERE l.key_id = p_key;
    END IF;
    RETURN QUERY SELECT k, c.minute_start, c.minute_used, c.hour_start, c.hour_used,
        c.day_start, c.day_tokens, c.day_reserved, c.in_flight, t;
END
$$
"""

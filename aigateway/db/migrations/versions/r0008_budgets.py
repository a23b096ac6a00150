"""budgets on users and keys, and the spend several gateways share (PostgreSQL)

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("users", "keys"):
        # NULL budget: none. Amount in micro-units of CURRENCY; period total, daily,
        # weekly or monthly; alert in percent.
        op.add_column(table, sa.Column("budget", sa.BigInteger))
        op.add_column(table, sa.Column("budget_period", sa.Text))
        op.add_column(table, sa.Column("budget_alert", sa.Integer))
    op.create_table(
        "budget_spend",
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("period", sa.Text, nullable=False),
        sa.Column("period_start", sa.BigInteger, nullable=False),
        sa.Column("spent", sa.BigInteger, nullable=False),
        sa.Column("reserved", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "instance_budget_held",
        sa.Column("instance", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("reserved", sa.BigInteger, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.get_bind().exec_driver_sql(RESERVE_FUNCTION)


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")


# PostgreSQL only: check a request's budgets (one or two owners, in the order given, which
# callers keep sorted so that two calls never wait on each other's rows) and, if every one
# leaves room, reserve p_price against each. An owner's row is made, or remade when its
# budget's period changed, from what the usage table says it spent in the period; a new
# period of the same kind starts at 0. Returns whether it passed and each owner's
# spent and reserved as they now are.
RESERVE_FUNCTION = """
CREATE OR REPLACE FUNCTION aigateway_budget_reserve(
    p_owners text[], p_periods text[], p_starts bigint[], p_amounts bigint[], p_price bigint
) RETURNS TABLE (r_passed boolean, r_spent bigint[], r_reserved bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    n integer := array_length(p_owners, 1);
    i integer;
    b budget_spend%ROWTYPE;
    v_kind text;
    v_id bigint;
    from_usage bigint;
    ok boolean := true;
    s bigint[] := '{}';
    r bigint[] := '{}';
BEGIN
    FOR i IN 1..n LOOP
        SELECT * INTO b FROM budget_spend WHERE owner = p_owners[i] FOR UPDATE;
        IF NOT FOUND OR b.period <> p_periods[i] THEN
            v_kind := split_part(p_owners[i], ':', 1);
            v_id := split_part(p_owners[i], ':', 2)::bigint;
            IF v_kind = 'key' THEN
                SELECT coalesce(sum(u.cost), 0) INTO from_usage FROM usage AS u
                WHERE u.key_id = v_id AND u.ts >= p_starts[i];
            ELSE
                SELECT coalesce(sum(u.cost), 0) INTO from_usage FROM usage AS u
                WHERE u.key_id IN (SELECT k.id FROM keys AS k WHERE k.user_id = v_id)
                    AND u.ts >= p_starts[i];
            END IF;
            IF b.owner IS NULL THEN  -- (a call of another gateway may make it first)
                INSERT INTO budget_spend VALUES (p_owners[i], p_periods[i], p_starts[i],
                    from_usage, 0) ON CONFLICT (owner) DO NOTHING;
            ELSE
                UPDATE budget_spend SET period = p_periods[i], period_start = p_starts[i],
                    spent = from_usage WHERE owner = p_owners[i];
            END IF;
            SELECT * INTO b FROM budget_spend WHERE owner = p_owners[i] FOR UPDATE;
        ELSIF b.period_start < p_starts[i] THEN
            b.period_start := p_starts[i];
            b.spent := 0;
            UPDATE budget_spend SET period_start = b.period_start, spent = 0
            WHERE owner = p_owners[i];
        END IF;
        IF p_price > 0 THEN
            ok := ok AND b.spent + b.reserved + p_price <= p_amounts[i];
        ELSE
            ok := ok AND b.spent + b.reserved < p_amounts[i];
        END IF;
        s := s || b.spent;
        r := r || b.reserved;
    END LOOP;
    IF ok AND p_price > 0 THEN
        UPDATE budget_spend SET reserved = budget_spend.reserved + p_price
        WHERE owner = ANY(p_owners);
        FOR i IN 1..n LOOP
            r[i] := r[i] + p_price;
        END LOOP;
    END IF;
    RETURN QUERY SELECT ok, s, r;
END
$$
"""

"""costs in nano-units (10^-9 of CURRENCY), sums that saturate

Revision ID: 0014
Revises: 0013

Until 0013 a cost was rounded half up to the micro-unit per request, so a request worth
0.4 micro-units cost 0 and 1,000 of them cost nothing. From here on costs are whole
nano-units (prices and budget amounts stay micro-units, the admin's unit): every stored
cost, hourly cost sum, shared spend and reservation is multiplied by 1,000. A stored value
too large for that is set to the maxima the gateway now keeps to (pricing.py: one request
MAX_COST_NANO, a sum MAX_SUM_NANO), as are the sums the PostgreSQL functions of 0008 and
0013 make, so no price an admin may set makes a database integer overflow.

Gateways of earlier releases must be stopped before this runs: they would write
micro-units beside nano-units.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# (pricing.MAX_COST_NANO and MAX_SUM_NANO, as they are at this revision.)
MAX_COST_NANO = 10**18
MAX_SUM_NANO = 4 * 10**18


def _times_1000(column: str, most: int) -> str:
    return f"{column} = CASE WHEN {column} > {most // 1000} THEN {most} ELSE {column} * 1000 END"


def upgrade() -> None:
    bind = op.get_bind()
    bind.exec_driver_sql(
        f"UPDATE usage SET {_times_1000('cost', MAX_COST_NANO)} WHERE cost IS NOT NULL"
    )
    bind.exec_driver_sql(f"UPDATE usage_hourly SET {_times_1000('cost', MAX_SUM_NANO)}")
    bind.exec_driver_sql(
        f"UPDATE budget_spend SET {_times_1000('spent', MAX_SUM_NANO)},"
        f" {_times_1000('reserved', MAX_SUM_NANO)}"
    )
    bind.exec_driver_sql(f"UPDATE instance_budget_held SET {_times_1000('reserved', MAX_SUM_NANO)}")
    if bind.dialect.name == "postgresql":
        for function in (LOAD, SETTLE, REAP):
            bind.exec_driver_sql(function)  # as written: no bind parameters


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")


# An owner's `budget_spend` row for a budget of p_period starting at p_start, locked: made,
# or remade when its budget's period changed, from what the usage table says it spent in
# the period (a sum that stops at MAX_SUM_NANO); a new period of the same kind starts at 0.
# (The check and reservation around it are aigateway_body_reserve's, revision 0015.)
LOAD = f"""
CREATE OR REPLACE FUNCTION aigateway_budget_row(
    p_owner text, p_period text, p_start bigint
) RETURNS budget_spend LANGUAGE plpgsql AS $$
DECLARE
    b budget_spend%ROWTYPE;
    v_kind text;
    v_id bigint;
    from_usage bigint;
BEGIN
    SELECT * INTO b FROM budget_spend WHERE owner = p_owner FOR UPDATE;
    IF NOT FOUND OR b.period <> p_period THEN
        v_kind := split_part(p_owner, ':', 1);
        v_id := split_part(p_owner, ':', 2)::bigint;
        IF v_kind = 'key' THEN
            SELECT least(coalesce(sum(u.cost), 0), {MAX_SUM_NANO})::bigint INTO from_usage
            FROM usage AS u WHERE u.key_id = v_id AND u.ts >= p_start;
        ELSE
            SELECT least(coalesce(sum(u.cost), 0), {MAX_SUM_NANO})::bigint INTO from_usage
            FROM usage AS u
            WHERE u.key_id IN (SELECT k.id FROM keys AS k WHERE k.user_id = v_id)
                AND u.ts >= p_start;
        END IF;
        IF b.owner IS NULL THEN  -- (a call of another gateway may make it first)
            INSERT INTO budget_spend VALUES (p_owner, p_period, p_start, from_usage, 0)
            ON CONFLICT (owner) DO NOTHING;
        ELSE
            UPDATE budget_spend SET period = p_period, period_start = p_start,
                spent = from_usage WHERE owner = p_owner;
        END IF;
        SELECT * INTO b FROM budget_spend WHERE owner = p_owner FOR UPDATE;
    ELSIF b.period_start < p_start THEN
        b.period_start := p_start;
        b.spent := 0;
        UPDATE budget_spend SET period_start = p_start, spent = 0 WHERE owner = p_owner;
    END IF;
    RETURN b;
END
$$
"""

# 0013's settlement, with the spend stopping at MAX_SUM_NANO.
SETTLE = f"""
CREATE OR REPLACE FUNCTION aigateway_budget_settle(
    p_instance text, p_owners text[], p_periods text[], p_starts bigint[],
    p_reserved bigint[], p_costs bigint[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    v_held bigint;
    v_back bigint;
BEGIN
    FOR i IN SELECT n::integer FROM unnest(p_owners) WITH ORDINALITY AS u(owner, n)
        ORDER BY owner COLLATE "C"
    LOOP
        PERFORM 1 FROM budget_spend WHERE owner = p_owners[i] FOR UPDATE;
        SELECT reserved INTO v_held FROM instance_budget_held
        WHERE instance = p_instance AND owner = p_owners[i];
        v_back := least(p_reserved[i], coalesce(v_held, 0));
        IF v_back > 0 THEN
            UPDATE instance_budget_held SET reserved = reserved - v_back
            WHERE instance = p_instance AND owner = p_owners[i];
        END IF;
        UPDATE budget_spend AS b SET
            reserved = greatest(0, b.reserved - v_back),
            spent = CASE WHEN p_starts[i] > b.period_start THEN p_costs[i]
                ELSE least(b.spent::numeric + p_costs[i], {MAX_SUM_NANO})::bigint END,
            period_start = greatest(b.period_start, p_starts[i])
        WHERE b.owner = p_owners[i] AND b.period = p_periods[i];
    END LOOP;
END
$$
"""

# 0013's reaping, with what is given back summed without overflow.
REAP = f"""
CREATE OR REPLACE FUNCTION aigateway_budget_reap(p_instance text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_owner text;
    v_reserved bigint;
BEGIN
    FOR v_owner IN
        SELECT DISTINCT owner COLLATE "C" AS o FROM instance_budget_held
        WHERE instance NOT IN (SELECT instance FROM gateway_instances)
            OR instance = p_instance
        ORDER BY o
    LOOP
        PERFORM 1 FROM budget_spend WHERE owner = v_owner FOR UPDATE;
        WITH gone AS (
            DELETE FROM instance_budget_held
            WHERE owner = v_owner AND (
                instance NOT IN (SELECT instance FROM gateway_instances)
                OR instance = p_instance)
            RETURNING reserved
        )
        SELECT least(coalesce(sum(reserved), 0), {MAX_SUM_NANO})::bigint INTO v_reserved
        FROM gone;
        UPDATE budget_spend SET reserved = greatest(0, reserved - v_reserved)
        WHERE owner = v_owner;
    END LOOP;
END
$$
"""

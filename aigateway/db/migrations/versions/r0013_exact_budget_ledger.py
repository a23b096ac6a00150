"""shared budgets: each gateway's reservations kept exactly, as for limits (0012)

Revision ID: 0013
Revises: 0012

Until 0012 a gateway wrote which budget reservations it held every two seconds, so those
made in the two seconds before it was killed were never given back (the budget stayed
short by them until its period ended). From here on `instance_budget_held` changes in the
same transaction as `budget_spend`. As for limits, an owner's `budget_spend` row is locked
before any ledger row of it, several owners in ascending order (of their names' bytes, as
the gateway sorts them), and what is given back never exceeds what the ledger holds.
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: one gateway, budgets in its memory
    for function in (RESERVE, SETTLE, REAP):
        op.get_bind().exec_driver_sql(function)  # as written: no bind parameters


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")


# The check and reservation of revision 0008 (which locks the owners' rows, in the order
# given: the gateway sorts them), and when it passed the reservation added to the
# gateway's ledger, the gateway registered first if it has no ledger row yet (see 0012).
RESERVE = """
CREATE OR REPLACE FUNCTION aigateway_budget_reserve(
    p_instance text, p_owners text[], p_periods text[], p_starts bigint[],
    p_amounts bigint[], p_price bigint
) RETURNS TABLE (r_passed boolean, r_spent bigint[], r_reserved bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_passed boolean;
    v_spent bigint[];
    v_reserved bigint[];
    v_owner text;
BEGIN
    SELECT * INTO v_passed, v_spent, v_reserved
    FROM aigateway_budget_reserve(p_owners, p_periods, p_starts, p_amounts, p_price);
    IF v_passed AND p_price > 0 THEN
        FOREACH v_owner IN ARRAY p_owners LOOP
            UPDATE instance_budget_held SET reserved = reserved + p_price
            WHERE instance = p_instance AND owner = v_owner;
            IF NOT FOUND THEN
                INSERT INTO gateway_instances
                VALUES (p_instance, extract(epoch FROM clock_timestamp()))
                ON CONFLICT DO NOTHING;
                INSERT INTO instance_budget_held VALUES (p_instance, v_owner, p_price);
            END IF;
        END LOOP;
    END IF;
    r_passed := v_passed;
    r_spent := v_spent;
    r_reserved := v_reserved;
    RETURN NEXT;
END
$$
"""

# What ended requests give back through one gateway, per owner (in any order): the
# reservation (never more than the gateway's ledger holds) and the cost spent. A cost
# from a newer period than the row's starts that period.
SETTLE = """
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
                ELSE b.spent + p_costs[i] END,
            period_start = greatest(b.period_start, p_starts[i])
        WHERE b.owner = p_owners[i] AND b.period = p_periods[i];
    END LOOP;
END
$$
"""

# Give back the reservations of gateways no longer registered, and p_instance's (a gateway
# stopping; NULL: none): each owner's row locked before its ledger rows are taken.
REAP = """
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
        SELECT coalesce(sum(reserved), 0) INTO v_reserved FROM gone;
        UPDATE budget_spend SET reserved = greatest(0, reserved - v_reserved)
        WHERE owner = v_owner;
    END LOOP;
END
$$
"""

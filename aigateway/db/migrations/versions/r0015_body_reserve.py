"""shared budgets: a request's reserved cost and its token top-up in one call

Revision ID: 0015
Revises: 0014

Until 0014 a request of a key with limits and a budget could wait for three round trips:
admission, a token top-up when its body asked for more output than admission reserved,
and the budget's check, which reserved only the per-request price. `aigateway_body_reserve`
does the last two at once, after the body is read, and reserves the request's whole
reserved cost (pricing.Price.reserve): both are taken, or neither (a budget that refuses
leaves the tokens untaken, and a token quota that refuses leaves the budgets untouched).

Locks are taken in the order every other function takes them: the key's `limit_counters`
row, then the owners' `budget_spend` rows (in the order given: the gateway sorts them),
then the ledgers' rows. The functions that reserved only the per-request price are
dropped; gateways of earlier releases must be stopped before 0014 anyway.
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

MAX_SUM_NANO = 4 * 10**18  # (pricing.MAX_SUM_NANO, as it is at this revision)
DAY = 86400
_ARGS_0008 = "text[], text[], bigint[], bigint[], bigint"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: one gateway, limits and budgets in its memory
    bind = op.get_bind()
    bind.exec_driver_sql(BODY_RESERVE)  # as written: no bind parameters
    for arguments in ("text, text[], text[], bigint[], bigint[], bigint", _ARGS_0008):
        bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS aigateway_budget_reserve({arguments})")


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")


# After a request's body is read: p_tokens more tokens against key p_key's quota of
# p_tokens_per_day (0: none asked; the check is the top-up's of before: a new day, or the
# day's tokens and reservations below the quota), and the request's budgets (nano-units):
# each must have what was spent plus what is reserved below its amount and, with a
# per-request price p_price, room for that price whole; then p_reserve (its reserved cost)
# is reserved against each. Both are taken only if both pass. Returns whether the tokens
# passed, whether the budgets passed, and each owner's spent and reserved as they now are.
BODY_RESERVE = f"""
CREATE OR REPLACE FUNCTION aigateway_body_reserve(
    p_instance text, p_key bigint, p_tokens_per_day bigint, p_tokens bigint,
    p_owners text[], p_periods text[], p_starts bigint[], p_amounts bigint[],
    p_price bigint, p_reserve bigint
) RETURNS TABLE (r_tokens boolean, r_passed boolean, r_spent bigint[], r_reserved bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(array_length(p_owners, 1), 0);
    i integer;
    b budget_spend%ROWTYPE;
    v_taken numeric;
    v_owner text;
    v_ok boolean;
    s bigint[] := '{{}}';
    r bigint[] := '{{}}';
BEGIN
    r_tokens := true;
    r_passed := true;
    IF p_tokens > 0 THEN
        SELECT c.day_start < (floor(extract(epoch FROM clock_timestamp()) / {DAY}) * {DAY})
            OR c.day_tokens + c.day_reserved < p_tokens_per_day
        INTO v_ok FROM limit_counters AS c WHERE c.key_id = p_key FOR UPDATE;
        r_tokens := coalesce(v_ok, false);
    END IF;
    FOR i IN 1..n LOOP
        b := aigateway_budget_row(p_owners[i], p_periods[i], p_starts[i]);
        v_taken := b.spent::numeric + b.reserved;
        IF p_price > 0 THEN
            r_passed := r_passed AND v_taken + p_price <= p_amounts[i];
        ELSE
            r_passed := r_passed AND v_taken < p_amounts[i];
        END IF;
        s := s || b.spent;
        r := r || b.reserved;
    END LOOP;
    IF r_tokens AND r_passed THEN
        IF p_tokens > 0 THEN
            UPDATE limit_counters SET day_reserved = day_reserved + p_tokens
            WHERE key_id = p_key;
            INSERT INTO instance_in_flight AS l (instance, key_id, requests, reserved)
            VALUES (p_instance, p_key, 0, p_tokens)
            ON CONFLICT (instance, key_id) DO UPDATE SET reserved = l.reserved + excluded.reserved;
        END IF;
        IF n > 0 AND p_reserve > 0 THEN
            UPDATE budget_spend
            SET reserved = least(reserved::numeric + p_reserve, {MAX_SUM_NANO})::bigint
            WHERE owner = ANY(p_owners);
            FOR i IN 1..n LOOP
                r[i] := least(r[i]::numeric + p_reserve, {MAX_SUM_NANO})::bigint;
            END LOOP;
            FOREACH v_owner IN ARRAY p_owners LOOP
                UPDATE instance_budget_held
                SET reserved = least(reserved::numeric + p_reserve, {MAX_SUM_NANO})::bigint
                WHERE instance = p_instance AND owner = v_owner;
                IF NOT FOUND THEN
                    INSERT INTO gateway_instances
                    VALUES (p_instance, extract(epoch FROM clock_timestamp()))
                    ON CONFLICT DO NOTHING;
                    INSERT INTO instance_budget_held VALUES (p_instance, v_owner, p_reserve);
                END IF;
            END LOOP;
        END IF;
    END IF;
    r_spent := s;
    r_reserved := r;
    RETURN NEXT;
END
$$
"""

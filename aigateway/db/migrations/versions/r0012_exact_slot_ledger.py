"""shared limits: each gateway's held slots kept exactly, and given back before admitting

Revision ID: 0012
Revises: 0011

Until 0011 a gateway wrote which slots it held every two seconds, and what its ended
requests gave back every few milliseconds in a statement of its own. So a key limited to
one request at a time was refused the next request of a client that waits for each answer
(its slot was still counted), and slots taken in the two seconds before a gateway was
killed were never given back. From here on `instance_in_flight` changes in the same
transaction as `limit_counters`: admission adds what it admits, and first takes back
what this gateway's ended requests of the key return.

Every function takes a key's `limit_counters` row before any `instance_in_flight` row of
it, and several keys' rows in ascending order, so no two calls wait on each other in a
cycle. The function of 0005 stays for gateways of the release before, during an upgrade.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: one gateway, limits in its memory
    for function in (ADMIT, SETTLE, REAP):
        op.get_bind().exec_driver_sql(function)  # as written: no bind parameters


def downgrade() -> None:
    raise NotImplementedError("aigateway does not downgrade its schema")


# Admit up to len(p_reserves) requests of one key (every request of the key that arrived
# while the previous call was out), after taking back what the gateway's ended requests
# of the key return. p_back: the slots, the tokens they had reserved, the tokens they
# used, the counts refunded and the minute and hour those counts were made in; NULL when
# nothing. Slots and reservations are taken off the gateway's ledger and never more than
# it holds: what the others gave back for a gateway they took for dead is not given back
# twice. The ledger row needs no lock of its own: it changes only under the key's row
# lock. A gateway without a ledger row for the key is registered (again, if the others
# took it for dead) before one is made, so that no ledger row is an orphan for long.
# Returns how many were admitted (the first ones) and the row as it is afterwards.
# Written in one function body: each statement or call inside costs the server more than
# the checks do.
ADMIT = """
CREATE OR REPLACE FUNCTION aigateway_admit(
    p_instance text, p_key bigint, p_rpm bigint, p_rph bigint, p_tpd bigint, p_cap bigint,
    p_reserves bigint[], p_back bigint[]
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
    held instance_in_flight%ROWTYPE;
    has_ledger boolean;
    v_slots bigint := 0;
    v_tokens bigint := 0;
    k integer := 0;
    v_reserved bigint := 0;
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
    SELECT * INTO held FROM instance_in_flight
    WHERE instance = p_instance AND key_id = p_key;
    has_ledger := FOUND;
    IF p_back IS NOT NULL THEN
        IF has_ledger THEN
            v_slots := least(p_back[1], held.requests);
            v_tokens := least(p_back[2], held.reserved);
        END IF;
        c.in_flight := greatest(0, c.in_flight - v_slots);
        c.day_reserved := greatest(0, c.day_reserved - v_tokens);
        c.day_tokens := c.day_tokens + p_back[3];
        IF c.minute_start = p_back[5] THEN
            c.minute_used := greatest(0, c.minute_used - p_back[4]);
        END IF;
        IF c.hour_start = p_back[6] THEN
            c.hour_used := greatest(0, c.hour_used - p_back[4]);
        END IF;
    END IF;
    FOREACH r IN ARRAY p_reserves LOOP
        EXIT WHEN p_cap > 0 AND c.in_flight >= p_cap;
        EXIT WHEN p_rpm > 0 AND c.minute_used >= p_rpm;
        EXIT WHEN p_rph > 0 AND c.hour_used >= p_rph;
        EXIT WHEN p_tpd > 0 AND c.day_tokens + c.day_reserved >= p_tpd;
        c.minute_used := c.minute_used + 1;
        c.hour_used := c.hour_used + 1;
        c.in_flight := c.in_flight + 1;
        c.day_reserved := c.day_reserved + r;
        v_reserved := v_reserved + r;
        k := k + 1;
    END LOOP;
    IF k > 0 OR p_back IS NOT NULL THEN
        UPDATE limit_counters AS l SET
            minute_start = c.minute_start, minute_used = c.minute_used,
            hour_start = c.hour_start, hour_used = c.hour_used,
            day_start = c.day_start, day_tokens = c.day_tokens,
            day_reserved = c.day_reserved, in_flight = c.in_flight
        WHERE l.key_id = p_key;
    END IF;
    IF has_ledger AND (k <> v_slots OR v_reserved <> v_tokens) THEN
        UPDATE instance_in_flight
        SET requests = requests + k - v_slots, reserved = reserved + v_reserved - v_tokens
        WHERE instance = p_instance AND key_id = p_key;
    ELSIF NOT has_ledger AND k > 0 THEN
        INSERT INTO gateway_instances VALUES (p_instance, t) ON CONFLICT DO NOTHING;
        INSERT INTO instance_in_flight VALUES (p_instance, p_key, k, v_reserved);
    END IF;
    admitted := k;
    minute_start := c.minute_start; minute_used := c.minute_used;
    hour_start := c.hour_start; hour_used := c.hour_used;
    day_start := c.day_start; day_tokens := c.day_tokens; day_reserved := c.day_reserved;
    in_flight := c.in_flight;
    now := t;
    RETURN NEXT;
END
$$
"""

# What ended requests of several keys give back through one gateway: p_backs holds six
# numbers per key (as p_back above), in the order of p_keys; the keys are taken in
# ascending order whatever order they come in.
SETTLE = """
CREATE OR REPLACE FUNCTION aigateway_settle(
    p_instance text, p_keys bigint[], p_backs bigint[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    FOR i IN SELECT n::integer FROM unnest(p_keys) WITH ORDINALITY AS u(key_id, n)
        ORDER BY key_id
    LOOP
        PERFORM aigateway_admit(p_instance, p_keys[i], 0, 0, 0, 0, '{}'::bigint[],
            p_backs[6 * i - 5 : 6 * i]);
    END LOOP;
END
$$
"""

# Give back what gateways no longer registered (taken out of gateway_instances before
# this is called, in a transaction of its own) still hold: each key's row locked before
# its ledger rows are taken, so a slot is given back once, and a gateway that registers
# again meanwhile keeps what it holds.
REAP = """
CREATE OR REPLACE FUNCTION aigateway_reap()
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_key bigint;
    v_requests bigint;
    v_reserved bigint;
BEGIN
    FOR v_key IN
        SELECT DISTINCT key_id FROM instance_in_flight
        WHERE instance NOT IN (SELECT instance FROM gateway_instances) ORDER BY key_id
    LOOP
        PERFORM 1 FROM limit_counters WHERE key_id = v_key FOR UPDATE;
        WITH gone AS (
            DELETE FROM instance_in_flight
            WHERE key_id = v_key AND instance NOT IN (SELECT instance FROM gateway_instances)
            RETURNING requests, reserved
        )
        SELECT coalesce(sum(requests), 0), coalesce(sum(reserved), 0)
        INTO v_requests, v_reserved FROM gone;
        UPDATE limit_counters AS l
        SET in_flight = greatest(0, l.in_flight - v_requests),
            day_reserved = greatest(0, l.day_reserved - v_reserved)
        WHERE l.key_id = v_key;
    END LOOP;
END
$$
"""

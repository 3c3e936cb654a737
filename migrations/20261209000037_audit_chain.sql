-- Tamper-evident audit (issue 19). Every audit row is sealed into a hash chain, one per tenant
-- plus one for the fleet (the nil UUID): seq counts the chain's rows without gaps and
-- row_hash = SHA-256(prev_hash ‖ canonical form of the row). The seal is a deferred trigger,
-- so it runs at commit, in the changing transaction, and a chain's head stays locked only for
-- the end of a commit rather than from the row's insert on: concurrent writers of one tenant
-- queue for microseconds. Signed checkpoints of each chain's head (the Ed25519 key lives in a
-- file, outside the database) let `concierge audit verify` tell a rewritten chain from a
-- true one. See server/src/platform/audit/chain.rs for the canonical form and verification.

-- A sealed row never changes: it no longer follows a deleted user or tenant to NULL.
ALTER TABLE audit_log DROP CONSTRAINT IF EXISTS audit_log_actor_id_fkey;
ALTER TABLE audit_log DROP CONSTRAINT IF EXISTS audit_log_tenant_id_fkey;

ALTER TABLE audit_log
    ADD COLUMN chain uuid,
    ADD COLUMN seq bigint,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN row_hash bytea;

CREATE TABLE audit_chains (
    chain uuid PRIMARY KEY,
    seq   bigint NOT NULL,
    head  bytea NOT NULL
);

-- The last verification of each chain: how far it held, and the first problem found. Apart
-- from audit_chains, so that verifying never holds the lock every commit of the chain needs.
CREATE TABLE audit_checks (
    chain       uuid PRIMARY KEY,
    checked_at  timestamptz NOT NULL,
    intact_to   bigint NOT NULL,
    problem     text
);

-- One field of the canonical form: its UTF-8 length, a colon, the text; '-' for NULL.
CREATE FUNCTION audit_field(v text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT coalesce(octet_length(v)::text || ':' || v, '-') $$;

CREATE FUNCTION audit_time(at timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

-- The canonical form of a row: its fields, in this order, each as audit_field. The verifier
-- (and an auditor's script over an export) rebuilds it from the same texts.
CREATE FUNCTION audit_canonical(chain uuid, a audit_log) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT audit_field(chain::text) || audit_field(audit_time(a.at)) || audit_field(a.actor_id::text)
              || audit_field(a.actor_email) || audit_field(a.tenant_id::text) || audit_field(a.action)
              || audit_field(a.object_type) || audit_field(a.object_id) || audit_field(a.before::text)
              || audit_field(a.after::text) || audit_field(host(a.client_addr)) $$;

-- Seals every row from id `from_id` on that this transaction wrote and has not sealed yet
-- (only its own unsealed rows are visible to it), chain by chain in one order, so that two
-- transactions writing the same two chains cannot deadlock; each chain's head is written
-- once, however many rows. The trigger fires for each row at commit, in insert order: the
-- first firing (its row is the transaction's first) seals them all, the others find their row
-- sealed. Starting at that id keeps the search to the rows written since, not every row ever
-- sealed (whose old, unsealed versions stay in the indexes until vacuum).
CREATE FUNCTION audit_seal_pending(from_id bigint) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
DECLARE
    chains uuid[];
    c uuid;
    r audit_log;
    s bigint;
    prev bytea;
BEGIN
    SELECT array_agg(DISTINCT coalesce(tenant_id, '00000000-0000-0000-0000-000000000000')
                     ORDER BY coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'))
    INTO chains FROM audit_log WHERE id >= from_id AND seq IS NULL;
    IF chains IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO audit_chains (chain, seq, head)
    SELECT u, 0, decode(repeat('00', 32), 'hex') FROM unnest(chains) u
    ON CONFLICT DO NOTHING;
    PERFORM 1 FROM audit_chains WHERE chain = ANY(chains) ORDER BY chain FOR UPDATE;
    FOREACH c IN ARRAY chains LOOP
        SELECT ch.seq, ch.head INTO s, prev FROM audit_chains ch WHERE ch.chain = c;
        FOR r IN SELECT * FROM audit_log a
                 WHERE a.id >= from_id AND a.seq IS NULL
                   AND coalesce(a.tenant_id, '00000000-0000-0000-0000-000000000000') = c
                 ORDER BY a.id LOOP
            s := s + 1;
            UPDATE audit_log SET chain = c, seq = s, prev_hash = prev,
                   row_hash = sha256(prev || convert_to(audit_canonical(c, r), 'UTF8'))
            WHERE id = r.id RETURNING row_hash INTO prev;
        END LOOP;
        UPDATE audit_chains SET seq = s, head = prev WHERE chain = c;
    END LOOP;
END $$;

CREATE FUNCTION audit_seal() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
BEGIN
    PERFORM 1 FROM audit_log WHERE id = NEW.id AND seq IS NULL;
    IF FOUND THEN
        PERFORM audit_seal_pending(NEW.id);
    END IF;
    RETURN NULL;
END $$;

-- Rows not sealed (only ever seen by the verifier, after tampering).
CREATE INDEX audit_log_unsealed ON audit_log (id) WHERE seq IS NULL;

-- Rows written before this migration, sealed in the order they were written.
SELECT audit_seal_pending(0);

CREATE CONSTRAINT TRIGGER audit_seal AFTER INSERT ON audit_log
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION audit_seal();

CREATE UNIQUE INDEX audit_log_chain_seq ON audit_log (chain, seq);

CREATE TABLE audit_checkpoints (
    id             bigserial PRIMARY KEY,
    chain          uuid NOT NULL,
    seq            bigint NOT NULL,
    head           bytea NOT NULL,
    at             timestamptz NOT NULL,
    prev_signature bytea,
    -- The Ed25519 public key that signed it: a changed key shows in every export.
    public_key     bytea NOT NULL,
    signature      bytea NOT NULL,
    UNIQUE (chain, seq)
);

ALTER TABLE audit_chains ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_chains_read ON audit_chains FOR SELECT
    USING ((SELECT app_fleet_scope()) OR chain = (SELECT app_tenant()));
ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_checkpoints_read ON audit_checkpoints FOR SELECT
    USING ((SELECT app_fleet_scope()) OR chain = (SELECT app_tenant()));
-- Checkpoints and verification results are written in fleet scope by the server; the runtime
-- role never changes a chain's head (only the trigger, as the owner, does).
CREATE POLICY audit_checkpoints_write ON audit_checkpoints FOR INSERT
    WITH CHECK ((SELECT app_fleet_scope()));
ALTER TABLE audit_checks ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_checks_read ON audit_checks FOR SELECT
    USING ((SELECT app_fleet_scope()) OR chain = (SELECT app_tenant()));
CREATE POLICY audit_checks_write ON audit_checks FOR ALL
    USING ((SELECT app_fleet_scope())) WITH CHECK ((SELECT app_fleet_scope()));
GRANT SELECT ON audit_chains, audit_checkpoints TO concierge_app;
GRANT SELECT, INSERT, UPDATE ON audit_checks TO concierge_app;
GRANT INSERT ON audit_checkpoints TO concierge_app;
GRANT USAGE ON SEQUENCE audit_checkpoints_id_seq TO concierge_app;

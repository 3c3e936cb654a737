-- Browser consoles (issue 16): each opening is a single-use ticket, bound to the user, their
-- portal session and one VM, valid 30 s; the row then records the console session itself
-- (started, ended, why) next to its audit rows.
CREATE TABLE console_sessions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- SHA-256 of the ticket (the ticket itself is shown to the browser once).
    ticket_hash text NOT NULL CONSTRAINT console_sessions_ticket_key UNIQUE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id  uuid NOT NULL,
    tenant_id   uuid REFERENCES tenants (id) ON DELETE CASCADE,
    host_id     uuid NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    vm_uuid     uuid NOT NULL,
    kind        text NOT NULL CONSTRAINT console_sessions_kind CHECK (kind IN ('serial', 'graphical')),
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    started_at  timestamptz,
    ended_at    timestamptz,
    end_reason  text
);
CREATE INDEX console_sessions_vm ON console_sessions (vm_uuid, issued_at);
ALTER TABLE console_sessions ENABLE ROW LEVEL SECURITY;
CREATE POLICY console_sessions_scope ON console_sessions
    USING ((SELECT app_fleet_scope()) OR tenant_id = (SELECT app_tenant()))
    WITH CHECK ((SELECT app_fleet_scope()) OR tenant_id = (SELECT app_tenant()));
GRANT SELECT, INSERT, UPDATE ON console_sessions TO concierge_app;

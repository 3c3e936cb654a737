-- Joining a tenant takes the invitee's consent. A tenant admin's "add member" makes an
-- invitation, the same whether the address has an account or not (it must not reveal which);
-- the invitee accepts it signed in, or, without an account, creates one with the code.
CREATE TABLE invitations (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    email        text NOT NULL CONSTRAINT invitations_email_lower CHECK (email = lower(email)),
    display_name text NOT NULL DEFAULT '',
    role         tenant_role NOT NULL,
    -- SHA-256 of the code, which is shown once to the inviting admin.
    code_hash    text NOT NULL UNIQUE,
    invited_by   uuid REFERENCES users ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    closed_at    timestamptz,
    outcome      text CONSTRAINT invitations_outcome CHECK (outcome IN ('accepted', 'declined', 'revoked', 'replaced')),
    CONSTRAINT invitations_closed CHECK ((closed_at IS NULL) = (outcome IS NULL))
);
-- One open invitation per address and tenant (a new one replaces it).
CREATE UNIQUE INDEX invitations_open ON invitations (tenant_id, email) WHERE closed_at IS NULL;
CREATE INDEX invitations_email ON invitations (email) WHERE closed_at IS NULL;

ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
CREATE POLICY invitations_scope ON invitations
    USING ((SELECT app_fleet_scope()) OR tenant_id = (SELECT app_tenant()))
    WITH CHECK ((SELECT app_fleet_scope()) OR tenant_id = (SELECT app_tenant()));
GRANT SELECT, INSERT, UPDATE, DELETE ON invitations TO concierge_app;

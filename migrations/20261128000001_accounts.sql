-- Accounts, tenants, memberships, sessions, login throttling and the audit trail.
-- Runs as the schema owner. The server runs as `concierge_app` (created by the server
-- before migrating; see server/src/db.rs), which owns nothing and is not a superuser, so
-- row-level security applies to it.

-- Request-scoped settings, set with set_config(..., true) inside each transaction.
CREATE FUNCTION app_tenant() RETURNS uuid LANGUAGE sql STABLE AS
$$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;
CREATE FUNCTION app_user() RETURNS uuid LANGUAGE sql STABLE AS
$$ SELECT nullif(current_setting('app.user_id', true), '')::uuid $$;
CREATE FUNCTION app_fleet_scope() RETURNS boolean LANGUAGE sql STABLE AS
$$ SELECT coalesce(current_setting('app.fleet_admin', true), '') = 'on' $$;

CREATE TABLE tenants (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL CONSTRAINT tenants_name_length CHECK (char_length(name) BETWEEN 1 AND 100),
    suspended_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tenants_name_key ON tenants (lower(name));

CREATE TABLE users (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email                text NOT NULL CONSTRAINT users_email_length CHECK (char_length(email) BETWEEN 3 AND 254),
    display_name         text NOT NULL CONSTRAINT users_display_name_length CHECK (char_length(display_name) BETWEEN 1 AND 100),
    password_hash        text NOT NULL,
    fleet_admin          boolean NOT NULL DEFAULT false,
    must_change_password boolean NOT NULL DEFAULT true,
    disabled_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TYPE tenant_role AS ENUM ('requester', 'approver', 'tenant_admin', 'manager');

CREATE TABLE memberships (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       tenant_role NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT memberships_pkey PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);
ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
-- Members of a tenant are visible within that tenant's scope; a user always sees their own
-- memberships (to know their roles); fleet scope sees all.
CREATE POLICY memberships_read ON memberships FOR SELECT
    USING (app_fleet_scope() OR tenant_id = app_tenant() OR user_id = app_user());
CREATE POLICY memberships_write ON memberships FOR ALL
    USING (app_fleet_scope() OR tenant_id = app_tenant())
    WITH CHECK (app_fleet_scope() OR tenant_id = app_tenant());

-- One row per signed-in browser session; the tower-sessions record only points here, so
-- ending a session (or all of a user's) is one DELETE.
CREATE TABLE user_sessions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    client_addr  inet,
    user_agent   text
);
CREATE INDEX user_sessions_user ON user_sessions (user_id);

CREATE TABLE login_failures (
    id          bigserial PRIMARY KEY,
    account     text NOT NULL,
    client_addr inet,
    at          timestamptz NOT NULL
);
CREATE INDEX login_failures_account ON login_failures (account, at);
CREATE INDEX login_failures_addr ON login_failures (client_addr, at);

CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor_id     uuid REFERENCES users (id) ON DELETE SET NULL,
    actor_email  text,
    tenant_id    uuid REFERENCES tenants (id) ON DELETE SET NULL,
    action       text NOT NULL,
    object_type  text NOT NULL,
    object_id    text,
    before       jsonb,
    after        jsonb,
    client_addr  inet
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at DESC, id DESC);
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_read ON audit_log FOR SELECT
    USING (app_fleet_scope() OR tenant_id = app_tenant());
CREATE POLICY audit_append ON audit_log FOR INSERT WITH CHECK (true);

-- The runtime role: the audit trail is append-only for it.
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, users, memberships, user_sessions, login_failures TO concierge_app;
GRANT SELECT, INSERT ON audit_log TO concierge_app;
GRANT USAGE ON SEQUENCE audit_log_id_seq, login_failures_id_seq TO concierge_app;
GRANT EXECUTE ON FUNCTION app_tenant(), app_user(), app_fleet_scope() TO concierge_app;

-- Resolves a session to its user and memberships in one round trip (it runs on every
-- request). Invoker rights: row-level security still applies, scoped to the session's user.
CREATE FUNCTION session_actor(p_session uuid)
RETURNS TABLE (
    user_id uuid, email text, display_name text, fleet_admin boolean,
    must_change_password boolean, disabled boolean,
    created_at timestamptz, last_seen_at timestamptz, memberships jsonb
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_user uuid;
BEGIN
    SELECT s.user_id INTO v_user FROM user_sessions s WHERE s.id = p_session;
    IF v_user IS NULL THEN
        RETURN;
    END IF;
    PERFORM set_config('app.user_id', v_user::text, true);
    RETURN QUERY
    SELECT u.id, u.email, u.display_name, u.fleet_admin, u.must_change_password,
           u.disabled_at IS NOT NULL, s.created_at, s.last_seen_at,
           coalesce((SELECT jsonb_agg(jsonb_build_object(
                        'tenant_id', m.tenant_id, 'tenant_name', t.name, 'role', m.role,
                        'tenant_suspended', t.suspended_at IS NOT NULL) ORDER BY t.name)
                     FROM memberships m JOIN tenants t ON t.id = m.tenant_id
                     WHERE m.user_id = v_user), '[]'::jsonb)
    FROM user_sessions s JOIN users u ON u.id = s.user_id
    WHERE s.id = p_session;
END $$;
GRANT EXECUTE ON FUNCTION session_actor(uuid) TO concierge_app;

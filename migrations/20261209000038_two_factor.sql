-- Two-factor sign-in with time-based one-time codes (RFC 6238; issue 19).
ALTER TABLE users
    -- The shared secret while two-factor sign-in is on.
    ADD COLUMN totp_secret bytea,
    -- A secret being set up, until the user's app shows its first code.
    ADD COLUMN totp_pending bytea,
    ADD COLUMN totp_enabled_at timestamptz,
    -- The last 30-second step whose code was accepted: each code signs in once.
    ADD COLUMN totp_last_step bigint;

-- Recovery codes, each usable once, stored as SHA-256 of the code (they are random, 60 bits).
CREATE TABLE recovery_codes (
    user_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash bytea NOT NULL,
    used_at   timestamptz,
    PRIMARY KEY (user_id, code_hash)
);
ALTER TABLE recovery_codes ENABLE ROW LEVEL SECURITY;
CREATE POLICY recovery_codes_own ON recovery_codes FOR ALL
    USING (user_id = (SELECT app_user())) WITH CHECK (user_id = (SELECT app_user()));
GRANT SELECT, INSERT, UPDATE, DELETE ON recovery_codes TO concierge_app;

-- Required by a tenant's admins for its members, or by the fleet admins for everyone.
ALTER TABLE tenants ADD COLUMN require_two_factor boolean NOT NULL DEFAULT false;
CREATE TABLE fleet_settings (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    require_two_factor boolean NOT NULL DEFAULT false
);
INSERT INTO fleet_settings DEFAULT VALUES;
ALTER TABLE fleet_settings ENABLE ROW LEVEL SECURITY;
CREATE POLICY fleet_settings_read ON fleet_settings FOR SELECT USING (true);
CREATE POLICY fleet_settings_write ON fleet_settings FOR UPDATE
    USING ((SELECT app_fleet_scope())) WITH CHECK ((SELECT app_fleet_scope()));
GRANT SELECT, UPDATE ON fleet_settings TO concierge_app;

-- A resolved actor says whether it still has to set up a second factor.
DROP FUNCTION session_actor(uuid);
CREATE FUNCTION session_actor(p_session uuid)
RETURNS TABLE (
    user_id uuid, email text, display_name text, fleet_admin boolean,
    must_change_password boolean, disabled boolean,
    created_at timestamptz, last_seen_at timestamptz, memberships jsonb,
    must_enrol_two_factor boolean
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
                     WHERE m.user_id = v_user), '[]'::jsonb),
           u.totp_enabled_at IS NULL
             AND ((SELECT f.require_two_factor FROM fleet_settings f)
                  OR EXISTS (SELECT 1 FROM memberships m JOIN tenants t ON t.id = m.tenant_id
                             WHERE m.user_id = v_user AND t.require_two_factor AND t.suspended_at IS NULL))
    FROM user_sessions s JOIN users u ON u.id = s.user_id
    WHERE s.id = p_session;
END $$;
GRANT EXECUTE ON FUNCTION session_actor(uuid) TO concierge_app;

-- Replicas drop cached actors when what they resolve to changes.
CREATE TRIGGER users_two_factor_actors AFTER UPDATE OF totp_enabled_at ON users
    FOR EACH STATEMENT EXECUTE FUNCTION notify_actors_changed();
CREATE TRIGGER tenants_two_factor_actors AFTER UPDATE OF require_two_factor ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION notify_actors_changed();
CREATE TRIGGER fleet_settings_actors AFTER UPDATE ON fleet_settings
    FOR EACH STATEMENT EXECUTE FUNCTION notify_actors_changed();

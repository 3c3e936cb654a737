-- Several server processes (replicas) share one database. Each registers itself and beats
-- every few seconds in database time, so every replica agrees on who is alive whatever its
-- own clock says.
CREATE TABLE replicas (
    id uuid PRIMARY KEY,
    -- Where it listens, as it was told to (for operators; nothing connects to it).
    address text NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    -- Set on a graceful stop: the others stop counting on it at once.
    stopped_at timestamptz
);
CREATE INDEX replicas_heartbeat ON replicas (heartbeat_at);
GRANT SELECT, INSERT, UPDATE, DELETE ON replicas TO concierge_app;

-- Every replica caches resolved actors (user, memberships, session). A committed change to
-- what `session_actor()` reads tells all of them at once, whichever replica (or hand-written
-- statement) made it. Statement-level and de-duplicated by NOTIFY within a transaction; the
-- sessions' `last_seen_at` touches are not such a change and send nothing.
CREATE FUNCTION notify_actors_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('concierge_cluster', 'actors');
    RETURN NULL;
END $$;

CREATE TRIGGER memberships_actors AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON memberships
    FOR EACH STATEMENT EXECUTE FUNCTION notify_actors_changed();
CREATE TRIGGER users_actors AFTER UPDATE OF email, display_name, fleet_admin, must_change_password, disabled_at
    ON users FOR EACH STATEMENT EXECUTE FUNCTION notify_actors_changed();
CREATE TRIGGER users_actors_gone AFTER DELETE OR TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION notify_actors_changed();
CREATE TRIGGER tenants_actors AFTER UPDATE OF name, suspended_at ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION notify_actors_changed();
CREATE TRIGGER tenants_actors_gone AFTER DELETE OR TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION notify_actors_changed();
CREATE TRIGGER user_sessions_actors AFTER DELETE OR TRUNCATE ON user_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION notify_actors_changed();

-- What the portal tells a person: one row per recipient and event, written in the same
-- transaction as the event (a request decided, a lease ending), so nothing is announced that
-- did not happen and nothing that happened goes unannounced. The row is the in-app
-- notification (when the recipient wants it in the app) and the outbox of its e-mail (a `mail`
-- job keyed by the row's id, when they want it by e-mail).
CREATE TABLE notifications (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant_id   uuid REFERENCES tenants (id) ON DELETE CASCADE,
    kind        text NOT NULL,
    title       text NOT NULL CONSTRAINT notifications_title_length CHECK (char_length(title) <= 200),
    body        text NOT NULL DEFAULT '' CONSTRAINT notifications_body_length CHECK (char_length(body) <= 2000),
    -- A path inside the portal (the object the notification is about).
    link        text NOT NULL CONSTRAINT notifications_link_path CHECK (link LIKE '/%'),
    in_app      boolean NOT NULL,
    email       text NOT NULL DEFAULT 'none'
                CONSTRAINT notifications_email CHECK (email IN ('none', 'queued', 'sent', 'failed')),
    created_at  timestamptz NOT NULL,
    read_at     timestamptz
);
CREATE INDEX notifications_inbox ON notifications (user_id, created_at DESC) WHERE in_app;
CREATE INDEX notifications_unread ON notifications (user_id) WHERE in_app AND read_at IS NULL;

-- Which kinds a person wants on which channel; no row: wanted (both channels).
CREATE TABLE notification_preferences (
    user_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind     text NOT NULL,
    channel  text NOT NULL CONSTRAINT notification_preferences_channel CHECK (channel IN ('in_app', 'email')),
    enabled  boolean NOT NULL,
    PRIMARY KEY (user_id, kind, channel)
);

ALTER TABLE notifications ENABLE ROW LEVEL SECURITY;
CREATE POLICY notifications_own ON notifications
    USING ((SELECT app_fleet_scope()) OR user_id = (SELECT app_user()))
    WITH CHECK ((SELECT app_fleet_scope()) OR user_id = (SELECT app_user()));
ALTER TABLE notification_preferences ENABLE ROW LEVEL SECURITY;
CREATE POLICY notification_preferences_own ON notification_preferences
    USING ((SELECT app_fleet_scope()) OR user_id = (SELECT app_user()))
    WITH CHECK ((SELECT app_fleet_scope()) OR user_id = (SELECT app_user()));
GRANT SELECT, INSERT, UPDATE, DELETE ON notifications, notification_preferences TO concierge_app;

-- The recipient's open pages hear of a new one, or of one read in another tab, at commit
-- (the bell's count), and only theirs. Once per statement and recipient: "mark all read"
-- sends one event, not one per row; recording a sent e-mail sends none.
CREATE FUNCTION notify_notification() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_user uuid;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR v_user IN SELECT DISTINCT user_id FROM new_rows WHERE in_app LOOP
            PERFORM pg_notify('concierge_live', json_build_object(
                'kind', 'notification', 'owner_id', v_user)::text);
        END LOOP;
    ELSE
        FOR v_user IN
            SELECT DISTINCT n.user_id FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE n.in_app AND n.read_at IS DISTINCT FROM o.read_at
        LOOP
            PERFORM pg_notify('concierge_live', json_build_object(
                'kind', 'notification', 'owner_id', v_user)::text);
        END LOOP;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER notifications_notify_insert AFTER INSERT ON notifications
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION notify_notification();
CREATE TRIGGER notifications_notify_update AFTER UPDATE ON notifications
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_notification();

-- Writes one notification as its recipient wants it (preferences read here, past row-level
-- security: the transaction announcing an event runs as whoever caused it, who may neither
-- read the recipient's preferences nor write their rows). Returns the row's id and whether
-- its e-mail is to be sent; NULL when the recipient wants this kind on no channel.
CREATE FUNCTION add_notification(p_user uuid, p_tenant uuid, p_kind text, p_title text,
                                 p_body text, p_link text, p_at timestamptz,
                                 OUT id uuid, OUT email boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_in_app boolean;
BEGIN
    SELECT coalesce(bool_and(p.enabled) FILTER (WHERE p.channel = 'in_app'), true),
           coalesce(bool_and(p.enabled) FILTER (WHERE p.channel = 'email'), true)
      INTO v_in_app, email
      FROM notification_preferences p WHERE p.user_id = p_user AND p.kind = p_kind;
    IF NOT v_in_app AND NOT email THEN
        id := NULL;
        RETURN;
    END IF;
    INSERT INTO notifications (user_id, tenant_id, kind, title, body, link, in_app, email, created_at)
    VALUES (p_user, p_tenant, p_kind, left(p_title, 200), left(p_body, 2000), p_link, v_in_app,
            CASE WHEN email THEN 'queued' ELSE 'none' END, p_at)
    RETURNING notifications.id INTO id;
END $$;
REVOKE ALL ON FUNCTION add_notification(uuid, uuid, text, text, text, text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION add_notification(uuid, uuid, text, text, text, text, timestamptz) TO concierge_app;

-- Webhooks: endpoints that tenant admins (for their tenant) and fleet admins (fleet-wide) point
-- at their own systems, and one delivery row per event and endpoint, written in the
-- transaction of the event (the outbox) with the `webhook` job that sends it.
CREATE TABLE webhook_endpoints (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NULL: fleet-wide (every tenant's events and the fleet's own).
    tenant_id       uuid REFERENCES tenants (id) ON DELETE CASCADE,
    url             text NOT NULL CONSTRAINT webhook_endpoints_url CHECK (url ~ '^https?://' AND char_length(url) <= 2000),
    description     text NOT NULL DEFAULT '' CONSTRAINT webhook_endpoints_description CHECK (char_length(description) <= 200),
    -- The Standard Webhooks signing secret (`whsec_` + base64). Kept as is, not hashed: every
    -- delivery is signed with it. Shown once, when the endpoint is made; never logged.
    secret          text NOT NULL,
    event_types     text[] NOT NULL CONSTRAINT webhook_endpoints_events CHECK (cardinality(event_types) > 0),
    enabled         boolean NOT NULL DEFAULT true,
    disabled_reason text,
    created_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id);

CREATE TABLE webhook_deliveries (
    -- The `webhook-id` is `msg_` and this id: the same on every attempt.
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_type      text NOT NULL,
    -- The body sent, exactly (`{"type", "timestamp", "data"}`): the same bytes on every attempt.
    body            text NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CONSTRAINT webhook_deliveries_state CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz
);
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, created_at DESC);

-- Each attempt as the receiver answered it: the delivery log.
CREATE TABLE webhook_attempts (
    delivery_id     uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    at              timestamptz NOT NULL,
    status          integer,
    error           text,
    duration_ms     integer NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

ALTER TABLE webhook_endpoints ENABLE ROW LEVEL SECURITY;
CREATE POLICY webhook_endpoints_scope ON webhook_endpoints
    USING ((SELECT app_fleet_scope()) OR (tenant_id IS NOT NULL AND tenant_id = (SELECT app_tenant())))
    WITH CHECK ((SELECT app_fleet_scope()) OR (tenant_id IS NOT NULL AND tenant_id = (SELECT app_tenant())));
ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
CREATE POLICY webhook_deliveries_scope ON webhook_deliveries
    USING ((SELECT app_fleet_scope()) OR EXISTS (
        SELECT 1 FROM webhook_endpoints e WHERE e.id = endpoint_id));
ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY;
CREATE POLICY webhook_attempts_scope ON webhook_attempts
    USING ((SELECT app_fleet_scope()) OR EXISTS (
        SELECT 1 FROM webhook_deliveries d WHERE d.id = delivery_id));
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints, webhook_deliveries, webhook_attempts TO concierge_app;

-- Publishes one event: a delivery row and its job for every enabled endpoint that wants this
-- type, the tenant's own and the fleet-wide ones. Past row-level security, because whoever
-- caused the event (a requester, the host's actor) may not read the endpoints.
CREATE FUNCTION publish_event(p_tenant uuid, p_type text, p_data jsonb, p_at timestamptz)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_body text := json_build_object(
        'type', p_type,
        'timestamp', to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', p_data)::text;
BEGIN
    WITH d AS (
        INSERT INTO webhook_deliveries (endpoint_id, event_type, body, created_at)
        SELECT e.id, p_type, v_body, p_at FROM webhook_endpoints e
        WHERE e.enabled AND p_type = ANY (e.event_types)
          AND (e.tenant_id IS NULL OR e.tenant_id = p_tenant)
        RETURNING id)
    INSERT INTO jobs (kind, key, max_attempts) SELECT 'webhook', d.id, 1000 FROM d
    ON CONFLICT (kind, key) WHERE state IN ('queued', 'running') DO NOTHING;
END $$;
REVOKE ALL ON FUNCTION publish_event(uuid, text, jsonb, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION publish_event(uuid, text, jsonb, timestamptz) TO concierge_app;

-- A notification's e-mail job is now queued where the notification is written, so that the
-- events raised inside the database (a host lost, a quota crossing 80 %) send mail too.
CREATE OR REPLACE FUNCTION add_notification(p_user uuid, p_tenant uuid, p_kind text, p_title text,
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
    IF email THEN
        INSERT INTO jobs (kind, key, max_attempts) VALUES ('mail', id, 8)
        ON CONFLICT (kind, key) WHERE state IN ('queued', 'running') DO NOTHING;
    END IF;
END $$;

-- A host lost and a host back: every fleet admin is told, and the fleet-wide webhooks.
CREATE FUNCTION host_state_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_lost boolean := NEW.state = 'lost';
    v_admin uuid;
    v_title text;
BEGIN
    v_title := CASE WHEN v_lost THEN 'Host ' || NEW.name || ' is lost'
                    ELSE 'Host ' || NEW.name || ' is back' END;
    FOR v_admin IN SELECT u.id FROM users u WHERE u.fleet_admin ORDER BY u.id LOOP
        PERFORM add_notification(v_admin, NULL, CASE WHEN v_lost THEN 'host_lost' ELSE 'host_back' END,
                                 v_title, coalesce(NEW.state_reason, ''), '/hosts/' || NEW.id, now());
    END LOOP;
    PERFORM publish_event(NULL, CASE WHEN v_lost THEN 'host.lost' ELSE 'host.back' END,
                          jsonb_build_object('host_id', NEW.id, 'name', NEW.name,
                                             'reason', NEW.state_reason, 'path', '/hosts/' || NEW.id),
                          now());
    RETURN NULL;
END $$;
CREATE TRIGGER hosts_state_event AFTER UPDATE OF state ON hosts FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND (NEW.state = 'lost' OR (OLD.state = 'lost' AND NEW.state = 'connected')))
    EXECUTE FUNCTION host_state_event();

-- A tenant's use crossing 80 % or 100 % of a limit: its tenant admins are told once per
-- crossing (going back below and up again tells them again), and the tenant's webhooks.
CREATE FUNCTION quota_threshold_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_line record;
    v_admin uuid;
    v_tenant text;
    v_title text;
BEGIN
    SELECT name INTO v_tenant FROM tenants WHERE id = NEW.tenant_id;
    FOR v_line IN
        SELECT r.resource, r.used, r.max, t.pct
        FROM (VALUES ('vCPUs', OLD.used_vcpus::numeric, NEW.used_vcpus::numeric, NEW.max_vcpus::numeric),
                     ('memory', OLD.used_memory_mib, NEW.used_memory_mib, NEW.max_memory_mib),
                     ('disk', OLD.used_disk_gib, NEW.used_disk_gib, NEW.max_disk_gib),
                     ('VMs', OLD.used_vms, NEW.used_vms, NEW.max_vms)) AS r(resource, was, used, max)
        CROSS JOIN (VALUES (80), (100)) AS t(pct)
        WHERE r.max > 0 AND r.was * 100 < r.max * t.pct AND r.used * 100 >= r.max * t.pct
          -- Only the highest threshold crossed at once.
          AND NOT (t.pct = 80 AND r.used * 100 >= r.max * 100)
    LOOP
        v_title := v_tenant || ': ' || v_line.resource || ' quota at ' || v_line.pct || ' %';
        FOR v_admin IN SELECT m.user_id FROM memberships m
                       WHERE m.tenant_id = NEW.tenant_id AND m.role = 'tenant_admin' ORDER BY m.user_id LOOP
            PERFORM add_notification(v_admin, NEW.tenant_id, 'quota_threshold', v_title,
                                     'In use: ' || v_line.used || ' of ' || v_line.max || '.',
                                     '/tenants/' || NEW.tenant_id || '/quotas', now());
        END LOOP;
        PERFORM publish_event(NEW.tenant_id, 'quota.threshold',
                              jsonb_build_object('tenant_id', NEW.tenant_id, 'resource', v_line.resource,
                                                 'percent', v_line.pct, 'used', v_line.used,
                                                 'limit', v_line.max),
                              now());
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER tenant_quotas_threshold_event AFTER UPDATE ON tenant_quotas FOR EACH ROW
    WHEN ((NEW.max_vcpus > 0 AND OLD.used_vcpus * 5 < NEW.max_vcpus * 4 AND NEW.used_vcpus * 5 >= NEW.max_vcpus * 4)
       OR (NEW.max_vcpus > 0 AND OLD.used_vcpus < NEW.max_vcpus AND NEW.used_vcpus >= NEW.max_vcpus)
       OR (NEW.max_memory_mib > 0 AND OLD.used_memory_mib * 5 < NEW.max_memory_mib * 4 AND NEW.used_memory_mib * 5 >= NEW.max_memory_mib * 4)
       OR (NEW.max_memory_mib > 0 AND OLD.used_memory_mib < NEW.max_memory_mib AND NEW.used_memory_mib >= NEW.max_memory_mib)
       OR (NEW.max_disk_gib > 0 AND OLD.used_disk_gib * 5 < NEW.max_disk_gib * 4 AND NEW.used_disk_gib * 5 >= NEW.max_disk_gib * 4)
       OR (NEW.max_disk_gib > 0 AND OLD.used_disk_gib < NEW.max_disk_gib AND NEW.used_disk_gib >= NEW.max_disk_gib)
       OR (NEW.max_vms > 0 AND OLD.used_vms * 5 < NEW.max_vms * 4 AND NEW.used_vms * 5 >= NEW.max_vms * 4)
       OR (NEW.max_vms > 0 AND OLD.used_vms < NEW.max_vms AND NEW.used_vms >= NEW.max_vms))
    EXECUTE FUNCTION quota_threshold_event();

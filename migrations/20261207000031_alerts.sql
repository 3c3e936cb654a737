-- Threshold alert rules: a metric of hosts or of a tenant's VMs (tenant_id NULL: fleet-wide,
-- every VM or host) beyond a threshold for a duration.
CREATE TABLE alert_rules (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid REFERENCES tenants (id) ON DELETE CASCADE,
    name         text NOT NULL CONSTRAINT alert_rules_name CHECK (char_length(name) BETWEEN 1 AND 80),
    subject      text NOT NULL CONSTRAINT alert_rules_subject CHECK (subject IN ('vm', 'host')),
    metric       text NOT NULL CONSTRAINT alert_rules_metric CHECK (metric IN ('cpu', 'memory', 'disk', 'network')),
    above        boolean NOT NULL,
    threshold    double precision NOT NULL,
    for_minutes  integer NOT NULL CONSTRAINT alert_rules_for CHECK (for_minutes BETWEEN 1 AND 1440),
    severity     text NOT NULL CONSTRAINT alert_rules_severity CHECK (severity IN ('info', 'warning', 'critical')),
    enabled      boolean NOT NULL DEFAULT true,
    created_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL,
    CONSTRAINT alert_rules_host_fleet CHECK (subject = 'vm' OR tenant_id IS NULL)
);

-- Alerts: one row from firing to resolved. `kind`: threshold (a rule), fault (crashed or
-- I/O-paused domains, flapping hosts, failing provisioning, lost hosts) or anomaly (a VM
-- unlike its own history). One firing alert per cause and subject: evaluating again changes
-- nothing until it resolves.
CREATE TABLE alerts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind         text NOT NULL CONSTRAINT alerts_kind CHECK (kind IN ('threshold', 'fault', 'anomaly')),
    -- The rule's id, or the fault's or anomaly's name ('crashed', 'flapping', 'cpu', …).
    cause        text NOT NULL,
    rule_id      uuid REFERENCES alert_rules (id) ON DELETE CASCADE,
    subject      uuid NOT NULL,
    subject_kind text NOT NULL,
    subject_name text NOT NULL,
    host_id      uuid,
    tenant_id    uuid REFERENCES tenants (id) ON DELETE CASCADE,
    severity     text NOT NULL,
    title        text NOT NULL,
    detail       text NOT NULL DEFAULT '',
    value        double precision,
    state        text NOT NULL DEFAULT 'firing' CONSTRAINT alerts_state CHECK (state IN ('firing', 'resolved')),
    started_at   timestamptz NOT NULL,
    resolved_at  timestamptz
);
CREATE UNIQUE INDEX alerts_firing ON alerts (kind, cause, subject) WHERE state = 'firing';
CREATE INDEX alerts_recent ON alerts (started_at DESC);
CREATE INDEX alerts_tenant ON alerts (tenant_id, started_at DESC);

-- Every change of a host's state, for flapping.
CREATE TABLE host_state_changes (
    host_id  uuid NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    state    text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX host_state_changes_host ON host_state_changes (host_id, at);
CREATE FUNCTION host_state_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO host_state_changes (host_id, state) VALUES (NEW.id, NEW.state);
    RETURN NULL;
END $$;
CREATE TRIGGER hosts_state_change AFTER UPDATE OF state ON hosts FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION host_state_change();

ALTER TABLE alert_rules ENABLE ROW LEVEL SECURITY;
CREATE POLICY alert_rules_scope ON alert_rules
    USING ((SELECT app_fleet_scope()) OR (tenant_id IS NOT NULL AND tenant_id = (SELECT app_tenant())))
    WITH CHECK ((SELECT app_fleet_scope()) OR (tenant_id IS NOT NULL AND tenant_id = (SELECT app_tenant())));
ALTER TABLE alerts ENABLE ROW LEVEL SECURITY;
CREATE POLICY alerts_scope ON alerts
    USING ((SELECT app_fleet_scope()) OR (tenant_id IS NOT NULL AND tenant_id = (SELECT app_tenant())))
    WITH CHECK ((SELECT app_fleet_scope()) OR (tenant_id IS NOT NULL AND tenant_id = (SELECT app_tenant())));
ALTER TABLE host_state_changes ENABLE ROW LEVEL SECURITY;
CREATE POLICY host_state_changes_fleet ON host_state_changes USING ((SELECT app_fleet_scope()));
GRANT SELECT, INSERT, UPDATE, DELETE ON alert_rules, alerts TO concierge_app;
GRANT SELECT, INSERT, DELETE ON host_state_changes TO concierge_app;

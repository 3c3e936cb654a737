-- Host capacity headroom (issue 18): the share of a host's memory and of its vCPUs (after
-- overcommit) not yet allocated to running domains, the smaller of the two. Read from the
-- inventory, not from samples, so how long a host has been beyond a rule's threshold is kept
-- here until it fires or comes back.
ALTER TABLE alert_rules DROP CONSTRAINT alert_rules_metric;
ALTER TABLE alert_rules ADD CONSTRAINT alert_rules_metric
    CHECK (metric IN ('cpu', 'memory', 'disk', 'network', 'headroom'));
ALTER TABLE alert_rules ADD CONSTRAINT alert_rules_headroom_hosts
    CHECK (metric <> 'headroom' OR subject = 'host');

CREATE TABLE alert_pending (
    rule_id  uuid NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    subject  uuid NOT NULL,
    since    timestamptz NOT NULL,
    PRIMARY KEY (rule_id, subject)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON alert_pending TO concierge_app;

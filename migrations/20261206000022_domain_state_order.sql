-- When the hypervisor was last asked (or told, by an event) about a domain's state. A write
-- carrying an older observation than the row's leaves the state alone: a refresh that read
-- "shut off" just before a start must not land after the start's own write and event and
-- leave a running VM listed as off until the next reconcile.
ALTER TABLE domains ADD COLUMN state_observed_at timestamptz NOT NULL DEFAULT '-infinity';

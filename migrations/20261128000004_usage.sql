-- Usage and showback: the history usage is derived from (VM sizes and domain power states),
-- hourly usage per VM, and the rate cards that price it.

-- Every size a portal VM has had, from its creation on (resizes add rows).
CREATE TABLE vm_size_history (
    id          bigserial PRIMARY KEY,
    vm_uuid     uuid NOT NULL,
    at          timestamptz NOT NULL,
    vcpus       integer NOT NULL,
    memory_mib  bigint NOT NULL,
    disk_gib    bigint NOT NULL
);
CREATE INDEX vm_size_history_vm ON vm_size_history (vm_uuid, at);

CREATE FUNCTION vms_size_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.vcpus <> OLD.vcpus OR NEW.memory_mib <> OLD.memory_mib OR NEW.disk_gib <> OLD.disk_gib THEN
        INSERT INTO vm_size_history (vm_uuid, at, vcpus, memory_mib, disk_gib)
        VALUES (NEW.uuid, NEW.updated_at, NEW.vcpus, NEW.memory_mib, NEW.disk_gib);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER vms_size_history AFTER INSERT OR UPDATE OF vcpus, memory_mib, disk_gib ON vms
    FOR EACH ROW EXECUTE FUNCTION vms_size_history();

-- Every power state a domain has been in (from events and reconciles). 'gone' when it
-- vanished from its host.
CREATE TABLE domain_state_history (
    id       bigserial PRIMARY KEY,
    uuid     uuid NOT NULL,
    host_id  uuid NOT NULL,
    state    text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX domain_state_history_uuid ON domain_state_history (uuid, at);

CREATE FUNCTION domains_state_history() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_state text := CASE WHEN NEW.missing_since IS NOT NULL THEN 'gone' ELSE NEW.state END;
BEGIN
    IF TG_OP = 'INSERT'
       OR v_state IS DISTINCT FROM (CASE WHEN OLD.missing_since IS NOT NULL THEN 'gone' ELSE OLD.state END) THEN
        INSERT INTO domain_state_history (uuid, host_id, state, at) VALUES (NEW.uuid, NEW.host_id, v_state, now());
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER domains_state_history AFTER INSERT OR UPDATE OF state, missing_since ON domains
    FOR EACH ROW EXECUTE FUNCTION domains_state_history();

-- Hourly usage per portal VM: allocated vCPU-hours, memory and disk GiB-hours, powered-on
-- hours. Filled hour by hour behind a watermark (incremental, never a rescan).
CREATE TABLE usage_hourly (
    vm_uuid            uuid NOT NULL,
    hour               timestamptz NOT NULL,
    tenant_id          uuid NOT NULL,
    owner_id           uuid,
    template_id        uuid,
    vcpu_hours         double precision NOT NULL,
    memory_gib_hours   double precision NOT NULL,
    disk_gib_hours     double precision NOT NULL,
    powered_on_hours   double precision NOT NULL,
    PRIMARY KEY (vm_uuid, hour)
);
CREATE INDEX usage_hourly_tenant ON usage_hourly (tenant_id, hour);
ALTER TABLE usage_hourly ENABLE ROW LEVEL SECURITY;
CREATE POLICY usage_hourly_scope ON usage_hourly
    USING (app_fleet_scope() OR tenant_id = app_tenant())
    WITH CHECK (app_fleet_scope() OR tenant_id = app_tenant());

-- The first hour not yet rolled up.
CREATE TABLE usage_watermark (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    hour  timestamptz NOT NULL
);

-- Prices per unit-hour, optionally for one template, valid over [valid_from, valid_to).
CREATE TABLE rate_cards (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    template_id           uuid REFERENCES templates (id) ON DELETE CASCADE,
    currency              text NOT NULL CONSTRAINT rate_cards_currency CHECK (currency ~ '^[A-Z]{3}$'),
    vcpu_hour             numeric(12, 6) NOT NULL CONSTRAINT rate_cards_vcpu_nonneg CHECK (vcpu_hour >= 0),
    memory_gib_hour       numeric(12, 6) NOT NULL CONSTRAINT rate_cards_memory_nonneg CHECK (memory_gib_hour >= 0),
    disk_gib_hour         numeric(12, 6) NOT NULL CONSTRAINT rate_cards_disk_nonneg CHECK (disk_gib_hour >= 0),
    valid_from            timestamptz NOT NULL,
    valid_to              timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rate_cards_period CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE INDEX rate_cards_lookup ON rate_cards (template_id, valid_from);

GRANT SELECT, INSERT ON vm_size_history, domain_state_history TO concierge_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON usage_hourly, usage_watermark, rate_cards TO concierge_app;
GRANT USAGE ON SEQUENCE vm_size_history_id_seq, domain_state_history_id_seq TO concierge_app;

-- Reclamation rules: per tenant, or the fleet default (tenant_id NULL) for tenants without
-- their own rule of that kind. Saved disabled until the admin has seen the dry run.
CREATE TABLE reclamation_rules (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid REFERENCES tenants (id) ON DELETE CASCADE,
    kind          text NOT NULL CONSTRAINT reclamation_rules_kind CHECK (kind IN ('idle', 'powered_off', 'orphaned')),
    enabled       boolean NOT NULL DEFAULT false,
    days          integer NOT NULL CONSTRAINT reclamation_rules_days CHECK (days BETWEEN 1 AND 365),
    cpu_pct       real NOT NULL CONSTRAINT reclamation_rules_cpu CHECK (cpu_pct BETWEEN 0 AND 100),
    io_kbps       real NOT NULL CONSTRAINT reclamation_rules_io CHECK (io_kbps >= 0),
    net_kbps      real NOT NULL CONSTRAINT reclamation_rules_net CHECK (net_kbps >= 0),
    share_pct     integer NOT NULL CONSTRAINT reclamation_rules_share CHECK (share_pct BETWEEN 1 AND 100),
    action        text NOT NULL CONSTRAINT reclamation_rules_action CHECK (action IN ('stop', 'delete')),
    response_days integer NOT NULL CONSTRAINT reclamation_rules_response CHECK (response_days BETWEEN 1 AND 90),
    updated_by    uuid REFERENCES users (id) ON DELETE SET NULL,
    updated_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX reclamation_rules_key
    ON reclamation_rules (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), kind);

-- What a rule proposed for one VM, and what became of it. The VM's size is kept for the
-- report (what was reclaimed), the evidence for the owner.
CREATE TABLE reclamation_proposals (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    vm_uuid      uuid NOT NULL,
    kind         text NOT NULL,
    action       text NOT NULL,
    evidence     jsonb NOT NULL,
    vcpus        integer NOT NULL,
    memory_mib   bigint NOT NULL,
    disk_gib     bigint NOT NULL,
    state        text NOT NULL DEFAULT 'open'
                 CONSTRAINT reclamation_proposals_state CHECK (state IN ('open', 'kept', 'done', 'dropped')),
    created_at   timestamptz NOT NULL,
    respond_by   timestamptz NOT NULL,
    answered_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    answered_at  timestamptz,
    reason       text CONSTRAINT reclamation_proposals_reason CHECK (char_length(reason) <= 500),
    -- A kept VM is left alone by this kind of rule until then.
    keep_until   timestamptz,
    done_at      timestamptz
);
-- One open proposal per VM and kind: evaluating again changes nothing.
CREATE UNIQUE INDEX reclamation_proposals_open ON reclamation_proposals (vm_uuid, kind) WHERE state = 'open';
CREATE INDEX reclamation_proposals_tenant ON reclamation_proposals (tenant_id, created_at DESC);
CREATE INDEX reclamation_proposals_due ON reclamation_proposals (respond_by) WHERE state = 'open';

ALTER TABLE reclamation_rules ENABLE ROW LEVEL SECURITY;
CREATE POLICY reclamation_rules_scope ON reclamation_rules
    USING ((SELECT app_fleet_scope()) OR (tenant_id IS NOT NULL AND tenant_id = (SELECT app_tenant())))
    WITH CHECK ((SELECT app_fleet_scope()) OR (tenant_id IS NOT NULL AND tenant_id = (SELECT app_tenant())));
ALTER TABLE reclamation_proposals ENABLE ROW LEVEL SECURITY;
CREATE POLICY reclamation_proposals_scope ON reclamation_proposals
    USING ((SELECT app_fleet_scope()) OR tenant_id = (SELECT app_tenant()))
    WITH CHECK ((SELECT app_fleet_scope()) OR tenant_id = (SELECT app_tenant()));
GRANT SELECT, INSERT, UPDATE, DELETE ON reclamation_rules, reclamation_proposals TO concierge_app;

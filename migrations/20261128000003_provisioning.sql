-- Self-service provisioning: templates, quotas and their ledger, approval policy, requests,
-- the VMs they create, and the job queue that provisions them.

-- Templates are fleet-level recipes; which tenants may use one is a list, and a tenant admin
-- may hide a published template from their own tenant.
CREATE TABLE templates (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name             text NOT NULL CONSTRAINT templates_name_length CHECK (char_length(name) BETWEEN 1 AND 80),
    description      text NOT NULL DEFAULT '' CONSTRAINT templates_description_length CHECK (char_length(description) <= 2000),
    os               text NOT NULL CONSTRAINT templates_os_length CHECK (char_length(os) BETWEEN 1 AND 80),
    -- Allowed sizes: [{"name": "small", "vcpus": 1, "memory_mib": 1024, "disk_gib": 10}, ...]
    sizes            jsonb NOT NULL CONSTRAINT templates_sizes_nonempty CHECK (jsonb_array_length(sizes) BETWEEN 1 AND 20),
    default_lease_days integer NOT NULL CONSTRAINT templates_default_lease CHECK (default_lease_days BETWEEN 1 AND 3650),
    max_lease_days   integer NOT NULL CONSTRAINT templates_max_lease CHECK (max_lease_days BETWEEN 1 AND 3650),
    all_tenants      boolean NOT NULL DEFAULT false,
    tenant_ids       uuid[] NOT NULL DEFAULT '{}',
    published        boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT templates_lease_order CHECK (default_lease_days <= max_lease_days)
);
CREATE UNIQUE INDEX templates_name_key ON templates (lower(name));

-- Where a template's base image lives: one volume per host that has it.
CREATE TABLE template_images (
    template_id uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    host_id     uuid NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    pool        text NOT NULL,
    volume      text NOT NULL,
    CONSTRAINT template_images_pkey PRIMARY KEY (template_id, host_id)
);

CREATE TABLE template_hidden (
    template_id uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    PRIMARY KEY (template_id, tenant_id)
);

-- Quotas: limits and the usage counters the ledger keeps. A tenant without a row cannot
-- provision (fleet admins set one; new tenants get the defaults below). A user without a row
-- is bounded by the tenant alone.
CREATE TABLE tenant_quotas (
    tenant_id       uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    max_vcpus       integer NOT NULL CONSTRAINT tenant_quotas_vcpus CHECK (max_vcpus >= 0),
    max_memory_mib  bigint NOT NULL CONSTRAINT tenant_quotas_memory CHECK (max_memory_mib >= 0),
    max_disk_gib    bigint NOT NULL CONSTRAINT tenant_quotas_disk CHECK (max_disk_gib >= 0),
    max_vms         integer NOT NULL CONSTRAINT tenant_quotas_vms CHECK (max_vms >= 0),
    used_vcpus      integer NOT NULL DEFAULT 0,
    used_memory_mib bigint NOT NULL DEFAULT 0,
    used_disk_gib   bigint NOT NULL DEFAULT 0,
    used_vms        integer NOT NULL DEFAULT 0,
    -- The ledger never lets usage pass the limits (lowering a limit below usage is allowed:
    -- it only blocks new reservations).
    CONSTRAINT tenant_quotas_usage_nonneg CHECK (used_vcpus >= 0 AND used_memory_mib >= 0 AND used_disk_gib >= 0 AND used_vms >= 0)
);

CREATE TABLE user_quotas (
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    max_vcpus       integer NOT NULL CONSTRAINT user_quotas_vcpus CHECK (max_vcpus >= 0),
    max_memory_mib  bigint NOT NULL CONSTRAINT user_quotas_memory CHECK (max_memory_mib >= 0),
    max_disk_gib    bigint NOT NULL CONSTRAINT user_quotas_disk CHECK (max_disk_gib >= 0),
    max_vms         integer NOT NULL CONSTRAINT user_quotas_vms CHECK (max_vms >= 0),
    PRIMARY KEY (tenant_id, user_id)
);

-- Per-tenant approval policy. Requests within every auto-approve threshold are approved at
-- once; others go through the ordered levels.
CREATE TABLE approval_policies (
    tenant_id            uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    auto_max_vcpus       integer NOT NULL DEFAULT 2 CHECK (auto_max_vcpus >= 0),
    auto_max_memory_mib  bigint NOT NULL DEFAULT 4096 CHECK (auto_max_memory_mib >= 0),
    auto_max_count       integer NOT NULL DEFAULT 1 CHECK (auto_max_count >= 0),
    auto_max_lease_days  integer NOT NULL DEFAULT 30 CHECK (auto_max_lease_days >= 0),
    -- Empty: any template may be auto-approved.
    auto_template_ids    uuid[] NOT NULL DEFAULT '{}',
    expire_days          integer NOT NULL DEFAULT 7 CHECK (expire_days BETWEEN 1 AND 365)
);

-- Ordered approval levels; approvers empty means "any approver or tenant admin of the tenant".
CREATE TABLE approval_levels (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    level      integer NOT NULL CHECK (level BETWEEN 1 AND 10),
    mode       text NOT NULL CHECK (mode IN ('any', 'all')),
    approvers  uuid[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, level)
);

CREATE FUNCTION tenant_provisioning_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_quotas (tenant_id, max_vcpus, max_memory_mib, max_disk_gib, max_vms)
    VALUES (NEW.id, 16, 65536, 500, 10) ON CONFLICT DO NOTHING;
    INSERT INTO approval_policies (tenant_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NEW;
END $$;
CREATE TRIGGER tenants_provisioning_defaults AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenant_provisioning_defaults();
INSERT INTO tenant_quotas (tenant_id, max_vcpus, max_memory_mib, max_disk_gib, max_vms)
    SELECT id, 16, 65536, 500, 10 FROM tenants ON CONFLICT DO NOTHING;
INSERT INTO approval_policies (tenant_id) SELECT id FROM tenants ON CONFLICT DO NOTHING;

CREATE TABLE requests (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    requester_id    uuid NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    template_id     uuid NOT NULL REFERENCES templates (id) ON DELETE RESTRICT,
    size_name       text NOT NULL,
    vcpus           integer NOT NULL CHECK (vcpus > 0),
    memory_mib      bigint NOT NULL CHECK (memory_mib > 0),
    disk_gib        bigint NOT NULL CHECK (disk_gib > 0),
    count           integer NOT NULL CHECK (count BETWEEN 1 AND 50),
    name_prefix     text NOT NULL,
    lease_days      integer NOT NULL CHECK (lease_days > 0),
    purpose         text NOT NULL CHECK (char_length(purpose) BETWEEN 1 AND 1000),
    state           text NOT NULL CHECK (state IN ('submitted', 'pending_approval', 'approved', 'rejected',
                                                   'provisioning', 'fulfilled', 'failed', 'cancelled', 'expired')),
    -- Which approval level is being decided (pending_approval only).
    level           integer,
    reason          text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    decide_by       timestamptz
);
CREATE INDEX requests_tenant_state ON requests (tenant_id, state, created_at DESC);
CREATE INDEX requests_requester ON requests (requester_id, created_at DESC);
ALTER TABLE requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY requests_scope ON requests
    USING (app_fleet_scope() OR tenant_id = app_tenant())
    WITH CHECK (app_fleet_scope() OR tenant_id = app_tenant());
-- A requester lists their own requests across tenants.
CREATE POLICY requests_own ON requests FOR SELECT USING (requester_id = app_user());

-- The request's log: transitions, approvals, placement, progress. Shown on the request page.
CREATE TABLE request_events (
    id          bigserial PRIMARY KEY,
    request_id  uuid NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_id    uuid REFERENCES users (id) ON DELETE SET NULL,
    kind        text NOT NULL,
    message     text NOT NULL
);
CREATE INDEX request_events_request ON request_events (request_id, id);
ALTER TABLE request_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY request_events_scope ON request_events
    USING (app_fleet_scope() OR tenant_id = app_tenant())
    WITH CHECK (app_fleet_scope() OR tenant_id = app_tenant());

CREATE TABLE request_approvals (
    request_id  uuid NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    level       integer NOT NULL,
    approver_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    decision    text NOT NULL CHECK (decision IN ('approved', 'rejected')),
    reason      text,
    at          timestamptz NOT NULL,
    PRIMARY KEY (request_id, level, approver_id)
);

-- The VMs the portal manages: the intent (owner, template, size, lease) and the provisioning
-- progress. The UUID is chosen at approval and keys every idempotent step.
CREATE TABLE vms (
    uuid            uuid PRIMARY KEY,
    request_id      uuid REFERENCES requests (id) ON DELETE SET NULL,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    owner_id        uuid REFERENCES users (id) ON DELETE SET NULL,
    template_id     uuid REFERENCES templates (id) ON DELETE SET NULL,
    name            text NOT NULL,
    vcpus           integer NOT NULL,
    memory_mib      bigint NOT NULL,
    disk_gib        bigint NOT NULL,
    host_id         uuid REFERENCES hosts (id) ON DELETE SET NULL,
    pool            text,
    volume          text,
    -- pending, placing, cloning, defining, starting, running, failed, expired, deleting, deleted
    phase           text NOT NULL,
    error           text,
    lease_ends_at   timestamptz NOT NULL,
    reminded_days   integer,
    stopped_for_lease_at timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz
);
CREATE INDEX vms_tenant_owner ON vms (tenant_id, owner_id) WHERE deleted_at IS NULL;
CREATE INDEX vms_request ON vms (request_id);
CREATE INDEX vms_lease ON vms (lease_ends_at) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX vms_name_key ON vms (tenant_id, name) WHERE deleted_at IS NULL;
ALTER TABLE vms ENABLE ROW LEVEL SECURITY;
CREATE POLICY vms_scope ON vms
    USING (app_fleet_scope() OR tenant_id = app_tenant())
    WITH CHECK (app_fleet_scope() OR tenant_id = app_tenant());
CREATE POLICY vms_own ON vms FOR SELECT USING (owner_id = app_user());

-- The quota ledger: one entry per VM, reserved at submission, allocated once provisioned,
-- released (with the reason) on rejection, cancellation, failure or deletion. Counters in
-- tenant_quotas move only together with these rows.
CREATE TABLE quota_ledger (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    request_id  uuid NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    vm_uuid     uuid,
    vcpus       integer NOT NULL,
    memory_mib  bigint NOT NULL,
    disk_gib    bigint NOT NULL,
    vms         integer NOT NULL,
    state       text NOT NULL CHECK (state IN ('reserved', 'allocated', 'released')),
    reason      text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX quota_ledger_open ON quota_ledger (tenant_id, user_id) WHERE state <> 'released';
CREATE INDEX quota_ledger_request ON quota_ledger (request_id);

-- Background jobs (provisioning and its relatives): claimed with FOR UPDATE SKIP LOCKED under
-- a lease that the runner extends while it works; a lapsed lease means the runner died.
CREATE TABLE jobs (
    id            bigserial PRIMARY KEY,
    kind          text NOT NULL,
    -- What the job works on; one live job per (kind, key) so nothing is done twice.
    key           uuid NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}',
    state         text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 5,
    run_at        timestamptz NOT NULL DEFAULT now(),
    locked_until  timestamptz,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE UNIQUE INDEX jobs_live_key ON jobs (kind, key) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_ready ON jobs (run_at) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (locked_until) WHERE state = 'running';

-- Snapshots taken through the portal (libvirt holds the data; this is who and why).
CREATE TABLE vm_snapshots (
    vm_uuid     uuid NOT NULL REFERENCES vms (uuid) ON DELETE CASCADE,
    name        text NOT NULL,
    tenant_id   uuid NOT NULL,
    description text NOT NULL DEFAULT '',
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (vm_uuid, name)
);
ALTER TABLE vm_snapshots ENABLE ROW LEVEL SECURITY;
CREATE POLICY vm_snapshots_scope ON vm_snapshots
    USING (app_fleet_scope() OR tenant_id = app_tenant())
    WITH CHECK (app_fleet_scope() OR tenant_id = app_tenant());

GRANT SELECT, INSERT, UPDATE, DELETE ON templates, template_images, template_hidden, tenant_quotas,
    user_quotas, approval_policies, approval_levels, requests, request_events, request_approvals,
    vms, quota_ledger, jobs, vm_snapshots TO concierge_app;
GRANT USAGE ON SEQUENCE request_events_id_seq, quota_ledger_id_seq, jobs_id_seq TO concierge_app;

-- Owners see their own VMs' domains across tenants ("my VMs").
CREATE POLICY domains_own ON domains FOR SELECT USING (owner_id = app_user());

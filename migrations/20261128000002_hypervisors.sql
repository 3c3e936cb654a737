-- Hypervisor hosts and their live inventory: storage pools, networks, domains.
-- Hosts, pools and networks are fleet-level (fleet admins only); domains are tenant-scoped
-- once managed or adopted, and unmanaged ones (drift) belong to no tenant.

CREATE TABLE hosts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL CONSTRAINT hosts_name_format CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    uri             text NOT NULL CONSTRAINT hosts_uri_length CHECK (char_length(uri) BETWEEN 3 AND 500),
    labels          text[] NOT NULL DEFAULT '{}',
    schedulable     boolean NOT NULL DEFAULT true,
    maintenance     boolean NOT NULL DEFAULT false,
    simulated       boolean NOT NULL DEFAULT false,
    state           text NOT NULL DEFAULT 'connecting'
                    CONSTRAINT hosts_state_check CHECK (state IN ('connecting', 'connected', 'lost')),
    state_reason    text,
    state_since     timestamptz NOT NULL DEFAULT now(),
    hostname        text,
    cpus            integer,
    cpu_model       text,
    memory_kib      bigint,
    free_memory_kib bigint,
    lib_version     bigint,
    hv_type         text,
    hv_version      bigint,
    last_sync_at    timestamptz,
    last_sync_ms    integer,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX hosts_name_key ON hosts (name);
CREATE UNIQUE INDEX hosts_uri_key ON hosts (uri);

CREATE TABLE storage_pools (
    host_id         uuid NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    name            text NOT NULL,
    uuid            uuid,
    pool_type       text,
    path            text,
    active          boolean NOT NULL DEFAULT false,
    capacity        bigint NOT NULL DEFAULT 0,
    allocation      bigint NOT NULL DEFAULT 0,
    available       bigint NOT NULL DEFAULT 0,
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    missing_since   timestamptz,
    PRIMARY KEY (host_id, name)
);

CREATE TABLE networks (
    host_id         uuid NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    name            text NOT NULL,
    uuid            uuid,
    active          boolean NOT NULL DEFAULT false,
    forward_mode    text,
    bridge          text,
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    missing_since   timestamptz,
    PRIMARY KEY (host_id, name)
);

CREATE TABLE domains (
    host_id         uuid NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    uuid            uuid NOT NULL,
    name            text NOT NULL,
    state           text NOT NULL,
    state_reason    text,
    vcpus           integer NOT NULL DEFAULT 0,
    memory_kib      bigint NOT NULL DEFAULT 0,
    disks           jsonb NOT NULL DEFAULT '[]',
    nics            jsonb NOT NULL DEFAULT '[]',
    -- Created by the portal (or adopted): then it has a tenant and an owner.
    managed         boolean NOT NULL DEFAULT false,
    tenant_id       uuid REFERENCES tenants (id) ON DELETE RESTRICT,
    owner_id        uuid REFERENCES users (id) ON DELETE SET NULL,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    state_since     timestamptz NOT NULL DEFAULT now(),
    missing_since   timestamptz,
    PRIMARY KEY (host_id, uuid),
    CONSTRAINT domains_managed_has_tenant CHECK (NOT managed OR tenant_id IS NOT NULL)
);
CREATE INDEX domains_tenant ON domains (tenant_id, name) WHERE tenant_id IS NOT NULL;
CREATE INDEX domains_unmanaged ON domains (host_id) WHERE NOT managed;
CREATE INDEX domains_uuid ON domains (uuid);
ALTER TABLE domains ENABLE ROW LEVEL SECURITY;
CREATE POLICY domains_scope ON domains
    USING (app_fleet_scope() OR tenant_id = app_tenant())
    WITH CHECK (app_fleet_scope() OR tenant_id = app_tenant());

-- Lifecycle operations on domains: who asked for what, how it went, how long it took.
CREATE TABLE domain_operations (
    id              bigserial PRIMARY KEY,
    host_id         uuid NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    domain_uuid     uuid NOT NULL,
    tenant_id       uuid REFERENCES tenants (id) ON DELETE SET NULL,
    actor_id        uuid REFERENCES users (id) ON DELETE SET NULL,
    operation       text NOT NULL,
    status          text NOT NULL CONSTRAINT domain_operations_status CHECK (status IN ('running', 'succeeded', 'failed')),
    error           text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    duration_ms     integer
);
CREATE INDEX domain_operations_domain ON domain_operations (host_id, domain_uuid, id DESC);
ALTER TABLE domain_operations ENABLE ROW LEVEL SECURITY;
CREATE POLICY domain_operations_scope ON domain_operations
    USING (app_fleet_scope() OR tenant_id = app_tenant())
    WITH CHECK (app_fleet_scope() OR tenant_id = app_tenant());

GRANT SELECT, INSERT, UPDATE, DELETE ON hosts, storage_pools, networks, domains, domain_operations TO concierge_app;
GRANT USAGE ON SEQUENCE domain_operations_id_seq TO concierge_app;

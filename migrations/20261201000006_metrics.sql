-- Metrics: raw samples from each host's sampler (rates already computed from counter deltas),
-- rolled up into 5-minute, hourly and daily buckets. A subject is a host (its id) or a domain
-- (its libvirt UUID). Rates are NULL in a sample with nothing to compare against (the first
-- after a start, a gap or a reset of the sampler); gauges are always there.

CREATE TABLE metric_samples (
    subject      uuid NOT NULL,
    is_host      boolean NOT NULL,
    host_id      uuid NOT NULL,
    tenant_id    uuid,
    at           timestamptz NOT NULL,
    cpu_pct      real,
    mem_bytes    bigint,
    disk_rd_bps  real,
    disk_wr_bps  real,
    net_rx_bps   real,
    net_tx_bps   real,
    -- Hosts only: running domains.
    vms          integer
);
CREATE INDEX metric_samples_subject ON metric_samples (subject, at);
-- Append-only in time order: a BRIN index serves the rollup's and the retention's range scans.
CREATE INDEX metric_samples_at ON metric_samples USING brin (at);

-- One row per subject per bucket per resolution (300, 3600 or 86400 seconds). Sums and counts,
-- not averages, so merging buckets into coarser ones is exact.
CREATE TABLE metric_rollups (
    resolution   integer NOT NULL CONSTRAINT metric_rollups_resolution CHECK (resolution IN (300, 3600, 86400)),
    subject      uuid NOT NULL,
    bucket       timestamptz NOT NULL,
    is_host      boolean NOT NULL,
    host_id      uuid NOT NULL,
    tenant_id    uuid,
    n            integer NOT NULL,
    rate_n       integer NOT NULL,
    cpu_min real, cpu_sum double precision, cpu_max real,
    mem_min bigint, mem_sum double precision, mem_max bigint,
    rd_min real, rd_sum double precision, rd_max real,
    wr_min real, wr_sum double precision, wr_max real,
    rx_min real, rx_sum double precision, rx_max real,
    tx_min real, tx_sum double precision, tx_max real,
    vms_min integer, vms_sum double precision, vms_max integer,
    PRIMARY KEY (resolution, subject, bucket)
);
-- Fleet charts read every host's buckets of one resolution over a range.
CREATE INDEX metric_rollups_hosts ON metric_rollups (resolution, bucket) WHERE is_host;

-- Per resolution: everything before `upto` has been rolled into that resolution.
CREATE TABLE metric_watermarks (
    resolution  integer PRIMARY KEY,
    upto        timestamptz NOT NULL
);

ALTER TABLE metric_samples ENABLE ROW LEVEL SECURITY;
CREATE POLICY metric_samples_scope ON metric_samples
    USING (app_fleet_scope() OR tenant_id = app_tenant())
    WITH CHECK (app_fleet_scope() OR tenant_id = app_tenant());
ALTER TABLE metric_rollups ENABLE ROW LEVEL SECURITY;
CREATE POLICY metric_rollups_scope ON metric_rollups
    USING (app_fleet_scope() OR tenant_id = app_tenant())
    WITH CHECK (app_fleet_scope() OR tenant_id = app_tenant());

GRANT SELECT, INSERT, UPDATE, DELETE ON metric_samples, metric_rollups, metric_watermarks TO concierge_app;

-- Usage per VM per month (UTC), kept alongside `usage_hourly` by the usage rollup (each hour is
-- added once, in the transaction that writes it). Reports read whole months from here when no
-- rate card starts or ends inside the month, so a year's report reads 12 rows per VM instead
-- of 8,760. One row per attribution (tenant, owner, template), so grouping stays exact.
CREATE TABLE usage_monthly (
    vm_uuid            uuid NOT NULL,
    month              timestamptz NOT NULL,
    tenant_id          uuid NOT NULL,
    owner_id           uuid,
    template_id        uuid,
    vcpu_hours         double precision NOT NULL,
    memory_gib_hours   double precision NOT NULL,
    disk_gib_hours     double precision NOT NULL,
    powered_on_hours   double precision NOT NULL,
    CONSTRAINT usage_monthly_key UNIQUE NULLS NOT DISTINCT (vm_uuid, month, tenant_id, owner_id, template_id)
);
CREATE INDEX usage_monthly_tenant ON usage_monthly (tenant_id, month);
ALTER TABLE usage_monthly ENABLE ROW LEVEL SECURITY;
CREATE POLICY usage_monthly_scope ON usage_monthly
    USING ((SELECT app_fleet_scope()) OR tenant_id = (SELECT app_tenant()))
    WITH CHECK ((SELECT app_fleet_scope()) OR tenant_id = (SELECT app_tenant()));
GRANT SELECT, INSERT, UPDATE, DELETE ON usage_monthly TO concierge_app;

-- Existing hours.
INSERT INTO usage_monthly (vm_uuid, month, tenant_id, owner_id, template_id, vcpu_hours,
                           memory_gib_hours, disk_gib_hours, powered_on_hours)
SELECT vm_uuid, date_trunc('month', hour, 'UTC'), tenant_id, owner_id, template_id,
       sum(vcpu_hours), sum(memory_gib_hours), sum(disk_gib_hours), sum(powered_on_hours)
FROM usage_hourly
GROUP BY 1, 2, 3, 4, 5;

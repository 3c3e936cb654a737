-- Check-and-reserve as one server-side call, so the submission can send it together with its
-- COMMIT: the tenant's quota row is then locked only while PostgreSQL runs this function and
-- the commit, never across a round trip to the application (100 racing submissions queued
-- ~90 ms for that lock when it was held over several round trips and a synchronous flush).
--
-- Runs as the caller (row-level security applies). Raises `quota exceeded` (SQLSTATE P0001)
-- and changes nothing when the tenant's or the user's limit would be passed, or when the
-- tenant has no quota row; the caller then explains which limit in a new transaction.
CREATE FUNCTION quota_reserve(
    p_tenant uuid, p_user uuid, p_request uuid,
    p_vcpus integer, p_memory_mib bigint, p_disk_gib bigint,
    p_vms uuid[], p_now timestamptz
) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n integer := cardinality(p_vms);
    lim record;
    used record;
BEGIN
    -- Refuse without queueing for the lock when the committed counters already leave no room:
    -- a later commit can only have used more (releases aside, which a moment later would
    -- have missed too). Racing submissions then queue only while there still is room.
    PERFORM 1 FROM tenant_quotas
     WHERE tenant_id = p_tenant
       AND used_vcpus + p_vcpus * n <= max_vcpus AND used_memory_mib + p_memory_mib * n <= max_memory_mib
       AND used_disk_gib + p_disk_gib * n <= max_disk_gib AND used_vms + n <= max_vms;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'quota exceeded' USING DETAIL = 'tenant';
    END IF;
    -- The ledger rows first, before the row lock is taken: a refusal raises, and the caller's
    -- rollback removes them.
    INSERT INTO quota_ledger (tenant_id, user_id, request_id, vm_uuid, vcpus, memory_mib, disk_gib, vms,
                              state, created_at, updated_at)
    SELECT p_tenant, p_user, p_request, u, p_vcpus, p_memory_mib, p_disk_gib, 1, 'reserved', p_now, p_now
      FROM unnest(p_vms) AS u;
    UPDATE tenant_quotas
       SET used_vcpus = used_vcpus + p_vcpus * n, used_memory_mib = used_memory_mib + p_memory_mib * n,
           used_disk_gib = used_disk_gib + p_disk_gib * n, used_vms = used_vms + n
     WHERE tenant_id = p_tenant
       AND used_vcpus + p_vcpus * n <= max_vcpus AND used_memory_mib + p_memory_mib * n <= max_memory_mib
       AND used_disk_gib + p_disk_gib * n <= max_disk_gib AND used_vms + n <= max_vms;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'quota exceeded' USING DETAIL = 'tenant';
    END IF;
    -- The tenant row is locked until the commit, so every reservation of this tenant queues
    -- behind it; this statement takes a new snapshot (volatile plpgsql, read committed) and so
    -- sees every reservation committed before the lock was granted, and this one's own rows.
    SELECT max_vcpus, max_memory_mib, max_disk_gib, max_vms INTO lim
      FROM user_quotas WHERE tenant_id = p_tenant AND user_id = p_user;
    IF FOUND THEN
        SELECT coalesce(sum(vcpus), 0) AS vcpus, coalesce(sum(memory_mib), 0) AS memory_mib,
               coalesce(sum(disk_gib), 0) AS disk_gib, coalesce(sum(vms), 0) AS vms INTO used
          FROM quota_ledger WHERE tenant_id = p_tenant AND user_id = p_user AND state <> 'released';
        IF used.vcpus > lim.max_vcpus OR used.memory_mib > lim.max_memory_mib
           OR used.disk_gib > lim.max_disk_gib OR used.vms > lim.max_vms THEN
            RAISE EXCEPTION 'quota exceeded' USING DETAIL = 'user';
        END IF;
    END IF;
END
$$;

-- The drift list (unmanaged domains, by name) pages by keyset: after the last row's
-- (name, host, uuid), which this index finds in one seek however deep the page. Its count
-- reads the index alone: the row-level-security policy's columns are included.
CREATE INDEX domains_drift_order ON domains (name, host_id, uuid) INCLUDE (tenant_id, owner_id)
    WHERE NOT managed AND missing_since IS NULL;

-- The VM list picks its page from one of these indexes and skips OFFSET rows on the way: with
-- the columns its filters and row-level security read (tenant, owner) included, that walk is
-- an index-only scan instead of one heap visit per skipped row (page 100 of 10,000 VMs by
-- lease: 1.1 ms → 0.46 ms of the query).
DROP INDEX vms_name_order;
DROP INDEX vms_lease_order;
DROP INDEX vms_created_order;
CREATE INDEX vms_name_order ON vms (name, uuid) INCLUDE (tenant_id, owner_id) WHERE deleted_at IS NULL;
CREATE INDEX vms_lease_order ON vms (lease_ends_at, name, uuid) INCLUDE (tenant_id, owner_id) WHERE deleted_at IS NULL;
CREATE INDEX vms_created_order ON vms (created_at DESC, uuid) INCLUDE (tenant_id, owner_id) WHERE deleted_at IS NULL;
-- A user's own VMs ("My VMs", the home page): found by owner, then sorted (a user has few).
CREATE INDEX vms_owner ON vms (owner_id) WHERE deleted_at IS NULL;

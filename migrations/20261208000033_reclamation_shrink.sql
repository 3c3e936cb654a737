-- Oversized VMs (issue 18): a rule on the 95th percentile of CPU and memory, whose one action
-- is to shrink the VM to a smaller size of its template at its next stop. A proposal records
-- the size it proposes, what carrying it out freed, and what that allocation costs a month at
-- the rate card of that day (for the reclamation report).
ALTER TABLE reclamation_rules DROP CONSTRAINT reclamation_rules_kind;
ALTER TABLE reclamation_rules ADD CONSTRAINT reclamation_rules_kind
    CHECK (kind IN ('idle', 'powered_off', 'orphaned', 'oversized'));
ALTER TABLE reclamation_rules ADD COLUMN mem_pct real NOT NULL DEFAULT 50
    CONSTRAINT reclamation_rules_mem CHECK (mem_pct BETWEEN 0 AND 100);
ALTER TABLE reclamation_rules DROP CONSTRAINT reclamation_rules_action;
ALTER TABLE reclamation_rules ADD CONSTRAINT reclamation_rules_action
    CHECK (action IN ('stop', 'delete', 'shrink') AND (action = 'shrink') = (kind = 'oversized'));

-- 'waiting': accepted (or not answered) shrink, carried out when the VM is next shut off.
ALTER TABLE reclamation_proposals DROP CONSTRAINT reclamation_proposals_state;
ALTER TABLE reclamation_proposals ADD CONSTRAINT reclamation_proposals_state
    CHECK (state IN ('open', 'kept', 'waiting', 'done', 'dropped'));
ALTER TABLE reclamation_proposals
    ADD COLUMN new_vcpus integer,
    ADD COLUMN new_memory_mib bigint,
    ADD COLUMN new_size text,
    ADD COLUMN freed_vcpus integer,
    ADD COLUMN freed_memory_mib bigint,
    ADD COLUMN freed_disk_gib bigint,
    ADD COLUMN monthly_cost numeric(14, 4),
    ADD COLUMN currency text;
-- Done before: a stop freed the VM's vCPUs and memory on its host, a delete everything.
UPDATE reclamation_proposals
   SET freed_vcpus = vcpus, freed_memory_mib = memory_mib,
       freed_disk_gib = CASE WHEN action = 'delete' THEN disk_gib ELSE 0 END
 WHERE state = 'done';
CREATE INDEX reclamation_proposals_waiting ON reclamation_proposals (vm_uuid) WHERE state = 'waiting';

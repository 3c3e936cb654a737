-- A portal VM's phase is one of a known set (app::states::VmPhase), and which phases hold
-- resources on their host while being built is said once, here, for every query that sums
-- them (placement, the fleet dashboard). Before this, "seeding" was missing from those sums:
-- a VM writing its cloud-init seed did not count against its host.
ALTER TABLE vms ADD CONSTRAINT vms_phase CHECK (phase IN (
    'pending', 'placing', 'cloning', 'seeding', 'defining', 'starting', 'running',
    'failed', 'expired', 'deleting', 'deleted'));

CREATE FUNCTION vm_phase_building(phase text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT phase IN ('placing', 'cloning', 'seeding', 'defining', 'starting') $$;

-- Which replica runs each host's actor (its libvirt connection, inventory, events, samples):
-- a lease in database time, renewed every few seconds by its owner. `epoch` grows by one at
-- every change of owner, and every write the actor makes first takes this row FOR SHARE with
-- the epoch it was started under: a replica that paused past its lease finds a newer epoch
-- and writes nothing, and a takeover waits for any such write still in flight to commit.
CREATE TABLE host_leases (
    host_id uuid PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
    -- A replica's id; NULL once released (a graceful stop, a host handed to its new owner).
    owner uuid,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX host_leases_owner ON host_leases (owner);
GRANT SELECT, INSERT, UPDATE, DELETE ON host_leases TO concierge_app;

-- The epoch of the owner that last wrote the host's row (its state, its node facts), so the
-- takeover is visible and a stale owner's write would show.
ALTER TABLE hosts ADD COLUMN lease_epoch bigint;

-- The replica running a job. A runner's heartbeat and outcome count only while it still holds
-- the job (a replica paused past its lease must not overwrite the outcome of the one that took
-- the job over), and an operator can see which replica runs what. No foreign key: replica rows
-- are pruned while their jobs' history stays.
ALTER TABLE jobs ADD COLUMN locked_by uuid;

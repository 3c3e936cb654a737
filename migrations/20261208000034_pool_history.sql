-- Each storage pool's daily peak of allocated bytes (issue 18: pool-space runway per host and
-- fleet-wide). Written by a trigger on every inventory write of the pool, so the history keeps
-- itself without another loop.
CREATE TABLE storage_pool_daily (
    host_id         uuid NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    name            text NOT NULL,
    day             date NOT NULL,
    allocation_max  bigint NOT NULL,
    capacity        bigint NOT NULL,
    PRIMARY KEY (host_id, name, day)
);

CREATE FUNCTION storage_pools_daily() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.active AND NEW.missing_since IS NULL AND NEW.capacity > 0 THEN
        INSERT INTO storage_pool_daily (host_id, name, day, allocation_max, capacity)
        VALUES (NEW.host_id, NEW.name, (now() AT TIME ZONE 'UTC')::date, NEW.allocation, NEW.capacity)
        ON CONFLICT (host_id, name, day) DO UPDATE
            SET allocation_max = greatest(storage_pool_daily.allocation_max, excluded.allocation_max),
                capacity = excluded.capacity
            WHERE storage_pool_daily.allocation_max < excluded.allocation_max
               OR storage_pool_daily.capacity <> excluded.capacity;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER storage_pools_daily AFTER INSERT OR UPDATE ON storage_pools
    FOR EACH ROW EXECUTE FUNCTION storage_pools_daily();

INSERT INTO storage_pool_daily (host_id, name, day, allocation_max, capacity)
SELECT host_id, name, (now() AT TIME ZONE 'UTC')::date, allocation, capacity
FROM storage_pools WHERE active AND missing_since IS NULL AND capacity > 0
ON CONFLICT DO NOTHING;

GRANT SELECT, INSERT, UPDATE, DELETE ON storage_pool_daily TO concierge_app;

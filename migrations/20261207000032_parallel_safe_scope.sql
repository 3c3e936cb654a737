-- The scope functions read settings, which parallel workers receive: they are parallel safe.
-- Marked unsafe (the default), any statement under row-level security ran without parallel
-- workers; the idle rule's scan of 30 days of hourly buckets ran on one core.
ALTER FUNCTION app_tenant() PARALLEL SAFE;
ALTER FUNCTION app_user() PARALLEL SAFE;
ALTER FUNCTION app_fleet_scope() PARALLEL SAFE;

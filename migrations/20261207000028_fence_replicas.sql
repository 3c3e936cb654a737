-- A replica that stops beating without saying goodbye (killed, paused, cut off) may still
-- have database sessions, and a paused one may sit inside a transaction holding row locks
-- (its host actor takes its lease row FOR SHARE while writing). The others end those
-- sessions once its heartbeat is stale, so its locks go and its leases can be claimed.
-- Sessions are recognised by their application_name, `concierge <replica id>`. SECURITY
-- DEFINER: ending another session needs the privileges of the role that opened it (the
-- schema owner's), which the runtime role lacks.
CREATE FUNCTION fence_gone_replicas(p_alive_seconds double precision) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_catalog, pg_temp AS $$
DECLARE
    v_ended integer := 0;
    v_pid integer;
BEGIN
    FOR v_pid IN
        SELECT a.pid FROM pg_stat_activity a
        JOIN replicas r ON a.application_name = 'concierge ' || r.id::text
        WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
          AND r.stopped_at IS NULL
          AND r.heartbeat_at < now() - make_interval(secs => p_alive_seconds)
    LOOP
        -- Waits up to a second for the session to end (its locks with it).
        IF pg_terminate_backend(v_pid, 1000) THEN
            v_ended := v_ended + 1;
        END IF;
    END LOOP;
    RETURN v_ended;
END $$;
REVOKE ALL ON FUNCTION fence_gone_replicas(double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fence_gone_replicas(double precision) TO concierge_app;

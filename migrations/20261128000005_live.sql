-- Live updates: every domain state change and every request log line is announced on the
-- `concierge_live` channel at commit, whichever path wrote it (events, reconciles, jobs, other
-- server processes). Servers forward them to the open pages allowed to see them.
CREATE FUNCTION notify_domain_state() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_tenant uuid;
    v_owner uuid;
BEGIN
    SELECT tenant_id, owner_id INTO v_tenant, v_owner FROM domains WHERE host_id = NEW.host_id AND uuid = NEW.uuid;
    PERFORM pg_notify('concierge_live', json_build_object(
        'kind', 'domain', 'host_id', NEW.host_id, 'uuid', NEW.uuid, 'state', NEW.state,
        'tenant_id', v_tenant, 'owner_id', v_owner)::text);
    RETURN NEW;
END $$;
CREATE TRIGGER domain_state_history_notify AFTER INSERT ON domain_state_history
    FOR EACH ROW EXECUTE FUNCTION notify_domain_state();

CREATE FUNCTION notify_request_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('concierge_live', json_build_object(
        'kind', 'request', 'request_id', NEW.request_id, 'tenant_id', NEW.tenant_id,
        'requester_id', (SELECT requester_id FROM requests WHERE id = NEW.request_id))::text);
    RETURN NEW;
END $$;
CREATE TRIGGER request_events_notify AFTER INSERT ON request_events
    FOR EACH ROW EXECUTE FUNCTION notify_request_event();

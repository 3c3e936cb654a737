-- Ownership does not outlive membership: a user removed from a tenant no longer reads the VMs,
-- domains and requests they own or made there through the "own" policies (issue: a removed
-- member who stayed in another tenant could still read them).
CREATE FUNCTION app_member_tenants() RETURNS uuid[] LANGUAGE sql STABLE AS
$$ SELECT coalesce(array_agg(m.tenant_id), '{}') FROM memberships m WHERE m.user_id = app_user() $$;
GRANT EXECUTE ON FUNCTION app_member_tenants() TO concierge_app;

ALTER POLICY vms_own ON vms
    USING (owner_id = (SELECT app_user()) AND tenant_id = ANY ((SELECT app_member_tenants())));
ALTER POLICY domains_own ON domains
    USING (owner_id = (SELECT app_user()) AND tenant_id = ANY ((SELECT app_member_tenants())));
ALTER POLICY requests_own ON requests
    USING (requester_id = (SELECT app_user()) AND tenant_id = ANY ((SELECT app_member_tenants())));

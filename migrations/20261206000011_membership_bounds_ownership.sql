-- Ownership does not outlive membership: a user removed from a tenant no longer reads the VMs,
-- domains and requests they own or made there through the "own" policies (outside testing: a
-- removed member who stayed in another tenant could still read them). The subquery runs once
-- per statement (a hashed subplan).
ALTER POLICY vms_own ON vms
    USING (owner_id = (SELECT app_user()) AND tenant_id IN
           (SELECT m.tenant_id FROM memberships m WHERE m.user_id = (SELECT app_user())));
ALTER POLICY domains_own ON domains
    USING (owner_id = (SELECT app_user()) AND tenant_id IN
           (SELECT m.tenant_id FROM memberships m WHERE m.user_id = (SELECT app_user())));
ALTER POLICY requests_own ON requests
    USING (requester_id = (SELECT app_user()) AND tenant_id IN
           (SELECT m.tenant_id FROM memberships m WHERE m.user_id = (SELECT app_user())));

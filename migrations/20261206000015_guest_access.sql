-- Usable VMs (issue 16, first part): the owner's SSH keys, templates that say how their image
-- boots and who logs in, and the SSH port forward and readiness of each VM.

-- A user's SSH public keys, written into the VMs they own by cloud-init.
CREATE TABLE ssh_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa, ...
    algorithm   text NOT NULL,
    -- "algorithm base64", re-encoded by the server (the comment is kept apart).
    public_key  text NOT NULL CONSTRAINT ssh_keys_public_key_length CHECK (char_length(public_key) <= 8192),
    comment     text NOT NULL DEFAULT '' CONSTRAINT ssh_keys_comment_length CHECK (char_length(comment) <= 100),
    -- SHA256:… as ssh-keygen -l prints it.
    fingerprint text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ssh_keys_fingerprint_key UNIQUE (user_id, fingerprint)
);
ALTER TABLE ssh_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY ssh_keys_own ON ssh_keys
    USING ((SELECT app_fleet_scope()) OR user_id = (SELECT app_user()))
    WITH CHECK ((SELECT app_fleet_scope()) OR user_id = (SELECT app_user()));
GRANT SELECT, INSERT, UPDATE, DELETE ON ssh_keys TO concierge_app;

-- Guest initialisation: the user cloud-init creates (NULL: the image takes no cloud-init) and
-- an admin-approved cloud-config snippet merged into every VM's user-data.
ALTER TABLE templates
    ADD COLUMN login_user text CONSTRAINT templates_login_user CHECK (login_user ~ '^[a-z_][a-z0-9_-]{0,31}$'),
    ADD COLUMN user_data text NOT NULL DEFAULT '' CONSTRAINT templates_user_data_length CHECK (octet_length(user_data) <= 16384);

-- Images without a boot loader boot their kernel and initramfs directly: volumes in the same
-- pool as the disk image.
ALTER TABLE template_images
    ADD COLUMN kernel text,
    ADD COLUMN initrd text,
    ADD CONSTRAINT template_images_boot CHECK ((kernel IS NULL) = (initrd IS NULL));

-- Where the VM's SSH answers (user-mode networking forwards a host port to the guest's 22),
-- and when it first answered.
ALTER TABLE vms
    ADD COLUMN ssh_port integer CONSTRAINT vms_ssh_port CHECK (ssh_port BETWEEN 1024 AND 65535),
    ADD COLUMN ssh_ready_at timestamptz,
    ADD COLUMN guest_addresses text[] NOT NULL DEFAULT '{}';
-- A port serves one live VM per host; deleted VMs give theirs back.
CREATE UNIQUE INDEX vms_ssh_port_key ON vms (host_id, ssh_port)
    WHERE deleted_at IS NULL AND ssh_port IS NOT NULL;

-- Per host: kvm or qemu (TCG). NULL: detected (kvm when the host offers it). These machines
-- offer KVM but cannot run a real guest kernel under it, so the admin can say qemu.
ALTER TABLE hosts
    ADD COLUMN domain_type text CONSTRAINT hosts_domain_type CHECK (domain_type IN ('kvm', 'qemu'));

-- The SSH host key a fleet admin confirmed for a host reached over SSH (`ssh-ed25519 AAAA…`):
-- every connection checks the host against it. NULL for local and TLS hosts, and for SSH
-- hosts registered with no_verify=1.
ALTER TABLE hosts ADD COLUMN ssh_host_key text;

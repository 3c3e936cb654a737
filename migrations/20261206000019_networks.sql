-- Networks a VM may join (issue 16). A template lists libvirt network names; `user` stands
-- for user-mode networking (the guest reaches out through QEMU, SSH arrives through a
-- forwarded host port), which is also what an empty list means. A request records the
-- network chosen (NULL: user-mode), and its VMs carry it to placement and the domain XML.
ALTER TABLE templates ADD COLUMN networks text[] NOT NULL DEFAULT '{}'
    CONSTRAINT templates_networks CHECK (cardinality(networks) <= 8);
ALTER TABLE requests ADD COLUMN network text
    CONSTRAINT requests_network CHECK (network ~ '^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$');
ALTER TABLE vms ADD COLUMN network text;

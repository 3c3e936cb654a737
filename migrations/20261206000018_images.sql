-- The image library (issue 16): a base image is registered once, with its format pinned at
-- import and its sizes and SHA-256 recorded; it has a copy (a volume) on each host that holds
-- it. Templates point at an image; placement uses every host with a ready copy.
CREATE TABLE images (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name               text NOT NULL CONSTRAINT images_name_length CHECK (char_length(name) BETWEEN 1 AND 80),
    format             text NOT NULL CONSTRAINT images_format CHECK (format IN ('qcow2', 'raw')),
    -- Bytes the file takes, and the disk size the guest sees; NULL until inspected (images
    -- registered before the library, or on the test driver, whose volumes are not files).
    size_bytes         bigint CONSTRAINT images_size CHECK (size_bytes >= 0),
    virtual_size_bytes bigint CONSTRAINT images_virtual_size CHECK (virtual_size_bytes >= 0),
    sha256             text CONSTRAINT images_sha256 CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- Set: the image takes cloud-init and this user logs in with the owner's keys.
    login_user         text CONSTRAINT images_login_user CHECK (login_user ~ '^[a-z_][a-z0-9_-]{0,31}$'),
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT images_name_key UNIQUE (name)
);

-- One volume per host. `uploading` and `copying` copies are not used by placement; an
-- interrupted upload keeps `bytes_done` so the browser can resume, or is discarded whole.
CREATE TABLE image_copies (
    image_id   uuid NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    host_id    uuid NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    pool       text NOT NULL,
    volume     text NOT NULL,
    -- Direct kernel boot: kernel and initramfs volumes in the same pool (both or neither).
    kernel     text,
    initrd     text,
    state      text NOT NULL DEFAULT 'ready'
               CONSTRAINT image_copies_state CHECK (state IN ('uploading', 'copying', 'ready', 'failed')),
    bytes_done bigint NOT NULL DEFAULT 0,
    bytes_total bigint,
    error      text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT image_copies_pkey PRIMARY KEY (image_id, host_id),
    CONSTRAINT image_copies_volume_key UNIQUE (host_id, pool, volume),
    CONSTRAINT image_copies_boot CHECK ((kernel IS NULL) = (initrd IS NULL))
);

ALTER TABLE templates ADD COLUMN image_id uuid CONSTRAINT templates_image_fkey REFERENCES images (id);

-- Templates made before the library: one image per base volume name, a copy per host.
INSERT INTO images (name, format, login_user)
SELECT DISTINCT ON (ti.volume) ti.volume, 'qcow2', t.login_user
FROM template_images ti JOIN templates t ON t.id = ti.template_id
ORDER BY ti.volume, t.created_at;
INSERT INTO image_copies (image_id, host_id, pool, volume, kernel, initrd)
SELECT i.id, ti.host_id, ti.pool, ti.volume, ti.kernel, ti.initrd
FROM template_images ti JOIN images i ON i.name = ti.volume
ON CONFLICT DO NOTHING;
UPDATE templates t SET image_id = i.id
FROM (SELECT template_id, min(volume) AS volume FROM template_images GROUP BY template_id) ti
JOIN images i ON i.name = ti.volume
WHERE t.id = ti.template_id;

DROP TABLE template_images;
-- Where a template's image is ready, for placement and provisioning.
CREATE VIEW template_images AS
SELECT t.id AS template_id, c.host_id, c.pool, c.volume, c.kernel, c.initrd
FROM templates t JOIN image_copies c ON c.image_id = t.image_id AND c.state = 'ready';

GRANT SELECT, INSERT, UPDATE, DELETE ON images, image_copies TO concierge_app;
GRANT SELECT ON template_images TO concierge_app;

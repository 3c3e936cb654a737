-- Requester-supplied cloud-config (issue 16): only for templates that allow it, capped, and
-- shown to approvers before they decide.
ALTER TABLE templates ADD COLUMN allow_user_data boolean NOT NULL DEFAULT false;
ALTER TABLE requests ADD COLUMN user_data text NOT NULL DEFAULT ''
    CONSTRAINT requests_user_data_length CHECK (octet_length(user_data) <= 16384);

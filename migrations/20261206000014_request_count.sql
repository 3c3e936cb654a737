-- The form and the backend allow 1 to 20 VMs per request (`requests::MAX_COUNT`); the table
-- said 50. One limit.
ALTER TABLE requests DROP CONSTRAINT requests_count_check,
    ADD CONSTRAINT requests_count_check CHECK (count BETWEEN 1 AND 20);

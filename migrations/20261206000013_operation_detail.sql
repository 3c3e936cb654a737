-- What an operation's outcome means beyond succeeded/failed ("forced off after 120 s").
ALTER TABLE domain_operations ADD COLUMN detail text;

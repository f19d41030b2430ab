-- The upstream's own request id of a call (its x-request-id), to find it in the provider's logs.
ALTER TABLE usage ADD COLUMN upstream_request_id TEXT;

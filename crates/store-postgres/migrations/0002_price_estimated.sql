-- A usage record whose cost was estimated: the model had no known price and the
-- default price applied (pricing.unknown_model).
ALTER TABLE usage ADD COLUMN price_estimated BOOLEAN NOT NULL DEFAULT FALSE;

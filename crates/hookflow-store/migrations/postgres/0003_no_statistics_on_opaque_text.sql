-- Columns that hold opaque text (JSON documents, payloads, messages) are never filtered or
-- joined on: ANALYZE skips them instead of sorting samples of large values (analyzing
-- `deliveries` took 390 ms more than vacuuming it, most of it on `payload`).
ALTER TABLE runs
    ALTER COLUMN inputs SET STATISTICS 0,
    ALTER COLUMN metadata SET STATISTICS 0,
    ALTER COLUMN settings SET STATISTICS 0,
    ALTER COLUMN output SET STATISTICS 0,
    ALTER COLUMN error SET STATISTICS 0,
    ALTER COLUMN callback_url SET STATISTICS 0;
ALTER TABLE step_executions
    ALTER COLUMN output SET STATISTICS 0,
    ALTER COLUMN error SET STATISTICS 0;
ALTER TABLE deliveries
    ALTER COLUMN payload SET STATISTICS 0,
    ALTER COLUMN url SET STATISTICS 0;
ALTER TABLE delivery_attempts
    ALTER COLUMN response_body SET STATISTICS 0,
    ALTER COLUMN error SET STATISTICS 0;

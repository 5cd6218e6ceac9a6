-- 0003_log_chunks_lz4: log chunks compressed with lz4 instead of pglz.
-- breaking: no
--
-- Storing output is bound by PostgreSQL's CPU, and pglz compression of the
-- 64 KiB chunks was a third of it (perf, scripts/bench exec). lz4 compresses
-- several times faster for a similar ratio on text. Rows written before keep
-- their pglz compression (both are read transparently). A server built
-- without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE log_chunks ALTER COLUMN data SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'PostgreSQL was built without lz4: log_chunks.data keeps pglz compression';
END
$$;

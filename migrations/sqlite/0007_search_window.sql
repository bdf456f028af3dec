-- Nothing to do on SQLite: PostgreSQL's 0007 adds an index for its windowed search.
-- Kept so both backends share migration versions.
SELECT 1;

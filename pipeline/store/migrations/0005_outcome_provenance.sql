-- Where each row's outcome history starts on the log: the topic (so the topic prefix), the
-- partition and the offset of its first folded outcome. A replay resets and refolds only the
-- rows whose whole history lies in the range it read, on its own topic; every other row (its
-- first outcome trimmed by retention, or on another prefix's topic) keeps its projection.
ALTER TABLE pending_propagations
    ADD COLUMN IF NOT EXISTS first_outcome_topic text,
    ADD COLUMN IF NOT EXISTS first_outcome_partition integer,
    ADD COLUMN IF NOT EXISTS first_outcome_offset bigint;

-- Rows folded before this migration: their first outcome is their earliest audit row.
UPDATE pending_propagations p
SET first_outcome_topic = a.source_topic,
    first_outcome_partition = a.source_partition,
    first_outcome_offset = a.source_offset
FROM (
    SELECT DISTINCT ON (propagation_id) propagation_id, source_topic, source_partition,
           source_offset
    FROM propagation_audit
    ORDER BY propagation_id, attempt, occurred_at, source_offset
) a
WHERE a.propagation_id = p.id AND p.first_outcome_topic IS NULL;

-- The operator console (`pipeline ui`): indexes that keep its pages fast with millions of rows,
-- and the stored replay reports its replay page shows.
-- Outcomes per minute over the last hour: an index-only range scan on the event time.
CREATE INDEX IF NOT EXISTS propagation_audit_occurred_at_idx
    ON propagation_audit (occurred_at) INCLUDE (outcome);

-- Search by team or by resource id, newest first (the partial open_resource index only
-- covers open rows).
CREATE INDEX IF NOT EXISTS pending_propagations_team_idx
    ON pending_propagations (team_id, id);
CREATE INDEX IF NOT EXISTS pending_propagations_resource_id_idx
    ON pending_propagations (resource_id, id);

-- The dead-letter list pages newest first on pending_propagations_failed_at_idx (0001).
-- Filtered by kind, newest first.
CREATE INDEX IF NOT EXISTS pending_propagations_failed_kind_idx
    ON pending_propagations (kind, failed_at) WHERE failed_at IS NOT NULL;
-- Filtered by dead-letter reason or skip bucket: the dead-letter events, newest first.
CREATE INDEX IF NOT EXISTS propagation_audit_dead_reason_idx
    ON propagation_audit (dead_letter_reason, occurred_at DESC, propagation_id DESC)
    WHERE outcome IN ('dead_lettered', 'unknown_kind_dead_lettered');
CREATE INDEX IF NOT EXISTS propagation_audit_dead_bucket_idx
    ON propagation_audit (skip_reason_bucket, occurred_at DESC, propagation_id DESC)
    WHERE outcome IN ('dead_lettered', 'unknown_kind_dead_lettered');

-- The last reports of `pipeline replay`, so the console (and anyone) can see how the last
-- replay went after its terminal is gone. One row per run; the report is the JSON it prints.
CREATE TABLE IF NOT EXISTS replay_reports (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection  text NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    report      jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS replay_reports_projection_idx ON replay_reports (projection, id);

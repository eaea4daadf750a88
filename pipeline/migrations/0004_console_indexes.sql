-- Indexes of the operator console (`pipeline ui`), so its pages stay fast with millions of rows.
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

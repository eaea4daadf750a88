-- The outbox swings from empty to a burst of thousands of rows (a pricing change) and back.
-- Default autovacuum thresholds re-analyze it only after 10% of the table changed, so the
-- planner keeps believing it is empty; analyze after small absolute changes instead.
ALTER TABLE pending_propagations SET (
    autovacuum_analyze_scale_factor = 0.0,
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_scale_factor = 0.05
);

-- Operator actions (`pipeline retry`) and the retry budget they reset.
--
-- attempt_budget_base: attempts are never renumbered (the processor de-duplicates
-- (propagation_id, attempt) pairs and the projector ignores attempts it has folded), so an
-- operator retry keeps counting at attempts + 1 and moves the budget's base instead: the
-- processor's max-attempts check is `attempt - attempt_budget_base >= max_attempts`.
ALTER TABLE pending_propagations
    ADD COLUMN IF NOT EXISTS attempt_budget_base integer NOT NULL DEFAULT 0
        CHECK (attempt_budget_base >= 0);

CREATE TABLE IF NOT EXISTS propagation_operator_actions (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    propagation_id bigint NOT NULL REFERENCES pending_propagations (id),
    action         text NOT NULL,
    reason         text,
    actor          text NOT NULL,
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS propagation_operator_actions_propagation_idx
    ON propagation_operator_actions (propagation_id, at);

-- The outbox, its audit trail and the projector's checkpoints (SPEC section 2).
CREATE TYPE propagation_kind AS ENUM (
    'tier_elevation', 'tier_demotion', 'resource_suspend', 'resource_resume'
);

CREATE TABLE pending_propagations (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind              propagation_kind NOT NULL,
    team_id           text NOT NULL,
    resource_type     text NOT NULL,
    resource_id       text NOT NULL,
    payload           jsonb NOT NULL DEFAULT '{}'::jsonb,
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    published_attempt integer NOT NULL DEFAULT 0 CHECK (published_attempt >= 0),
    published_at      timestamptz,
    applied_at        timestamptz,
    failed_at         timestamptz,
    last_outcome      text,
    last_error        text,
    last_skip_reason  text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pending_propagations_one_terminal CHECK (applied_at IS NULL OR failed_at IS NULL)
);

-- The relay's due-row query walks this partial index in order; terminal rows leave it.
CREATE INDEX pending_propagations_due_idx
    ON pending_propagations (next_attempt_at, id)
    WHERE applied_at IS NULL AND failed_at IS NULL;

-- Per-resource ordering check: "is there an earlier open row for this resource?"
CREATE INDEX pending_propagations_open_resource_idx
    ON pending_propagations (team_id, resource_type, resource_id, id)
    WHERE applied_at IS NULL AND failed_at IS NULL;

CREATE INDEX pending_propagations_failed_at_idx
    ON pending_propagations (failed_at) WHERE failed_at IS NOT NULL;

CREATE TABLE propagation_audit (
    event_id           uuid PRIMARY KEY,
    propagation_id     bigint NOT NULL,
    audit_kind         text NOT NULL,
    outcome            text NOT NULL,
    attempt            integer NOT NULL,
    skip_reason        text,
    skip_reason_bucket text,
    error              text,
    dead_letter_reason text,
    occurred_at        timestamptz NOT NULL,
    source_topic       text NOT NULL,
    source_partition   integer NOT NULL,
    source_offset      bigint NOT NULL
);
CREATE INDEX propagation_audit_propagation_idx ON propagation_audit (propagation_id, attempt);

CREATE TABLE projection_checkpoints (
    projection  text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);

-- One NOTIFY per inserting statement (not per row) wakes the relays.
CREATE FUNCTION pending_propagations_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pending_propagations', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER pending_propagations_notify
    AFTER INSERT ON pending_propagations
    FOR EACH STATEMENT EXECUTE FUNCTION pending_propagations_notify();

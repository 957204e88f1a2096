-- Canary rollouts of rule versions (docs/shadow.md, "Canary"). A rollout moves a candidate
-- version (state canary) through traffic weights; the gateway judges the clients whose hash falls
-- in the slice with the candidate. Every transition, with the guard results behind it, is also a
-- row of the rule history (shadow_history, event 'canary', details in jsonb).

-- migrate:up
CREATE TABLE shadow_rollouts (
    tenant_id        uuid NOT NULL,
    id               uuid NOT NULL,
    ruleset_id       uuid NOT NULL,
    candidate        integer NOT NULL,
    -- The production version when the rollout started (what a rollback leaves in place).
    baseline         integer,
    plan             jsonb NOT NULL,
    phase            text NOT NULL CHECK (phase IN ('running', 'paused', 'rolled_back', 'promoted', 'aborted')),
    step             integer NOT NULL CHECK (step >= 0),
    weight           double precision NOT NULL CHECK (weight BETWEEN 0 AND 100),
    failures         integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    inconclusive     integer NOT NULL DEFAULT 0 CHECK (inconclusive >= 0),
    checks           integer NOT NULL DEFAULT 0 CHECK (checks >= 0),
    reasons          jsonb NOT NULL DEFAULT '[]',
    last_results     jsonb NOT NULL DEFAULT '[]',
    forced           boolean NOT NULL DEFAULT false,
    evaluation_id    uuid,
    step_started_at  timestamptz NOT NULL DEFAULT now(),
    next_check_at    timestamptz NOT NULL,
    started_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, ruleset_id, candidate) REFERENCES shadow_versions (tenant_id, ruleset_id, number),
    CHECK ((phase IN ('rolled_back', 'promoted', 'aborted')) = (finished_at IS NOT NULL))
);
-- At most one live rollout per rule set: the gateway needs one answer to "which candidate".
CREATE UNIQUE INDEX shadow_rollouts_one_live ON shadow_rollouts (tenant_id, ruleset_id)
    WHERE phase IN ('running', 'paused');
CREATE INDEX shadow_rollouts_due ON shadow_rollouts (next_check_at) WHERE phase = 'running';

-- Feedback on clients, the ground truth of the canary's false-positive and detection guards:
-- analysts' verdicts and customers' appeals (the allow-list and decoy engagement come from the
-- camouflage tables, migration 0004). The newest row per client wins.
CREATE TABLE shadow_feedback (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    client_key   text NOT NULL CHECK (client_key ~ '^[0-9a-f]{32}$'),
    source       text NOT NULL CHECK (source IN ('analyst', 'appeal')),
    verdict      text NOT NULL CHECK (verdict IN ('benign', 'bot')),
    note         text NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, client_key, source)
);

ALTER TABLE shadow_history DROP CONSTRAINT shadow_history_event_check;
ALTER TABLE shadow_history ADD CONSTRAINT shadow_history_event_check
    CHECK (event IN ('created', 'installed', 'transition', 'retired', 'rollback', 'canary'));
ALTER TABLE shadow_history ADD COLUMN details jsonb;

GRANT SELECT, INSERT ON shadow_rollouts TO feint_app;
GRANT SELECT, INSERT, DELETE ON shadow_feedback TO feint_app;
GRANT UPDATE (verdict, note, created_by, created_at) ON shadow_feedback TO feint_app;
GRANT UPDATE (phase, step, weight, failures, inconclusive, checks, reasons, last_results, step_started_at,
              next_check_at, updated_at, finished_at) ON shadow_rollouts TO feint_app;

-- migrate:down
ALTER TABLE shadow_history DISABLE TRIGGER shadow_history_append_only;
DELETE FROM shadow_history WHERE event = 'canary';
ALTER TABLE shadow_history ENABLE TRIGGER shadow_history_append_only;
ALTER TABLE shadow_history DROP COLUMN details;
ALTER TABLE shadow_history DROP CONSTRAINT shadow_history_event_check;
ALTER TABLE shadow_history ADD CONSTRAINT shadow_history_event_check
    CHECK (event IN ('created', 'installed', 'transition', 'retired', 'rollback'));
DROP TABLE shadow_feedback;
DROP TABLE shadow_rollouts;

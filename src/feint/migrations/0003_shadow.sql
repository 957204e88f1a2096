-- Shadow service: the per-tenant rule repository (rule sets, immutable versions, the append-only
-- history of every state change and rollback), uploaded traffic datasets and evaluation jobs.
-- See docs/shadow.md for the design.
--
-- A version's content (its Sigma texts, rules, weights, hash, author, message) never changes:
-- feint_app may update only its state columns. At most one version per rule set is in production
-- (a partial unique index); the service keeps it at exactly one once a rule set has gone live.

-- migrate:up
CREATE TABLE shadow_tenants (
    tenant_id              uuid PRIMARY KEY REFERENCES tenants (id),
    -- When the shipped starter rule set was installed for this tenant (once, on first use).
    starter_installed_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shadow_rulesets (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid NOT NULL,
    -- Not UUID-shaped, so that a path segment is unambiguously an id or a name.
    name         text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'
                                      AND name !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'),
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    -- The highest version number given out; bumped under the row lock when a version is added.
    versions     integer NOT NULL DEFAULT 0 CHECK (versions >= 0),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

CREATE TABLE shadow_versions (
    tenant_id         uuid NOT NULL,
    ruleset_id        uuid NOT NULL,
    number            integer NOT NULL CHECK (number > 0),
    content_hash      text NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    author            text NOT NULL CHECK (length(author) BETWEEN 1 AND 200),
    message           text NOT NULL CHECK (length(message) BETWEEN 1 AND 2000),
    threshold         double precision CHECK (threshold > 0),
    rule_count        integer NOT NULL CHECK (rule_count > 0),
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    state             text NOT NULL CHECK (state IN ('draft', 'shadow', 'canary', 'production', 'retired')),
    state_changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, ruleset_id, number),
    FOREIGN KEY (tenant_id, ruleset_id) REFERENCES shadow_rulesets (tenant_id, id)
);
CREATE UNIQUE INDEX shadow_versions_one_production ON shadow_versions (tenant_id, ruleset_id)
    WHERE state = 'production';

-- The Sigma texts of a version as submitted, one row per document (a file: one YAML stream).
CREATE TABLE shadow_version_documents (
    tenant_id    uuid NOT NULL,
    ruleset_id   uuid NOT NULL,
    number       integer NOT NULL,
    position     integer NOT NULL CHECK (position >= 0),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 300),
    yaml         text NOT NULL,
    PRIMARY KEY (tenant_id, ruleset_id, number, position),
    FOREIGN KEY (tenant_id, ruleset_id, number) REFERENCES shadow_versions (tenant_id, ruleset_id, number)
);

-- The rules the documents compile to, with the weight each carries in this version.
CREATE TABLE shadow_version_rules (
    tenant_id      uuid NOT NULL,
    ruleset_id     uuid NOT NULL,
    number         integer NOT NULL,
    rule_key       text NOT NULL,
    position       integer NOT NULL CHECK (position >= 0),
    document       integer NOT NULL CHECK (document >= 0),
    title          text NOT NULL,
    level          text NOT NULL,
    weight         double precision NOT NULL CHECK (weight >= 0),
    content_hash   text NOT NULL,
    post_response  boolean NOT NULL,
    PRIMARY KEY (tenant_id, ruleset_id, number, rule_key),
    UNIQUE (tenant_id, ruleset_id, number, position),
    FOREIGN KEY (tenant_id, ruleset_id, number, document)
        REFERENCES shadow_version_documents (tenant_id, ruleset_id, number, position)
);

-- Append-only: every version created, every state change, every rollback, with who and why.
CREATE TABLE shadow_history (
    tenant_id     uuid NOT NULL,
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    ruleset_id    uuid NOT NULL,
    event         text NOT NULL CHECK (event IN ('created', 'installed', 'transition', 'retired', 'rollback')),
    number        integer NOT NULL,
    from_state    text,
    to_state      text NOT NULL,
    -- For a rollback: the production version it replaced.
    replaced      integer,
    actor         text NOT NULL,
    reason        text NOT NULL DEFAULT '' CHECK (length(reason) <= 2000),
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, seq),
    FOREIGN KEY (tenant_id, ruleset_id, number) REFERENCES shadow_versions (tenant_id, ruleset_id, number)
);
CREATE INDEX shadow_history_ruleset ON shadow_history (tenant_id, ruleset_id, seq);

CREATE FUNCTION shadow_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER shadow_history_append_only BEFORE UPDATE OR DELETE ON shadow_history
    FOR EACH ROW EXECUTE FUNCTION shadow_reject_change();

-- Traffic uploaded through the API, stored as Parquet under FEINT_HOME/datasets/<tenant id>/.
CREATE TABLE shadow_datasets (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid NOT NULL,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 300),
    file         text NOT NULL,
    row_count    bigint NOT NULL CHECK (row_count >= 0),
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

-- Evaluation jobs run in the process that accepted them; a job whose runner stops renewing its
-- lease (heartbeat_at) is marked failed ('interrupted') by the next process that looks.
CREATE TABLE shadow_evaluations (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    id            uuid NOT NULL,
    status        text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    progress      double precision NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
    request       jsonb NOT NULL,
    inputs        jsonb NOT NULL,
    error         text,
    report        jsonb,
    report_html   text,
    runner        text NOT NULL,
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (tenant_id, id),
    CHECK ((status IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)),
    CHECK ((status = 'succeeded') = (report IS NOT NULL)),
    CHECK ((status = 'failed') = (error IS NOT NULL))
);
CREATE INDEX shadow_evaluations_live ON shadow_evaluations (heartbeat_at) WHERE status IN ('queued', 'running');
CREATE INDEX shadow_evaluations_recent ON shadow_evaluations (tenant_id, created_at DESC);

GRANT SELECT, INSERT ON shadow_tenants TO feint_app;
GRANT SELECT, INSERT ON shadow_rulesets TO feint_app;
GRANT UPDATE (versions) ON shadow_rulesets TO feint_app;
GRANT SELECT, INSERT ON shadow_versions TO feint_app;
GRANT UPDATE (state, state_changed_at) ON shadow_versions TO feint_app;
GRANT SELECT, INSERT ON shadow_version_documents TO feint_app;
GRANT SELECT, INSERT ON shadow_version_rules TO feint_app;
GRANT SELECT, INSERT ON shadow_history TO feint_app;
GRANT SELECT, INSERT ON shadow_datasets TO feint_app;
GRANT SELECT, INSERT ON shadow_evaluations TO feint_app;
GRANT UPDATE (status, progress, inputs, error, report, report_html, heartbeat_at, started_at, finished_at)
    ON shadow_evaluations TO feint_app;

-- migrate:down
DROP TABLE shadow_evaluations;
DROP TABLE shadow_datasets;
DROP TABLE shadow_history;
DROP FUNCTION shadow_reject_change();
DROP TABLE shadow_version_rules;
DROP TABLE shadow_version_documents;
DROP TABLE shadow_versions;
DROP TABLE shadow_rulesets;
DROP TABLE shadow_tenants;

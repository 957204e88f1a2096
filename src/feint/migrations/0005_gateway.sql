-- Camouflage gateway: the decision log. Every request the gateway judged, with the Sigma
-- webserver fields (the shadow service replays them), the threat level and its explanation, the
-- rule set version that judged it (and, during a canary rollout, whether the candidate did), and
-- for a diverted request the decoy session, persona and arm that answered it.
--
-- Written in batches (COPY) off the request path; rows are never changed (feint_app may only
-- insert and read). Old rows are removed by an operator by time, not by the service.

-- migrate:up
CREATE TABLE camouflage_decisions (
    id               uuid PRIMARY KEY,
    decided_at       timestamptz NOT NULL,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    client_key       text NOT NULL CHECK (client_key ~ '^[0-9a-f]{32}$'),
    fingerprint      text NOT NULL,
    c_ip             text,
    cs_method        text,
    cs_uri_stem      text,
    cs_uri_query     text,
    cs_user_agent    text,
    cs_referer       text,
    sc_status        smallint CHECK (sc_status BETWEEN 100 AND 999),
    cs_host          text,
    cs_version       text,
    request_line     text,
    threat           smallint NOT NULL CHECK (threat BETWEEN 0 AND 10),
    -- allow: forwarded; divert: a decoy answered; refuse: metering refused; error: upstream failed.
    action           text NOT NULL CHECK (action IN ('allow', 'divert', 'refuse', 'error')),
    diverted         boolean NOT NULL,
    gateway_error    boolean NOT NULL,
    explanation      jsonb NOT NULL,
    rules            text[] NOT NULL DEFAULT '{}',
    -- The version that judged (null for the shipped starter rules or a rules file) and its hash.
    ruleset_version  integer,
    rules_tag        text NOT NULL,
    rollout_id       uuid,
    canary           boolean NOT NULL DEFAULT false,
    eval_latency_us  real NOT NULL CHECK (eval_latency_us >= 0),
    session_id       uuid,
    persona          text,
    arm              text
);
CREATE INDEX camouflage_decisions_time ON camouflage_decisions (tenant_id, decided_at);
CREATE INDEX camouflage_decisions_session ON camouflage_decisions (tenant_id, session_id)
    WHERE session_id IS NOT NULL;
CREATE INDEX camouflage_decisions_rollout ON camouflage_decisions (tenant_id, rollout_id, decided_at)
    WHERE rollout_id IS NOT NULL;
CREATE INDEX camouflage_decisions_client ON camouflage_decisions (client_key, decided_at);
GRANT SELECT, INSERT ON camouflage_decisions TO feint_app;

-- migrate:down
DROP TABLE camouflage_decisions;

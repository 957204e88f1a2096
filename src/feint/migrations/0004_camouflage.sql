-- Camouflage engine: bandit state per tenant, band and arm; decoy sessions; honeytokens (their
-- SHA-256 only); events; the allow-list of known-good clients. See docs/camouflage.md.
-- The decision log (camouflage_decisions) is migration 0005.

-- migrate:up
CREATE TABLE camouflage_arms (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    band         text NOT NULL CHECK (band IN ('light', 'balanced', 'complex', 'maximum')),
    arm          text NOT NULL CHECK (arm ~ '^[a-z0-9._-]{1,63}/[a-z0-9._-]{1,63}$'),
    -- Ended sessions and the sum of their rewards (each 0-1); only ever incremented together.
    pulls        bigint NOT NULL DEFAULT 0 CHECK (pulls >= 0),
    reward_sum   double precision NOT NULL DEFAULT 0 CHECK (reward_sum >= 0 AND reward_sum <= pulls),
    active       boolean NOT NULL,
    retired_at   timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, band, arm)
);

CREATE TABLE camouflage_sessions (
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    id               uuid NOT NULL,
    client_key       text NOT NULL CHECK (length(client_key) <= 128),
    src_host         text NOT NULL DEFAULT '' CHECK (length(src_host) <= 64),
    threat           smallint NOT NULL CHECK (threat BETWEEN 0 AND 10),
    band             text NOT NULL,
    arm              text NOT NULL,
    started_at       timestamptz NOT NULL,
    last_seen_at     timestamptz NOT NULL,
    ended_at         timestamptz,
    requests         integer NOT NULL DEFAULT 0 CHECK (requests >= 0),
    tokens_taken     integer NOT NULL DEFAULT 0 CHECK (tokens_taken >= 0),
    engaged_seconds  double precision NOT NULL DEFAULT 0 CHECK (engaged_seconds >= 0),
    reward           double precision CHECK (reward BETWEEN 0 AND 1),
    paths            text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, id),
    CHECK ((ended_at IS NULL) = (reward IS NULL))
);
CREATE INDEX camouflage_sessions_recent ON camouflage_sessions (tenant_id, started_at DESC);
CREATE INDEX camouflage_sessions_client ON camouflage_sessions (tenant_id, client_key);

CREATE TABLE camouflage_honeytokens (
    digest       text PRIMARY KEY CHECK (digest ~ '^[0-9a-f]{64}$'),
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    session_id   uuid NOT NULL,
    kind         text NOT NULL,
    -- What the token looks like without revealing it: kind and the first characters.
    hint         text NOT NULL CHECK (length(hint) <= 16),
    created_at   timestamptz NOT NULL DEFAULT now(),
    uses         integer NOT NULL DEFAULT 0 CHECK (uses >= 0),
    last_used_at timestamptz
);
CREATE INDEX camouflage_honeytokens_session ON camouflage_honeytokens (tenant_id, session_id);

CREATE TABLE camouflage_events (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid NOT NULL,
    logtype      integer NOT NULL,
    eventid      text NOT NULL,
    at           timestamptz NOT NULL,
    session_id   uuid,
    src_host     text NOT NULL DEFAULT '',
    client_key   text NOT NULL DEFAULT '',
    threat       smallint,
    details      jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX camouflage_events_recent ON camouflage_events (tenant_id, at DESC);
CREATE INDEX camouflage_events_session ON camouflage_events (tenant_id, session_id) WHERE session_id IS NOT NULL;

-- Known-good clients: a client key or an IP address whose decisions are labelled benign.
CREATE TABLE camouflage_allowlist (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    client       text NOT NULL CHECK (length(client) BETWEEN 1 AND 128),
    note         text NOT NULL DEFAULT '' CHECK (length(note) <= 500),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, client)
);

GRANT SELECT, INSERT ON camouflage_arms TO feint_app;
GRANT UPDATE (pulls, reward_sum, active, retired_at, updated_at) ON camouflage_arms TO feint_app;
GRANT SELECT, INSERT ON camouflage_sessions TO feint_app;
GRANT UPDATE (last_seen_at, ended_at, requests, tokens_taken, engaged_seconds, reward, paths)
    ON camouflage_sessions TO feint_app;
GRANT SELECT, INSERT ON camouflage_honeytokens TO feint_app;
GRANT UPDATE (uses, last_used_at) ON camouflage_honeytokens TO feint_app;
GRANT SELECT, INSERT ON camouflage_events TO feint_app;
GRANT SELECT, INSERT, DELETE ON camouflage_allowlist TO feint_app;

-- migrate:down
DROP TABLE camouflage_allowlist;
DROP TABLE camouflage_events;
DROP TABLE camouflage_honeytokens;
DROP TABLE camouflage_sessions;
DROP TABLE camouflage_arms;

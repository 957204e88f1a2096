-- Platform: tenants, API keys and encrypted keysets.
-- feint_app is the role the services run as: data rights only, never DDL (see platform/db.py).

-- migrate:up
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'feint_app') THEN
        CREATE ROLE feint_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO feint_app;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid REFERENCES tenants (id),
    -- HMAC-SHA-256 of the key under a secret derived from the master key; the key itself is never stored.
    key_hash    bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    prefix      text NOT NULL,
    scope       text NOT NULL CHECK (scope IN ('read', 'write', 'admin', 'operator')),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((scope = 'operator') = (tenant_id IS NULL))
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- Tink keysets, each encrypted under the master key (envelope encryption).
CREATE TABLE keysets (
    name        text PRIMARY KEY,
    encrypted   bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT ON tenants TO feint_app;
GRANT SELECT, INSERT, UPDATE ON api_keys TO feint_app;
GRANT SELECT, INSERT, UPDATE ON keysets TO feint_app;

-- migrate:down
DROP TABLE keysets;
DROP TABLE api_keys;
DROP TABLE tenants;
REVOKE USAGE ON SCHEMA public FROM feint_app;

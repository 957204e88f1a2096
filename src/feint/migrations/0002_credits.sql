-- Credits ledger: accounts, grants, holds, transfers, the per-tenant audit chain, idempotency
-- records and payment methods. See docs/credits.md for the design.
--
-- Every balance lives in credit_accounts.posted (credits minus debits, signed 64-bit) and
-- credit_accounts.pending (held); transfers are immutable and carry the running balances of both
-- sides; audit entries are append-only and hash-chained per tenant. feint_app gets exactly the
-- rights the service uses: no UPDATE or DELETE on the ledger's history.

-- migrate:up
CREATE TABLE credit_accounts (
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    id               uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('customer', 'issuance', 'consumption', 'expiry')),
    code             text NOT NULL CHECK (code ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    no_overdraft     boolean NOT NULL,
    overdraft_limit  bigint CHECK (overdraft_limit >= 0),
    metadata         bytea NOT NULL,
    posted           bigint NOT NULL DEFAULT 0,
    pending          bigint NOT NULL DEFAULT 0 CHECK (pending >= 0),
    holds_pending    integer NOT NULL DEFAULT 0 CHECK (holds_pending >= 0),
    version          bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CHECK (kind = 'customer' OR NOT no_overdraft),
    CHECK (overdraft_limit IS NULL OR no_overdraft),
    -- The last line of defence; the service checks the stricter rule (expired grants excluded).
    CHECK (NOT no_overdraft OR posted - pending + coalesce(overdraft_limit, 0) >= 0)
);
CREATE UNIQUE INDEX credit_accounts_system ON credit_accounts (tenant_id, code, kind) WHERE kind <> 'customer';

CREATE TABLE credit_grants (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL,
    account_id   uuid NOT NULL,
    amount       bigint NOT NULL CHECK (amount > 0),
    remaining    bigint NOT NULL CHECK (remaining >= 0),
    held         bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    priority     smallint NOT NULL CHECK (priority BETWEEN 0 AND 100),
    expires_at   timestamptz,
    transfer_id  uuid NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES credit_accounts (tenant_id, id),
    CHECK (remaining + held <= amount)
);
CREATE INDEX credit_grants_live ON credit_grants (tenant_id, account_id) WHERE remaining > 0 OR held > 0;
CREATE INDEX credit_grants_expiring ON credit_grants (expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;

CREATE TABLE credit_holds (
    tenant_id          uuid NOT NULL,
    id                 uuid NOT NULL,
    debit_account_id   uuid NOT NULL,
    credit_account_id  uuid NOT NULL,
    amount             bigint NOT NULL CHECK (amount > 0),
    state              text NOT NULL CHECK (state IN ('pending', 'captured', 'voided', 'expired')),
    expires_at         timestamptz NOT NULL,
    -- [[grant id or null for ungranted credits, amount, grant expiry or null], ...] in burn order
    allocations        jsonb NOT NULL,
    captured_amount    bigint,
    transfer_id        uuid,
    metadata           bytea NOT NULL,
    created_at         timestamptz NOT NULL,
    resolved_at        timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, debit_account_id) REFERENCES credit_accounts (tenant_id, id),
    FOREIGN KEY (tenant_id, credit_account_id) REFERENCES credit_accounts (tenant_id, id),
    CHECK ((state = 'pending') = (resolved_at IS NULL)),
    CHECK (captured_amount IS NULL OR captured_amount BETWEEN 1 AND amount)
);
CREATE INDEX credit_holds_pending ON credit_holds (tenant_id, debit_account_id, expires_at) WHERE state = 'pending';
CREATE INDEX credit_holds_expiring ON credit_holds (expires_at) WHERE state = 'pending';

-- No foreign keys to accounts: the engine checks both accounts under their row locks, and two
-- more index probes per transfer cost throughput for nothing.
CREATE TABLE credit_transfers (
    tenant_id          uuid NOT NULL,
    id                 uuid NOT NULL,
    seq                bigint GENERATED ALWAYS AS IDENTITY,
    kind               text NOT NULL CHECK (kind IN ('transfer', 'grant', 'capture', 'expiry')),
    debit_account_id   uuid NOT NULL,
    credit_account_id  uuid NOT NULL,
    amount             bigint NOT NULL CHECK (amount > 0),
    hold_id            uuid,
    grant_id           uuid,
    debit_balance      bigint NOT NULL,
    credit_balance     bigint NOT NULL,
    metadata           bytea NOT NULL,
    posted_at          timestamptz NOT NULL,
    batch_id           uuid NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CHECK (debit_account_id <> credit_account_id)
);
CREATE INDEX credit_transfers_debit ON credit_transfers (tenant_id, debit_account_id, seq);
CREATE INDEX credit_transfers_credit ON credit_transfers (tenant_id, credit_account_id, seq);

CREATE TABLE credit_audit_heads (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id),
    seq        bigint NOT NULL DEFAULT 0,
    hash       bytea NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000'
);

-- One entry per committed transaction per tenant: hash = sha256(previous hash || body), where the
-- body is the canonical JSON of the entry carrying the Merkle root of its operations.
CREATE TABLE credit_audit (
    tenant_id    uuid NOT NULL,
    seq          bigint NOT NULL CHECK (seq > 0),
    batch_id     uuid NOT NULL,
    hash         bytea NOT NULL CHECK (octet_length(hash) = 32),
    body         bytea NOT NULL,
    operations   bytea NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX credit_audit_batch ON credit_audit (batch_id);

CREATE TABLE credit_idempotency (
    tenant_id     uuid NOT NULL,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  bytea NOT NULL,
    status        smallint NOT NULL,
    response      bytea NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX credit_idempotency_expiry ON credit_idempotency (expires_at);

-- PCI DSS: no full card number anywhere; `sealed` is a Tink AES-256-GCM ciphertext of the
-- expiry and holder, bound to (tenant, id) as associated data.
CREATE TABLE credit_payment_methods (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid NOT NULL,
    last4        text NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    brand        text NOT NULL,
    fingerprint  bytea NOT NULL CHECK (octet_length(fingerprint) = 32),
    sealed       bytea NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, fingerprint)
);

CREATE FUNCTION credit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER credit_audit_append_only BEFORE UPDATE OR DELETE ON credit_audit
    FOR EACH ROW EXECUTE FUNCTION credit_reject_change();
CREATE TRIGGER credit_transfers_append_only BEFORE UPDATE OR DELETE ON credit_transfers
    FOR EACH ROW EXECUTE FUNCTION credit_reject_change();

GRANT SELECT, INSERT, UPDATE ON credit_accounts TO feint_app;
GRANT SELECT, INSERT, UPDATE ON credit_grants TO feint_app;
GRANT SELECT, INSERT, UPDATE ON credit_holds TO feint_app;
GRANT SELECT, INSERT ON credit_transfers TO feint_app;
GRANT SELECT, INSERT, UPDATE ON credit_audit_heads TO feint_app;
GRANT SELECT, INSERT ON credit_audit TO feint_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON credit_idempotency TO feint_app;
GRANT SELECT, INSERT ON credit_payment_methods TO feint_app;
GRANT UPDATE (sealed) ON credit_payment_methods TO feint_app;

-- migrate:down
DROP TABLE credit_payment_methods;
DROP TABLE credit_idempotency;
DROP TABLE credit_audit;
DROP TABLE credit_audit_heads;
DROP TABLE credit_transfers;
DROP TABLE credit_holds;
DROP TABLE credit_grants;
DROP TABLE credit_accounts;
DROP FUNCTION credit_reject_change();

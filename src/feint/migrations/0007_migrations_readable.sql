-- The services read the version table at start (`feint serve` migrates only when something is
-- pending), so that a login with data rights only can start a current database.

-- migrate:up
GRANT SELECT ON feint_migrations TO feint_app;

-- migrate:down
REVOKE SELECT ON feint_migrations FROM feint_app;

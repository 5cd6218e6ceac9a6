-- 0001_initial: users, sessions, API tokens, sign-in throttling, servers, jobs, audit.
-- breaking: no (first migration)

CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL,
    password_hash text NOT NULL,
    role          text NOT NULL CONSTRAINT users_role_known CHECK (role IN ('viewer', 'operator', 'admin')),
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Names are unique without regard to case so "Admin" cannot shadow "admin".
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

-- Server-side sessions: the cookie holds a random token, the table its SHA-256.
CREATE TABLE sessions (
    id           bigserial PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash   bytea NOT NULL UNIQUE,
    csrf_token   text NOT NULL,
    address      text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);

CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL,
    token_hash   bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);
CREATE INDEX api_tokens_user_id_idx ON api_tokens (user_id);

-- Failed sign-ins, counted per address and per user name over a sliding window.
CREATE TABLE login_failures (
    id       bigserial PRIMARY KEY,
    address  text NOT NULL,
    username text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_address_idx ON login_failures (address, at);
CREATE INDEX login_failures_username_idx ON login_failures (lower(username), at);

CREATE TABLE servers (
    id                   bigserial PRIMARY KEY,
    name                 text NOT NULL UNIQUE,
    host                 text NOT NULL,
    port                 integer NOT NULL CONSTRAINT servers_port_range CHECK (port BETWEEN 1 AND 65535),
    username             text NOT NULL,
    auth_method          text NOT NULL CONSTRAINT servers_auth_method_known CHECK (auth_method IN ('password', 'key')),
    -- AES-256-GCM sealed JSON {password, private_key, passphrase}; key_id names the master key that sealed it.
    credentials          bytea NOT NULL,
    key_id               text NOT NULL,
    has_password         boolean NOT NULL DEFAULT false,
    has_private_key      boolean NOT NULL DEFAULT false,
    has_passphrase       boolean NOT NULL DEFAULT false,
    description          text NOT NULL DEFAULT '',
    tags                 text[] NOT NULL DEFAULT '{}',
    host_key_algorithm   text,
    host_key_fingerprint text,
    host_key_trusted_at  timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT servers_host_key_complete CHECK ((host_key_fingerprint IS NULL) = (host_key_trusted_at IS NULL))
);
CREATE INDEX servers_tags_idx ON servers USING gin (tags);

CREATE TABLE jobs (
    id               bigserial PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    description      text NOT NULL DEFAULT '',
    script           text NOT NULL,
    env              jsonb NOT NULL DEFAULT '{}',
    -- Sealed JSON object of secret values; only the names are ever shown.
    secret_env       bytea,
    secret_key_id    text,
    secret_env_names text[] NOT NULL DEFAULT '{}',
    timeout_seconds  integer NOT NULL DEFAULT 3600 CONSTRAINT jobs_timeout_range CHECK (timeout_seconds BETWEEN 1 AND 86400),
    schedule         text,
    timezone         text NOT NULL DEFAULT 'UTC',
    misfire          text NOT NULL DEFAULT 'skip' CONSTRAINT jobs_misfire_known CHECK (misfire IN ('run_once', 'skip')),
    concurrency      text NOT NULL DEFAULT 'allow' CONSTRAINT jobs_concurrency_known CHECK (concurrency IN ('allow', 'skip', 'queue')),
    max_parallel     integer NOT NULL DEFAULT 10 CONSTRAINT jobs_max_parallel_range CHECK (max_parallel BETWEEN 1 AND 1000),
    retries          integer NOT NULL DEFAULT 0 CONSTRAINT jobs_retries_range CHECK (retries BETWEEN 0 AND 10),
    tags             text[] NOT NULL DEFAULT '{}',
    enabled          boolean NOT NULL DEFAULT true,
    notify           jsonb NOT NULL DEFAULT '[]',
    run_after        bigint[] NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_tags_idx ON jobs USING gin (tags);

-- Which servers a job targets, in the order given. RESTRICT: a server in use cannot be deleted (409).
CREATE TABLE job_servers (
    job_id    bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    server_id bigint NOT NULL REFERENCES servers (id) ON DELETE RESTRICT,
    position  integer NOT NULL,
    PRIMARY KEY (job_id, server_id)
);
CREATE INDEX job_servers_server_id_idx ON job_servers (server_id);

CREATE TABLE audit_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    user_id   bigint,
    username  text NOT NULL DEFAULT '',
    action    text NOT NULL,
    target    text NOT NULL DEFAULT '',
    address   text NOT NULL DEFAULT '',
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at_idx ON audit_log (at);

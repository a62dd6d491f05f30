//! Talking to a running PostgreSQL over its unix socket: connecting, reading what exists ([`read_live`]) and
//! making the declared changes ([`apply`]).
//!
//! Round trips are what costs time here, not statements: a read is a handful of catalog queries (one connection
//! per database, read concurrently), and an apply sends each phase as one multi-statement transaction, so a
//! thousand roles go to the server in one string. `CREATE DATABASE` and `DROP DATABASE` cannot run in a
//! transaction and go one by one. When a batch fails, its statements are replayed one at a time in a transaction
//! that is rolled back, to name the statement the server refused.
//!
//! kip's sessions run with `log_statement = none` and `log_min_error_statement = panic`, so the server log never
//! holds a statement with a password in it; errors kip reports carry the statement with the password redacted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::PgError;
use super::change::{self, GrantTarget, Password, PgChange, Sql};
use super::live::{
    Live, LiveDatabase, LiveExtension, LiveRole, LiveSchema, ObjectGrants, Privileges,
};
use super::template::PREMADE_DATABASE;

/// Databases every cluster has, which kip neither reports nor manages.
pub const SYSTEM_DATABASES: [&str; 3] = ["postgres", "template0", "template1"];

/// The first OID of objects made after `initdb` (FirstNormalObjectId): anything below came with the cluster.
const FIRST_NORMAL_OID: u32 = 16384;

/// How to reach a server: its socket directory and port, as the superuser.
#[derive(Debug, Clone)]
pub struct Connector {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
    pub password: Option<Password>,
    /// A second password to try when the server refuses `password` (a bootstrap password that may have been
    /// replaced already).
    pub fallback: Option<Password>,
    /// How long to keep retrying while the server is starting up (socket missing, or "starting up").
    pub startup_timeout: Duration,
    /// Keep this session's statements out of the server log (`log_statement = none`,
    /// `log_min_error_statement = panic`), so that no password lands there. Only a superuser may set these, so
    /// turn it off to connect as an ordinary role.
    pub quiet_log: bool,
}

impl Connector {
    /// The superuser `postgres` on the socket in `socket_dir`, port 5432 unless given.
    pub fn new(socket_dir: &Path, port: Option<u16>) -> Connector {
        Connector {
            socket_dir: socket_dir.to_owned(),
            port: port.unwrap_or(super::DEFAULT_PORT),
            user: "postgres".into(),
            password: None,
            fallback: None,
            startup_timeout: Duration::from_secs(10),
            quiet_log: true,
        }
    }

    /// Opens a session on `database`, retrying while the server is still starting. The connection task runs on
    /// the current tokio runtime and ends when the client is dropped.
    pub async fn connect(&self, database: &str) -> Result<Client, PgError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(&self.user)
            .dbname(database)
            .application_name(format!("kip/{}", std::process::id()))
            .connect_timeout(Duration::from_secs(5));
        if self.quiet_log {
            config
                .options("-c log_statement=none -c log_min_error_statement=panic -c TimeZone=UTC");
        } else {
            config.options("-c TimeZone=UTC");
        }
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        let mut fallback = self.fallback.as_ref();
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!("PostgreSQL connection ended: {error}");
                        }
                    });
                    return Ok(client);
                }
                // Every 2 ms: the socket is there a few milliseconds before the server takes sessions, and the
                // first session of a fresh instance is on the path to ready.
                Err(source) if Instant::now() < deadline && is_starting_up(&source) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(source)
                    if fallback.is_some()
                        && source.code()
                            == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) =>
                {
                    if let Some(password) = fallback.take() {
                        config.password(password.expose());
                    }
                }
                Err(source) => {
                    return Err(PgError::Connect {
                        socket_dir: self.socket_dir.clone(),
                        database: database.to_owned(),
                        user: self.user.clone(),
                        source,
                    });
                }
            }
        }
    }
}

/// "The database system is starting up", or no socket yet / nobody listening on it.
fn is_starting_up(error: &tokio_postgres::Error) -> bool {
    if error.code() == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW) {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            );
        }
        source = inner.source();
    }
    false
}

async fn query(
    client: &Client,
    database: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, PgError> {
    client
        .query(sql, params)
        .await
        .map_err(|source| PgError::sql(database, sql, source))
}

const ROLES: &str = "\
SELECT r.rolname::text, r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolinherit, r.rolreplication,
       r.rolbypassrls, r.rolconnlimit,
       CASE WHEN r.rolvaliduntil IS NULL THEN NULL
            WHEN isfinite(r.rolvaliduntil)
            THEN to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
            ELSE r.rolvaliduntil::text END,
       r.rolpassword IS NOT NULL,
       coalesce(m.groups, '{}'),
       r.rolpassword
FROM pg_authid r
LEFT JOIN (SELECT m.member, array_agg(DISTINCT g.rolname::text ORDER BY g.rolname::text) AS groups
           FROM pg_auth_members m JOIN pg_authid g ON g.oid = m.roleid GROUP BY m.member) m ON m.member = r.oid
WHERE r.oid >= $1";

const DATABASES: &str = "\
SELECT d.datname::text, pg_get_userbyid(d.datdba)::text, pg_encoding_to_char(d.encoding)::text, d.datcollate::text,
       d.datctype::text, d.datconnlimit, d.datallowconn, d.datistemplate
FROM pg_database d WHERE d.datname <> ALL($1)";

const DATABASE_GRANTS: &str = "\
SELECT d.datname::text, g.rolname::text, a.privilege_type, a.is_grantable
FROM pg_database d
CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
JOIN pg_roles g ON g.oid = a.grantee
WHERE d.datname <> ALL($1) AND g.oid >= $2";

/// A schema filter shared by the per-database queries.
const USER_SCHEMA: &str = "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'";

/// Reads every role, database, schema, extension and grant kip could have declared. One connection to
/// `postgres`, then one per database that accepts connections, read concurrently.
pub async fn read_live(connector: &Connector) -> Result<Live, PgError> {
    read_live_of(connector, None).await
}

/// As [`read_live`], but looks inside (schemas, extensions, schema grants) only the databases in `contents`
/// when given: a session per database costs a fork and an authentication, and most declared databases hold
/// nothing kip manages inside them. The others keep `contents_read = false`.
pub async fn read_live_of(
    connector: &Connector,
    contents: Option<&std::collections::BTreeSet<String>>,
) -> Result<Live, PgError> {
    let client = connector.connect("postgres").await?;
    let system: Vec<&str> = SYSTEM_DATABASES.to_vec();
    let normal_oid = FIRST_NORMAL_OID;
    let roles_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&normal_oid];
    let databases_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&system];
    let grants_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&system, &normal_oid];
    // Sent together: the session pipelines them, so the four cost one wait for the server, not four.
    let (version_row, roles, databases, database_grants) = tokio::try_join!(
        query(
            &client,
            "postgres",
            "SELECT current_setting('server_version_num')::int",
            &[],
        ),
        query(&client, "postgres", ROLES, &roles_params),
        query(&client, "postgres", DATABASES, &databases_params),
        query(&client, "postgres", DATABASE_GRANTS, &grants_params),
    )?;
    let mut live = Live {
        server_version: version_row[0].get(0),
        ..Live::default()
    };
    for row in roles {
        let member_of: Vec<String> = row.get(11);
        live.roles.insert(
            row.get(0),
            LiveRole {
                login: row.get(1),
                superuser: row.get(2),
                createdb: row.get(3),
                createrole: row.get(4),
                inherit: row.get(5),
                replication: row.get(6),
                bypassrls: row.get(7),
                connection_limit: row.get(8),
                valid_until: row.get(9),
                has_password: row.get(10),
                member_of: member_of.into_iter().collect(),
                verifier: super::live::Verifier(row.get(12)),
            },
        );
    }
    for row in databases {
        live.databases.insert(
            row.get(0),
            LiveDatabase {
                owner: row.get(1),
                encoding: row.get(2),
                lc_collate: row.get(3),
                lc_ctype: row.get(4),
                connection_limit: row.get(5),
                allow_connections: row.get(6),
                is_template: row.get(7),
                grants: BTreeMap::new(),
                contents_read: false,
                schemas: BTreeMap::new(),
                extensions: BTreeMap::new(),
            },
        );
    }
    for row in database_grants {
        let database: String = row.get(0);
        if let Some(live_database) = live.databases.get_mut(&database) {
            add_privilege(
                &mut live_database.grants,
                row.get(1),
                row.get(2),
                row.get(3),
            );
        }
    }
    drop(client);
    read_contents(connector, &mut live, contents).await?;
    Ok(live)
}

/// Reads the insides (schemas, extensions, their grants) of `contents`' databases, every database's when `None`,
/// into `live` (which [`read_live_of`] read without them), one session per database, at once.
pub async fn read_contents(
    connector: &Connector,
    live: &mut Live,
    contents: Option<&std::collections::BTreeSet<String>>,
) -> Result<(), PgError> {
    let mut reads = tokio::task::JoinSet::new();
    for (name, database) in &live.databases {
        // A connection limit of -2 marks a database left invalid by an interrupted DROP DATABASE.
        let wanted = !database.contents_read && contents.is_none_or(|names| names.contains(name));
        if wanted && database.allow_connections && database.connection_limit != -2 {
            let (connector, name) = (connector.clone(), name.clone());
            reads.spawn(async move {
                let contents = read_database(&connector, &name).await;
                (name, contents)
            });
        }
    }
    while let Some(joined) = reads.join_next().await {
        let (name, contents) = joined.expect("a database read task panicked");
        let (schemas, extensions) = contents?;
        if let Some(database) = live.databases.get_mut(&name) {
            database.schemas = schemas;
            database.extensions = extensions;
            database.contents_read = true;
        }
    }
    Ok(())
}

fn add_privilege(
    grants: &mut BTreeMap<String, Privileges>,
    grantee: String,
    privilege: String,
    grantable: bool,
) {
    let held = grants
        .entry(grantee)
        .or_default()
        .entry(privilege)
        .or_insert(false);
    *held |= grantable;
}

type DatabaseContents = (
    BTreeMap<String, LiveSchema>,
    BTreeMap<String, LiveExtension>,
);

async fn read_database(connector: &Connector, database: &str) -> Result<DatabaseContents, PgError> {
    let client = connector.connect(database).await?;
    let schemas_sql = format!(
        "SELECT n.nspname::text, pg_get_userbyid(n.nspowner)::text FROM pg_namespace n WHERE {USER_SCHEMA}"
    );
    let mut schemas = BTreeMap::new();
    for row in query(&client, database, &schemas_sql, &[]).await? {
        schemas.insert(
            row.get::<_, String>(0),
            LiveSchema {
                owner: row.get(1),
                grants: BTreeMap::new(),
                tables: ObjectGrants::default(),
                sequences: ObjectGrants::default(),
                functions: ObjectGrants::default(),
            },
        );
    }
    let schema_grants_sql = format!(
        "SELECT n.nspname::text, g.rolname::text, a.privilege_type, a.is_grantable FROM pg_namespace n \
         CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a \
         JOIN pg_roles g ON g.oid = a.grantee WHERE {USER_SCHEMA} AND g.oid >= $1"
    );
    for row in query(&client, database, &schema_grants_sql, &[&FIRST_NORMAL_OID]).await? {
        if let Some(schema) = schemas.get_mut(&row.get::<_, String>(0)) {
            add_privilege(&mut schema.grants, row.get(1), row.get(2), row.get(3));
        }
    }
    // The objects "ALL TABLES / SEQUENCES / FUNCTIONS IN SCHEMA" covers, with their effective ACLs.
    let objects = format!(
        "WITH objects AS (
           SELECT c.relnamespace AS nsp, CASE WHEN c.relkind = 'S' THEN 'sequences' ELSE 'tables' END AS kind,
                  coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner)) AS acl
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {USER_SCHEMA}
           UNION ALL
           SELECT p.pronamespace, 'functions', coalesce(p.proacl, acldefault('f', p.proowner))
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE p.prokind IN ('f', 'a', 'w') AND {USER_SCHEMA})"
    );
    let counts_sql = format!(
        "{objects} SELECT n.nspname::text, o.kind, count(*) FROM objects o JOIN pg_namespace n ON n.oid = o.nsp GROUP BY 1, 2"
    );
    let held_sql = format!(
        "{objects} SELECT n.nspname::text, o.kind, g.rolname::text, a.privilege_type, count(*),
                          count(*) FILTER (WHERE a.is_grantable)
         FROM objects o JOIN pg_namespace n ON n.oid = o.nsp
         CROSS JOIN LATERAL aclexplode(o.acl) a JOIN pg_roles g ON g.oid = a.grantee
         WHERE g.oid >= $1 GROUP BY 1, 2, 3, 4"
    );
    fn kind<'a>(schema: &'a mut LiveSchema, kind: &str) -> &'a mut ObjectGrants {
        match kind {
            "sequences" => &mut schema.sequences,
            "functions" => &mut schema.functions,
            _ => &mut schema.tables,
        }
    }
    for row in query(&client, database, &counts_sql, &[]).await? {
        if let Some(schema) = schemas.get_mut(&row.get::<_, String>(0)) {
            kind(schema, row.get(1)).objects = row.get::<_, i64>(2) as u64;
        }
    }
    for row in query(&client, database, &held_sql, &[&FIRST_NORMAL_OID]).await? {
        let Some(schema) = schemas.get_mut(&row.get::<_, String>(0)) else {
            continue;
        };
        let grants = kind(schema, row.get(1));
        let (holding, grantable) = (row.get::<_, i64>(4) as u64, row.get::<_, i64>(5) as u64);
        // Only what every object grants counts as held (see the live module's docs).
        if holding == grants.objects {
            grants
                .held
                .entry(row.get(2))
                .or_default()
                .insert(row.get(3), grantable == grants.objects);
        }
    }
    let mut extensions = BTreeMap::new();
    let extensions_sql = "SELECT e.extname::text, e.extversion, n.nspname::text FROM pg_extension e \
                          JOIN pg_namespace n ON n.oid = e.extnamespace";
    for row in query(&client, database, extensions_sql, &[]).await? {
        extensions.insert(
            row.get::<_, String>(0),
            LiveExtension {
                version: row.get(1),
                schema: row.get(2),
            },
        );
    }
    Ok((schemas, extensions))
}

/// The order changes run in, so that what a change needs exists before it and is dropped after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Roles and memberships, one transaction on `postgres`.
    Roles,
    /// CREATE DATABASE one by one, then ALTER DATABASE.
    Databases,
    /// Schemas, extensions and grants inside each database, one transaction per database.
    InDatabases,
    /// Grants on databases, one transaction on `postgres`.
    DatabaseGrants,
    /// DROP DATABASE one by one.
    DropDatabases,
    /// DROP ROLE, one transaction on `postgres`, last: a role cannot go while it owns or holds anything.
    DropRoles,
}

/// Where a change goes, and its rank within the phase. A drop of something the same apply creates again is a
/// replacement: it runs first in the create's phase, not at the end.
fn place(change: &PgChange, created: &BTreeSet<(u8, String, String)>) -> (Phase, u8) {
    match change {
        PgChange::DropRole { name } if created.contains(&(0, String::new(), name.clone())) => {
            (Phase::Roles, 0)
        }
        PgChange::CreateRole { .. } | PgChange::AlterRole { .. } | PgChange::SetPassword { .. } => {
            (Phase::Roles, 1)
        }
        PgChange::GrantMembership { .. } => (Phase::Roles, 2),
        PgChange::RevokeMembership { .. } => (Phase::Roles, 3),
        PgChange::DropDatabase { name, .. }
            if created.contains(&(1, String::new(), name.clone())) =>
        {
            (Phase::Databases, 0)
        }
        PgChange::CreateDatabase { .. } => (Phase::Databases, 1),
        PgChange::AlterDatabase { .. } => (Phase::Databases, 2),
        PgChange::DropExtension { database, name }
            if created.contains(&(3, database.clone(), name.clone())) =>
        {
            (Phase::InDatabases, 0)
        }
        PgChange::DropSchema { database, name }
            if created.contains(&(2, database.clone(), name.clone())) =>
        {
            (Phase::InDatabases, 1)
        }
        PgChange::CreateSchema { .. } | PgChange::AlterSchemaOwner { .. } => {
            (Phase::InDatabases, 2)
        }
        PgChange::CreateExtension { .. } | PgChange::UpdateExtension { .. } => {
            (Phase::InDatabases, 3)
        }
        PgChange::Grant(spec) | PgChange::Revoke(spec) => match spec.target {
            GrantTarget::Database { .. } => (Phase::DatabaseGrants, 0),
            _ => (Phase::InDatabases, 4),
        },
        PgChange::DropExtension { .. } => (Phase::InDatabases, 5),
        PgChange::DropSchema { .. } => (Phase::InDatabases, 6),
        PgChange::DropDatabase { .. } => (Phase::DropDatabases, 0),
        PgChange::DropRole { .. } => (Phase::DropRoles, 0),
    }
}

/// Objects created by this apply, as (kind, database, name): kind 0 role, 1 database, 2 schema, 3 extension.
fn created(changes: &[PgChange]) -> BTreeSet<(u8, String, String)> {
    changes
        .iter()
        .filter_map(|change| match change {
            PgChange::CreateRole { name, .. } => Some((0, String::new(), name.clone())),
            PgChange::CreateDatabase { name, .. } => Some((1, String::new(), name.clone())),
            PgChange::CreateSchema { database, name, .. } => {
                Some((2, database.clone(), name.clone()))
            }
            PgChange::CreateExtension { database, name, .. } => {
                Some((3, database.clone(), name.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Applies `changes` so that afterwards each holds. Idempotent: applying the same changes again changes nothing
/// (a few statements run, to the same effect). See [`PgChange`] for what each one means.
///
/// Order: roles and memberships → databases → inside each database (schemas, extensions, grants on schemas and
/// their objects, then their drops) → grants on databases → dropped databases → dropped roles. A drop of an
/// object the same changes create again (a replacement) runs first in its phase. Within a phase the given order is
/// kept. A failure stops the apply at once, with what ran before it applied.
pub async fn apply(connector: &Connector, changes: &[PgChange]) -> Result<(), PgError> {
    apply_with(connector, changes, Applying::default()).await
}

/// What [`apply_with`] may use beyond the connector.
#[derive(Default)]
pub struct Applying {
    /// A session to the `postgres` database opened with the same connector (the instance's first start's),
    /// used instead of opening another when it is still open.
    pub session: Option<Client>,
    /// The data dir may hold a database made ahead of time ([`super::template::PREMADE_DATABASE`]): the first
    /// database created with what it was made with (template1's encoding and locale) is that one, renamed and
    /// given its owner and flags, which takes a few milliseconds where `CREATE DATABASE` takes tens to hundreds.
    /// One nothing could use is dropped at the end.
    pub premade: bool,
}

/// [`apply`], with what [`Applying`] gives.
pub async fn apply_with(
    connector: &Connector,
    changes: &[PgChange],
    applying: Applying,
) -> Result<(), PgError> {
    if changes.is_empty() {
        return Ok(());
    }
    let Applying { session, premade } = applying;
    let creates = created(changes);
    let mut ordered: Vec<(Phase, u8, usize, &PgChange)> = changes
        .iter()
        .enumerate()
        .map(|(index, change)| {
            let (phase, rank) = place(change, &creates);
            (phase, rank, index, change)
        })
        .collect();
    ordered.sort_by_key(|(phase, rank, index, _)| (*phase, *rank, *index));

    let client = match session {
        Some(client) if !client.is_closed() => client,
        _ => connector.connect("postgres").await?,
    };
    // Sessions of an earlier kip that was killed mid-converge may still hold locks (or sit in template1 and make
    // CREATE DATABASE fail): end them first. Each kip names its sessions `kip/<pid>`; a session whose kip is gone
    // is a dead one's.
    const SESSIONS: &str = "SELECT pid, application_name FROM pg_stat_activity \
                            WHERE application_name LIKE 'kip/%' AND pid <> pg_backend_pid()";
    for row in query(&client, "postgres", SESSIONS, &[]).await? {
        let backend: i32 = row.get(0);
        let name: String = row.get(1);
        let kip_alive = name
            .strip_prefix("kip/")
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !kip_alive {
            query(
                &client,
                "postgres",
                "SELECT pg_terminate_backend($1)",
                &[&backend],
            )
            .await?;
        }
    }
    let mut existing_roles = names(&client, "SELECT rolname::text FROM pg_roles").await?;
    let mut existing_databases = names(&client, "SELECT datname::text FROM pg_database").await?;
    // Only a data dir kip made with one (`premade`) has kip's: a database of that name elsewhere is someone's.
    let mut premade = premade && existing_databases.remove(PREMADE_DATABASE);

    let mut phase_start = 0;
    while phase_start < ordered.len() {
        let phase = ordered[phase_start].0;
        let phase_end = ordered[phase_start..]
            .iter()
            .position(|(other, ..)| *other != phase)
            .map_or(ordered.len(), |offset| phase_start + offset);
        let group: Vec<&PgChange> = ordered[phase_start..phase_end]
            .iter()
            .map(|(.., change)| *change)
            .collect();
        phase_start = phase_end;
        let phase_started = Instant::now();
        let count = group.len();
        match phase {
            Phase::Roles | Phase::DropRoles => {
                let mut batch = Vec::new();
                for change in group {
                    role_statements(change, &mut existing_roles, &mut batch)?;
                }
                run_batch(&client, "postgres", &batch).await?;
            }
            Phase::Databases => {
                let mut batch = Vec::new();
                for change in group {
                    match change {
                        PgChange::CreateDatabase { name, spec }
                            if !existing_databases.contains(name) =>
                        {
                            let template = match &spec.template {
                                Some(template) => Some(template.clone()),
                                None => choose_template(&client, spec).await?,
                            };
                            if premade && template.is_none() {
                                premade = false;
                                if name != PREMADE_DATABASE {
                                    batch.push(Sql::plain(format!(
                                        "ALTER DATABASE {} RENAME TO {}",
                                        super::quote::ident("database", PREMADE_DATABASE)?,
                                        super::quote::ident("database", name)?
                                    )));
                                }
                                batch.extend(change::alter_database_to(name, spec)?);
                            } else {
                                let statement =
                                    change::create_database(name, spec, template.as_deref())?;
                                run_alone(&client, "postgres", &statement).await?;
                            }
                            existing_databases.insert(name.clone());
                        }
                        PgChange::CreateDatabase { name, spec } => {
                            batch.extend(change::alter_database_to(name, spec)?)
                        }
                        PgChange::AlterDatabase {
                            name,
                            owner,
                            connection_limit,
                            allow_connections,
                            is_template,
                        } => batch.extend(change::alter_database(
                            name,
                            owner.as_deref(),
                            *connection_limit,
                            *allow_connections,
                            *is_template,
                        )?),
                        PgChange::DropDatabase { name, force } => {
                            drop_database(&client, name, *force).await?;
                            existing_databases.remove(name);
                        }
                        other => unreachable!("not a database change: {other:?}"),
                    }
                }
                run_batch(&client, "postgres", &batch).await?;
            }
            Phase::InDatabases => {
                // One session and one transaction per database, in the order databases first appear.
                let mut databases: Vec<&str> = Vec::new();
                for change in &group {
                    let database = change
                        .database()
                        .expect("in-database changes name their database");
                    if !databases.contains(&database) {
                        databases.push(database);
                    }
                }
                for database in databases {
                    let changes: Vec<&PgChange> = group
                        .iter()
                        .copied()
                        .filter(|change| change.database() == Some(database))
                        .collect();
                    in_database(
                        connector,
                        database,
                        &changes,
                        &existing_roles,
                        &existing_databases,
                    )
                    .await?;
                }
            }
            Phase::DatabaseGrants => {
                let mut batch = Vec::new();
                for change in group {
                    match change {
                        PgChange::Grant(spec) => batch.push(change::grant(spec, false)?),
                        // Revoking on a database or from a role that is gone has nothing left to revoke.
                        PgChange::Revoke(spec) => {
                            if existing_databases.contains(spec.target.database())
                                && existing_roles.contains(&spec.role)
                            {
                                batch.push(change::grant(spec, true)?);
                            }
                        }
                        other => unreachable!("not a database grant: {other:?}"),
                    }
                }
                run_batch(&client, "postgres", &batch).await?;
            }
            Phase::DropDatabases => {
                for change in group {
                    if let PgChange::DropDatabase { name, force } = change {
                        drop_database(&client, name, *force).await?;
                        existing_databases.remove(name);
                    }
                }
            }
        }
        tracing::debug!(?phase, changes = count, elapsed = ?phase_started.elapsed(), "applied");
    }
    if premade {
        // Made ahead of time for a database no longer declared (the configuration changed after the instance
        // was provisioned): kip's, and of no use.
        drop_database(&client, PREMADE_DATABASE, false).await?;
    }
    Ok(())
}

async fn names(client: &Client, sql: &str) -> Result<BTreeSet<String>, PgError> {
    Ok(query(client, "postgres", sql, &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// The statements for a cluster-wide role change. Creating an existing role, or altering a missing one, both
/// converge it to the declared attributes.
fn role_statements(
    change: &PgChange,
    existing: &mut BTreeSet<String>,
    batch: &mut Vec<Sql>,
) -> Result<(), PgError> {
    match change {
        PgChange::CreateRole { name, attributes } | PgChange::AlterRole { name, attributes } => {
            let verb = if existing.contains(name) {
                "ALTER"
            } else {
                "CREATE"
            };
            batch.push(change::role_statement(verb, name, attributes)?);
            existing.insert(name.clone());
        }
        PgChange::SetPassword { role, password } => {
            batch.push(change::set_password(role, password)?)
        }
        PgChange::GrantMembership { role, group } => {
            batch.push(change::membership(true, role, group)?)
        }
        PgChange::RevokeMembership { role, group } => {
            if existing.contains(role) && existing.contains(group) {
                batch.push(change::membership(false, role, group)?);
            }
        }
        PgChange::DropRole { name } => {
            batch.push(Sql::plain(format!(
                "DROP ROLE IF EXISTS {}",
                super::quote::ident("role", name)?
            )));
            existing.remove(name);
        }
        other => unreachable!("not a role change: {other:?}"),
    }
    Ok(())
}

/// template0 when the database asks for an encoding or locale template1 does not have (PostgreSQL refuses to copy
/// template1 into another encoding or locale), else PostgreSQL's default.
async fn choose_template(
    client: &Client,
    spec: &change::DatabaseSpec,
) -> Result<Option<String>, PgError> {
    if spec.encoding.is_none() && spec.lc_collate.is_none() && spec.lc_ctype.is_none() {
        return Ok(None);
    }
    const TEMPLATE1: &str = "SELECT pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text \
                             FROM pg_database WHERE datname = 'template1'";
    let row = client
        .query_one(TEMPLATE1, &[])
        .await
        .map_err(|source| PgError::sql("postgres", TEMPLATE1, source))?;
    let (encoding, collate, ctype): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let differs = |wanted: &Option<String>, have: &str| {
        wanted.as_deref().is_some_and(|wanted| {
            !wanted.eq_ignore_ascii_case(have)
                && normalize_encoding(wanted) != normalize_encoding(have)
        })
    };
    let needs_template0 = differs(&spec.encoding, &encoding)
        || differs(&spec.lc_collate, &collate)
        || differs(&spec.lc_ctype, &ctype);
    Ok(needs_template0.then(|| "template0".to_owned()))
}

fn normalize_encoding(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_uppercase()
}

/// DROP DATABASE, clearing `is_template` first (PostgreSQL refuses to drop a template).
async fn drop_database(client: &Client, name: &str, force: bool) -> Result<(), PgError> {
    const IS_TEMPLATE: &str = "SELECT datistemplate FROM pg_database WHERE datname = $1";
    let rows = query(client, "postgres", IS_TEMPLATE, &[&name]).await?;
    let Some(row) = rows.first() else {
        return Ok(());
    };
    if row.get::<_, bool>(0) {
        for statement in change::alter_database(name, None, None, None, Some(false))? {
            run_alone(client, "postgres", &statement).await?;
        }
    }
    run_alone(client, "postgres", &change::drop_database(name, force)?).await
}

/// The changes inside one database, on a session to it, in one transaction.
async fn in_database(
    connector: &Connector,
    database: &str,
    changes: &[&PgChange],
    roles: &BTreeSet<String>,
    databases: &BTreeSet<String>,
) -> Result<(), PgError> {
    let only_removals = changes.iter().all(|change| {
        matches!(
            change,
            PgChange::DropSchema { .. } | PgChange::DropExtension { .. } | PgChange::Revoke(_)
        )
    });
    // Removing from a database that is gone: nothing is left to remove.
    if only_removals && !databases.contains(database) {
        return Ok(());
    }
    let client = connector.connect(database).await?;
    let schemas = names_in(
        &client,
        database,
        &format!("SELECT n.nspname::text FROM pg_namespace n WHERE {USER_SCHEMA}"),
    )
    .await?;
    let mut database_owner: Option<String> = None;
    let mut batch = Vec::new();
    for change in changes {
        match change {
            PgChange::CreateSchema { name, owner, .. } => {
                let owner = match owner {
                    Some(owner) => owner.clone(),
                    None => match &database_owner {
                        Some(owner) => owner.clone(),
                        None => {
                            const OWNER: &str = "SELECT pg_get_userbyid(datdba)::text FROM pg_database \
                                                 WHERE datname = current_database()";
                            let row = client
                                .query_one(OWNER, &[])
                                .await
                                .map_err(|source| PgError::sql(database, OWNER, source))?;
                            let owner: String = row.get(0);
                            database_owner = Some(owner.clone());
                            owner
                        }
                    },
                };
                batch.extend(change::ensure_schema(name, &owner)?);
            }
            PgChange::AlterSchemaOwner { name, owner, .. } => {
                batch.extend(change::ensure_schema(name, owner)?)
            }
            PgChange::DropSchema { name, .. } => batch.push(change::drop_schema(name)?),
            PgChange::CreateExtension {
                name,
                schema,
                version,
                ..
            } => batch.push(change::create_extension(
                name,
                schema.as_deref(),
                version.as_deref(),
            )?),
            PgChange::UpdateExtension { name, version, .. } => {
                batch.push(change::create_extension(name, None, version.as_deref())?);
                batch.push(change::update_extension(name, version.as_deref())?);
            }
            PgChange::DropExtension { name, .. } => batch.push(change::drop_extension(name)?),
            PgChange::Grant(spec) => batch.push(change::grant(spec, false)?),
            PgChange::Revoke(spec) => {
                let schema = spec.target.schema().unwrap_or_default();
                if roles.contains(&spec.role) && schemas.contains(schema) {
                    batch.push(change::grant(spec, true)?);
                }
            }
            other => unreachable!("not an in-database change: {other:?}"),
        }
    }
    run_batch(&client, database, &batch).await
}

async fn names_in(client: &Client, database: &str, sql: &str) -> Result<BTreeSet<String>, PgError> {
    Ok(query(client, database, sql, &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Runs one statement on its own (CREATE/DROP DATABASE cannot be in a transaction).
async fn run_alone(client: &Client, database: &str, statement: &Sql) -> Result<(), PgError> {
    client
        .batch_execute(&statement.text)
        .await
        .map_err(|source| PgError::sql(database, statement.shown(), source))
}

/// Runs statements as one transaction in one round trip. On failure, replays them one by one in a transaction that
/// is rolled back, to report the statement the server refused.
async fn run_batch(client: &Client, database: &str, statements: &[Sql]) -> Result<(), PgError> {
    match statements {
        [] => return Ok(()),
        [single] => return run_alone(client, database, single).await,
        _ => {}
    }
    let mut text = String::with_capacity(
        statements
            .iter()
            .map(|statement| statement.text.len() + 2)
            .sum::<usize>()
            + 16,
    );
    text.push_str("BEGIN;\n");
    for statement in statements {
        text.push_str(&statement.text);
        text.push_str(";\n");
    }
    text.push_str("COMMIT;");
    let Err(batch_error) = client.batch_execute(&text).await else {
        return Ok(());
    };
    // The failed batch left the session in an aborted transaction; end it before replaying.
    let _ = client.batch_execute("ROLLBACK").await;
    if client.batch_execute("BEGIN").await.is_ok() {
        for statement in statements {
            if let Err(source) = client.batch_execute(&statement.text).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(PgError::sql(database, statement.shown(), source));
            }
        }
        let _ = client.batch_execute("ROLLBACK").await;
    }
    let summary = format!(
        "a transaction of {} statements, starting with {}",
        statements.len(),
        statements[0].shown()
    );
    Err(PgError::sql(database, summary, batch_error))
}

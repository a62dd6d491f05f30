//! Converge: the plan's changes of databases, users and grants as statements, run in the plan's order on one
//! session. Passwords reach the server only as `mysql_native_password` hashes; a grant is changed by granting what
//! is declared first and revoking the rest after, so the account never lacks a privilege it keeps.

use std::collections::BTreeSet;

use kip_core::address::Address;
use kip_core::engine::{EngineError, InstanceCtx};
use kip_core::plan::{Action, Attributes, Change};
use mysql_async::Conn;
use mysql_async::prelude::Queryable as _;
use serde_json::Value as Json;

use super::MyError;
use super::args::{DatabaseArgs, GrantArgs, UserArgs};
use super::engine::{my_error, user_password};
use super::grants::{self, Target};
use super::observe::host_of;
use super::quote::{account, ident, literal};

/// Errors of a `REVOKE` or `DROP` whose object is gone already: no such grant (1141, 1147), no such account (1133,
/// 1269 for some of several).
const GONE: &[u16] = &[1133, 1141, 1147, 1269, 1396];

/// One statement, as run and as shown in an error (passwords left out).
struct Statement {
    sql: String,
    shown: String,
    ignore: &'static [u16],
}

impl Statement {
    fn new(sql: String) -> Statement {
        Statement {
            shown: sql.clone(),
            sql,
            ignore: &[],
        }
    }

    fn idempotent(sql: String) -> Statement {
        Statement {
            ignore: GONE,
            ..Statement::new(sql)
        }
    }
}

async fn run(conn: &mut Conn, statement: Statement) -> Result<(), MyError> {
    match conn.query_drop(&statement.sql).await {
        Ok(()) => Ok(()),
        Err(error)
            if super::client::server_code(&error)
                .is_some_and(|code| statement.ignore.contains(&code)) =>
        {
            Ok(())
        }
        Err(error) => Err(MyError::sql(statement.shown, error)),
    }
}

fn label(address: &Address) -> Result<&str, EngineError> {
    address
        .label()
        .ok_or_else(|| EngineError::new(format!("{address} has no name")))
}

fn engine_error(error: MyError) -> EngineError {
    my_error("cannot converge MariaDB", error)
}

/// Applies `changes` on `conn`, in order.
pub async fn apply(
    ctx: &InstanceCtx,
    conn: &mut Conn,
    changes: &[Change],
) -> Result<(), EngineError> {
    for change in changes {
        if change.action == Action::Noop {
            continue;
        }
        match change.kind.as_str() {
            "database" => database(conn, change).await,
            "user" => user(ctx, conn, change).await,
            "grant" => grant(ctx, conn, change).await,
            _ => Ok(()),
        }?;
    }
    Ok(())
}

async fn database(conn: &mut Conn, change: &Change) -> Result<(), EngineError> {
    let name = label(&change.address)?;
    let quoted = ident("database", name).map_err(engine_error)?;
    if change.action == Action::Delete {
        return drop_database(conn, name, &quoted)
            .await
            .map_err(engine_error);
    }
    let args: DatabaseArgs = change.after_as()?;
    let mut options = String::new();
    if let Some(charset) = &args.character_set {
        options.push_str(&format!(
            " CHARACTER SET {}",
            ident("character set", charset).map_err(engine_error)?
        ));
    }
    if let Some(collation) = &args.collation {
        options.push_str(&format!(
            " COLLATE {}",
            ident("collation", collation).map_err(engine_error)?
        ));
    }
    let sql = match change.action {
        Action::Create => format!("CREATE DATABASE IF NOT EXISTS {quoted}{options}"),
        _ if options.is_empty() => return Ok(()),
        _ => format!("ALTER DATABASE {quoted}{options}"),
    };
    run(conn, Statement::new(sql)).await.map_err(engine_error)
}

/// Drops a database only when it holds no table, view, routine or event (kip owns structure, never data).
async fn drop_database(conn: &mut Conn, name: &str, quoted: &str) -> Result<(), MyError> {
    let query = "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?) \
                 + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ?) \
                 + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ?)";
    let count: Option<u64> = conn
        .exec_first(query, (name, name, name))
        .await
        .map_err(|error| MyError::sql("SELECT COUNT(*) FROM information_schema.TABLES …", error))?;
    let tables = count.unwrap_or(0);
    if tables > 0 {
        return Err(MyError::NotEmpty {
            database: name.to_owned(),
            tables,
        });
    }
    run(
        conn,
        Statement::new(format!("DROP DATABASE IF EXISTS {quoted}")),
    )
    .await
}

async fn user(ctx: &InstanceCtx, conn: &mut Conn, change: &Change) -> Result<(), EngineError> {
    let name = label(&change.address)?;
    let empty = Attributes::new();
    let before = change.before.as_ref().unwrap_or(&empty);
    let old_account = account(name, &host_of(before)).map_err(engine_error)?;
    match change.action {
        Action::Delete => {
            return run(
                conn,
                Statement::idempotent(format!("DROP USER IF EXISTS {old_account}")),
            )
            .await
            .map_err(engine_error);
        }
        Action::Replace => {
            run(
                conn,
                Statement::idempotent(format!("DROP USER IF EXISTS {old_account}")),
            )
            .await
            .map_err(engine_error)?;
        }
        _ => {}
    }
    let args: UserArgs = change.after_as()?;
    let after = change.after.as_ref().unwrap_or(&empty);
    let new_account = account(name, &args.host).map_err(engine_error)?;
    let hash = super::password::native_hash(&user_password(ctx, name, after));
    run(
        conn,
        Statement::new(format!("CREATE USER IF NOT EXISTS {new_account}")),
    )
    .await
    .map_err(engine_error)?;
    let settings = format!(
        "IDENTIFIED BY PASSWORD {} WITH MAX_USER_CONNECTIONS {} ACCOUNT UNLOCK",
        literal("password hash", &hash).map_err(engine_error)?,
        args.max_user_connections
    );
    run(
        conn,
        Statement {
            sql: format!("ALTER USER {new_account} {settings}"),
            shown: format!(
                "ALTER USER {new_account} IDENTIFIED BY PASSWORD '…' WITH MAX_USER_CONNECTIONS {} ACCOUNT UNLOCK",
                args.max_user_connections
            ),
            ignore: &[],
        },
    )
    .await
    .map_err(engine_error)?;
    // Privileges on targets no grant names, found by refresh: revoked.
    if change.action == Action::Update {
        let undeclared = before
            .get("undeclared_grants")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str);
        for on in undeclared {
            let target = Target::parse(on).map_err(engine_error)?;
            revoke_all(conn, &target, &new_account)
                .await
                .map_err(engine_error)?;
        }
    }
    // A new account has none of the old one's grants: every declared grant of the user, again.
    if change.action == Action::Replace {
        for (address, object) in ctx.objects_of("grant") {
            if address.parent().as_ref() == Some(&change.address) {
                let args: GrantArgs = kip_core::engine::typed(address, &object.attributes)?;
                give(conn, &args, &new_account, None)
                    .await
                    .map_err(engine_error)?;
            }
        }
    }
    Ok(())
}

/// Revokes every privilege on `target`, and the grant option (MariaDB takes `ALL PRIVILEGES, GRANT OPTION` only
/// without a target, for everything at once).
async fn revoke_all(conn: &mut Conn, target: &Target, account: &str) -> Result<(), MyError> {
    let on = target.sql()?;
    for what in ["ALL PRIVILEGES", "GRANT OPTION"] {
        run(
            conn,
            Statement::idempotent(format!("REVOKE {what} ON {on} FROM {account}")),
        )
        .await?;
    }
    Ok(())
}

/// The account of the user a grant belongs to.
fn grant_account(
    ctx: &InstanceCtx,
    address: &Address,
    fallback: &Attributes,
) -> Result<String, EngineError> {
    let user_address = address
        .parent()
        .ok_or_else(|| EngineError::new(format!("{address} is not inside a user")))?;
    let user = label(&user_address)?;
    let host = ctx
        .objects
        .get(&user_address)
        .map(|object| host_of(&object.attributes))
        .unwrap_or_else(|| host_of(fallback));
    account(user, &host).map_err(engine_error)
}

async fn grant(ctx: &InstanceCtx, conn: &mut Conn, change: &Change) -> Result<(), EngineError> {
    let empty = Attributes::new();
    let before: Option<GrantArgs> = change.before.as_ref().and_then(|_| change.before_as().ok());
    let account = grant_account(
        ctx,
        &change.address,
        change.before.as_ref().unwrap_or(&empty),
    )?;
    if change.action == Action::Delete {
        if let Some(before) = before {
            let target = Target::parse(&before.on).map_err(engine_error)?;
            revoke_all(conn, &target, &account)
                .await
                .map_err(engine_error)?;
        }
        return Ok(());
    }
    let after: GrantArgs = change.after_as()?;
    give(conn, &after, &account, before.as_ref())
        .await
        .map_err(engine_error)
}

/// Grants what `after` declares, then revokes what `before` had beyond it (all of it on a target no longer named).
async fn give(
    conn: &mut Conn,
    after: &GrantArgs,
    account: &str,
    before: Option<&GrantArgs>,
) -> Result<(), MyError> {
    let target = Target::parse(&after.on)?;
    for privilege in &after.privileges {
        grants::check(&after.on, privilege)?;
    }
    let wanted = grants::expand(&target, &after.privileges);
    let privileges = grants::normalize_all(&after.privileges).join(", ");
    if !privileges.is_empty() {
        let option = if after.with_grant_option {
            " WITH GRANT OPTION"
        } else {
            ""
        };
        run(
            conn,
            Statement::new(format!(
                "GRANT {privileges} ON {} TO {account}{option}",
                target.sql()?
            )),
        )
        .await?;
    }
    let Some(before) = before else {
        return Ok(());
    };
    let old_target = Target::parse(&before.on)?;
    if old_target != target {
        return revoke_all(conn, &old_target, account).await;
    }
    let had = grants::expand(&target, &before.privileges);
    let extra: BTreeSet<&String> = had.difference(&wanted).collect();
    for privilege in &extra {
        grants::check(&before.on, privilege)?;
    }
    let mut revoked: Vec<String> = extra.into_iter().cloned().collect();
    if before.with_grant_option && !after.with_grant_option {
        revoked.push("GRANT OPTION".to_owned());
    }
    if privileges.is_empty() {
        return revoke_all(conn, &target, account).await;
    }
    if !revoked.is_empty() {
        run(
            conn,
            Statement::idempotent(format!(
                "REVOKE {} ON {} FROM {account}",
                revoked.join(", "),
                target.sql()?
            )),
        )
        .await?;
    }
    Ok(())
}

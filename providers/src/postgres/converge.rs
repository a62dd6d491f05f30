//! Converge: the plan's object changes, with real values, as [`PgChange`]s for [`super::apply`] to run in one
//! batch. Each change reads its before/after through the typed views of [`super::args`]; names come from the
//! typed addresses' labels, exactly as written.

use kip_core::address::Address;
use kip_core::engine::{EngineError, InstanceCtx};
use kip_core::plan::{Action, Change};

use super::args::{DatabaseArgs, ExtensionArgs, GrantArgs, RoleArgs, SchemaArgs};
use super::engine::{generated_role_password, pg_error};
use super::{DatabaseSpec, GrantSpec, GrantTarget, Password, PgChange, RoleAttributes};

fn label(address: &Address) -> Result<String, EngineError> {
    address
        .label()
        .map(str::to_owned)
        .ok_or_else(|| EngineError::new(format!("{address} has no name")))
}

/// What `grant {}` asks, as PostgreSQL will be told.
pub(super) fn grant_spec(args: &GrantArgs) -> Result<GrantSpec, EngineError> {
    let on = args.on.clone().unwrap_or_else(|| {
        if args.schema.is_some() && args.database.is_none() {
            "schema".into()
        } else {
            "database".into()
        }
    });
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| "postgres".to_owned());
    let schema = || args.schema.clone().unwrap_or_else(|| "public".to_owned());
    let target = match on.as_str() {
        "database" => GrantTarget::Database { database },
        "schema" => GrantTarget::Schema {
            database,
            schema: schema(),
        },
        "tables" => GrantTarget::Tables {
            database,
            schema: schema(),
        },
        "sequences" => GrantTarget::Sequences {
            database,
            schema: schema(),
        },
        "functions" => GrantTarget::Functions {
            database,
            schema: schema(),
        },
        other => {
            return Err(EngineError::new(format!(
                "a grant's `on` cannot be {other:?}"
            )));
        }
    };
    let privileges = target
        .normalize_privileges(&args.privileges)
        .map_err(|error| pg_error("invalid grant", error))?;
    Ok(GrantSpec {
        role: args.role.clone(),
        target,
        privileges,
        with_grant_option: args.with_grant_option,
    })
}

fn role_attributes(args: &RoleArgs, password: Option<Password>) -> RoleAttributes {
    RoleAttributes {
        login: args.login,
        superuser: args.superuser,
        createdb: args.createdb,
        createrole: args.createrole,
        inherit: args.inherit,
        replication: args.replication,
        bypassrls: args.bypassrls,
        connection_limit: args.connection_limit as i32,
        valid_until: args.valid_until.clone(),
        password,
    }
}

/// The batch for `changes` (deletions come last, deepest first, as core orders them).
pub fn statements(ctx: &mut InstanceCtx, changes: &[Change]) -> Result<Vec<PgChange>, EngineError> {
    let mut batch = Vec::new();
    for change in changes {
        let name = label(&change.address).or_else(|_| Ok::<_, EngineError>(String::new()))?;
        let deleting = matches!(change.action, Action::Delete | Action::Replace);
        let creating = matches!(change.action, Action::Create | Action::Replace);
        match change.kind.as_str() {
            "role" => role(ctx, change, &name, &mut batch)?,
            "database" => {
                database(change, &name, deleting, creating, &mut batch)?;
                // A new owner takes over the database's ACL (PostgreSQL rewrites it around the owner), which can
                // drop privileges granted by the old one: grant what is declared on it again, idempotently.
                if change.action == Action::Update
                    && change.changed_attributes().iter().any(|a| a == "owner")
                {
                    for (_, grant) in ctx.objects_of("grant") {
                        let Ok(args) = kip_core::engine::typed::<GrantArgs>(
                            &change.address,
                            &grant.attributes,
                        ) else {
                            continue;
                        };
                        if args.database.as_deref() == Some(name.as_str()) {
                            batch.push(PgChange::Grant(grant_spec(&args)?));
                        }
                    }
                }
            }
            "schema" => {
                let current: SchemaArgs = if change.action == Action::Delete {
                    change.before_as()?
                } else {
                    change.after_as()?
                };
                let database = current
                    .database
                    .clone()
                    .unwrap_or_else(|| "postgres".into());
                if deleting {
                    batch.push(PgChange::DropSchema {
                        database: database.clone(),
                        name: name.clone(),
                    });
                }
                if change.action != Action::Delete {
                    batch.push(match (change.action, current.owner) {
                        (Action::Update, Some(owner)) => PgChange::AlterSchemaOwner {
                            database,
                            name,
                            owner,
                        },
                        (_, owner) => PgChange::CreateSchema {
                            database,
                            name,
                            owner,
                        },
                    });
                }
            }
            "extension" => {
                let current: ExtensionArgs = if change.action == Action::Delete {
                    change.before_as()?
                } else {
                    change.after_as()?
                };
                let database = current
                    .database
                    .clone()
                    .unwrap_or_else(|| "postgres".into());
                if deleting {
                    batch.push(PgChange::DropExtension {
                        database: database.clone(),
                        name: name.clone(),
                    });
                }
                match change.action {
                    Action::Create | Action::Replace => batch.push(PgChange::CreateExtension {
                        database,
                        name,
                        schema: current.schema,
                        version: current.version,
                    }),
                    Action::Update => batch.push(PgChange::UpdateExtension {
                        database,
                        name,
                        version: current.version,
                    }),
                    _ => {}
                }
            }
            "grant" => {
                if deleting && let Ok(before) = change.before_as::<GrantArgs>() {
                    batch.push(PgChange::Revoke(grant_spec(&before)?));
                }
                if change.action == Action::Update
                    && let Ok(before) = change.before_as::<GrantArgs>()
                {
                    // What is no longer declared is revoked: on the same target only the dropped privileges (the
                    // grant below runs after), elsewhere all of them.
                    let mut old = grant_spec(&before)?;
                    let new = grant_spec(&change.after_as()?)?;
                    if old.target == new.target && old.role == new.role {
                        old.privileges.retain(|p| !new.privileges.contains(p));
                        if old.with_grant_option && !new.with_grant_option {
                            let mut option = new.clone();
                            option.with_grant_option = true;
                            batch.push(PgChange::Revoke(option));
                        }
                        old.with_grant_option = false;
                    }
                    if !old.privileges.is_empty() {
                        batch.push(PgChange::Revoke(old));
                    }
                }
                if change.action != Action::Delete {
                    batch.push(PgChange::Grant(grant_spec(&change.after_as()?)?));
                }
            }
            _ => {}
        }
    }
    Ok(batch)
}

fn role(
    ctx: &mut InstanceCtx,
    change: &Change,
    name: &str,
    batch: &mut Vec<PgChange>,
) -> Result<(), EngineError> {
    if change.action == Action::Delete {
        batch.push(PgChange::DropRole {
            name: name.to_owned(),
        });
        return Ok(());
    }
    let after: RoleArgs = change.after_as()?;
    let before: Option<RoleArgs> = change.before.as_ref().and_then(|_| change.before_as().ok());
    // A password is sent when the role gets one: created, had none, a configured one changed, or the one the
    // server has is not the one kip hands out (changed behind its back).
    let password_changed = change
        .changed_attributes()
        .iter()
        .any(|a| a == "password" || a == "password_works");
    let needs_password = after.has_password
        && (change.action != Action::Update
            || !before.as_ref().is_some_and(|b| b.has_password)
            || password_changed);
    // The server gets a verifier, never the password.
    let password = if needs_password {
        let verifier = match &after.password {
            Some(chosen) => super::scram::verifier(chosen, super::scram::CHOSEN_ITERATIONS)?,
            None => super::scram::verifier(
                &generated_role_password(ctx, name),
                super::scram::GENERATED_ITERATIONS,
            )?,
        };
        Some(Password::new(verifier))
    } else {
        None
    };
    let attributes = role_attributes(&after, password);
    batch.push(if change.action == Action::Update {
        PgChange::AlterRole {
            name: name.to_owned(),
            attributes,
        }
    } else {
        PgChange::CreateRole {
            name: name.to_owned(),
            attributes,
        }
    });
    if let Some(wanted) = &after.member_of {
        let had = before.and_then(|b| b.member_of).unwrap_or_default();
        for group in wanted.iter().filter(|g| !had.contains(g)) {
            batch.push(PgChange::GrantMembership {
                role: name.to_owned(),
                group: group.clone(),
            });
        }
        for group in had.iter().filter(|g| !wanted.contains(g)) {
            batch.push(PgChange::RevokeMembership {
                role: name.to_owned(),
                group: group.clone(),
            });
        }
    }
    Ok(())
}

fn database(
    change: &Change,
    name: &str,
    deleting: bool,
    creating: bool,
    batch: &mut Vec<PgChange>,
) -> Result<(), EngineError> {
    if deleting {
        batch.push(PgChange::DropDatabase {
            name: name.to_owned(),
            force: false,
        });
    }
    if change.action == Action::Delete {
        return Ok(());
    }
    let after: DatabaseArgs = change.after_as()?;
    if creating {
        batch.push(PgChange::CreateDatabase {
            name: name.to_owned(),
            spec: DatabaseSpec {
                owner: after.owner.clone(),
                encoding: after.encoding.clone(),
                lc_collate: after.lc_collate.clone(),
                lc_ctype: after.lc_ctype.clone(),
                template: after.template.clone(),
                connection_limit: after.connection_limit as i32,
                allow_connections: after.allow_connections,
                is_template: after.is_template,
            },
        });
    } else {
        batch.push(PgChange::AlterDatabase {
            name: name.to_owned(),
            owner: after.owner.clone(),
            connection_limit: Some(after.connection_limit as i32),
            allow_connections: Some(after.allow_connections),
            is_template: Some(after.is_template),
        });
    }
    let wanted = after.extensions.clone().unwrap_or_default();
    let had = if change.action == Action::Update {
        change
            .before_as::<DatabaseArgs>()
            .ok()
            .and_then(|before| before.extensions)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    for extension in wanted.iter().filter(|e| !had.contains(e)) {
        batch.push(PgChange::CreateExtension {
            database: name.to_owned(),
            name: extension.clone(),
            schema: None,
            version: None,
        });
    }
    for extension in had.iter().filter(|e| !wanted.contains(e)) {
        batch.push(PgChange::DropExtension {
            database: name.to_owned(),
            name: extension.clone(),
        });
    }
    Ok(())
}

//! What a PostgreSQL instance and its objects export: exactly the attributes the schema declares for each block
//! (`url`, `host`, `port`, `socket`, `user`, `password` for the instance; `name`, `url`, `password` for a role;
//! `name`, `url` for a database; `name` for a schema). URLs are libpq URIs with every part percent-encoded, so a
//! label or password with `@`, `/`, `?`, spaces or unicode stays one value.

use crate::shared::url_encode as encode;
use kip_core::address::Address;
use kip_core::engine::{EngineError, Exports, InstanceCtx};
use serde_json::json;

use super::args::{DatabaseArgs, InstanceArgs};
use super::engine::{SUPERUSER_PASSWORD, role_password};

fn url(
    ctx: &InstanceCtx,
    args: &InstanceArgs,
    user: &str,
    password: Option<&str>,
    database: &str,
) -> String {
    let credentials = match password {
        Some(password) => format!("{}:{}", encode(user), encode(password)),
        None => encode(user),
    };
    match args.port {
        Some(port) => format!(
            "postgresql://{credentials}@127.0.0.1:{port}/{}",
            encode(database)
        ),
        None => format!(
            "postgresql://{credentials}@/{}?host={}&port={}",
            encode(database),
            encode(&ctx.run_dir.to_string_lossy()),
            super::DEFAULT_PORT
        ),
    }
}

pub fn exports(ctx: &InstanceCtx, object: Option<&Address>) -> Result<Exports, EngineError> {
    let args: InstanceArgs = ctx.args()?;
    let superuser_password = ctx
        .secrets
        .get(SUPERUSER_PASSWORD)
        .unwrap_or_default()
        .to_owned();
    let mut exports = Exports::new();
    let Some(object) = object else {
        exports.insert(
            "url".into(),
            json!(url(
                ctx,
                &args,
                &args.superuser,
                Some(&superuser_password),
                "postgres"
            )),
        );
        exports.insert(
            "host".into(),
            json!(if args.port.is_some() {
                "127.0.0.1".to_owned()
            } else {
                ctx.run_dir.to_string_lossy().into_owned()
            }),
        );
        exports.insert(
            "port".into(),
            json!(args.port.unwrap_or(super::DEFAULT_PORT)),
        );
        exports.insert("socket".into(), json!(ctx.run_dir.to_string_lossy()));
        exports.insert("user".into(), json!(args.superuser));
        exports.insert("password".into(), json!(superuser_password));
        return Ok(exports);
    };
    let name = object
        .label()
        .ok_or_else(|| EngineError::new(format!("{object} exports nothing")))?
        .to_owned();
    match object.kind() {
        Some("role") => {
            let password = role_password(ctx, object);
            exports.insert("name".into(), json!(name));
            exports.insert(
                "url".into(),
                json!(url(ctx, &args, &name, password.as_deref(), "postgres")),
            );
            exports.insert("password".into(), json!(password.unwrap_or_default()));
        }
        Some("database") => {
            // As its owner when the owner can log in, else as the superuser.
            let owner = ctx
                .objects
                .get(object)
                .and_then(|view| {
                    kip_core::engine::typed::<DatabaseArgs>(object, &view.attributes).ok()
                })
                .and_then(|args| args.owner);
            let as_owner = owner.and_then(|owner| {
                let role = object.instance_address().named_child("role", &owner);
                role_password(ctx, &role).map(|password| (owner, password))
            });
            let (user, password) =
                as_owner.unwrap_or_else(|| (args.superuser.clone(), superuser_password.clone()));
            exports.insert("name".into(), json!(name));
            exports.insert(
                "url".into(),
                json!(url(ctx, &args, &user, Some(&password), &name)),
            );
        }
        Some("schema") => {
            exports.insert("name".into(), json!(name));
        }
        _ => {}
    }
    Ok(exports)
}

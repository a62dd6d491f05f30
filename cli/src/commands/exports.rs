//! `kip url ADDR` and `kip env`: what applied instances export, for people and programs. Values come from the
//! engines' exports of what the state holds; `kip env` names them `KIP_<ADDRESS>_URL` (the address in capitals,
//! every other character `_`) and refuses two addresses that would share a name.

use std::collections::BTreeMap;
use std::io::Write as _;

use kip_core::address::Address;
use kip_core::apply::lifecycle;
use kip_core::engine::Engines;
use kip_core::project::Project;
use kip_core::state::State;

use super::project::{engines, parse_address, project, state_error};
use super::{Context, VarArgs};
use crate::{ExitStatus, with_hint};

#[derive(Debug, clap::Args)]
pub struct UrlArgs {
    /// An instance or object address: postgres.main, postgres.main.database.shop, postgres.main.role["app.user"]
    /// (or the reference a kip.hcl writes for its url: postgres.main.database.shop.url).
    pub address: String,
    #[command(flatten)]
    pub vars: VarArgs,
}

/// The exports of an applied instance or object.
pub(crate) fn exports_of(
    project: &Project,
    engines: &Engines,
    state: &State,
    address: &Address,
) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    let instance = address.instance_address();
    let not_applied = || {
        let known: Vec<String> = state
            .instances
            .iter()
            .flat_map(|(address, saved)| {
                std::iter::once(address.to_string())
                    .chain(saved.objects.keys().map(ToString::to_string))
            })
            .collect();
        let hint =
            match kip_schemas::did_you_mean(&address.to_string(), known.iter().map(String::as_str))
            {
                Some(close) => format!("did you mean {close}?"),
                None => "run `kip apply` first; `kip graph` lists the addresses".to_owned(),
            };
        with_hint(
            anyhow::anyhow!("{address} is not applied: it is not declared, or not applied yet"),
            hint,
        )
    };
    let Some(saved) = state.instances.get(&instance) else {
        return Err(not_applied());
    };
    if !address.is_instance() && !saved.objects.contains_key(address) {
        return Err(not_applied());
    }
    let engine = engines
        .get(&saved.engine)
        .ok_or_else(|| anyhow::anyhow!("this kip cannot run {} instances", saved.engine))?;
    let ctx = lifecycle::ctx_from_state(project, &instance, saved);
    let object = (!address.is_instance()).then_some(address);
    engine.exports(&ctx, object).map_err(|error| {
        let hint = error.hint.clone();
        super::project::hinted(error, hint)
    })
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub fn url(context: &Context, args: UrlArgs) -> anyhow::Result<ExitStatus> {
    // The reference a kip.hcl would write (`postgres.main.database.shop.url`) names the same url: when the text is
    // no address as a whole, it is taken without its `.url`.
    let address = match parse_address(&args.address) {
        Ok(address) => address,
        Err(error) => match args.address.strip_suffix(".url").map(parse_address) {
            Some(Ok(address)) => address,
            _ => return Err(error),
        },
    };
    let project = project(context)?;
    let state = State::read(&project.kip_dir).map_err(state_error)?;
    let exports = exports_of(&project, &engines(), &state, &address)?;
    let Some(url) = exports.get("url") else {
        return Err(anyhow::anyhow!("{address} exports no url"));
    };
    writeln!(std::io::stdout().lock(), "{}", text(url))?;
    Ok(ExitStatus::Success)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EnvFormat {
    Shell,
    Dotenv,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    #[arg(long, value_enum, default_value_t = EnvFormat::Shell)]
    pub format: EnvFormat,
    #[command(flatten)]
    pub vars: VarArgs,
}

/// `KIP_<ADDRESS>_URL`: the address's parts (engine, name, key, then kind and label of each step) in capitals,
/// joined by `_`; in each part every character but ASCII letters and digits becomes `_`. So
/// `postgres.main.role["app.user"]` is `KIP_POSTGRES_MAIN_ROLE_APP_USER_URL`. Two addresses that map to one name
/// are refused by `kip env`, never silently merged.
pub(crate) fn variable_name(address: &Address) -> String {
    let mut parts: Vec<String> = vec![address.engine.clone(), address.name.clone()];
    if let Some(key) = &address.key {
        parts.push(match key {
            kip_core::address::IndexKey::Number(number) => number.to_string(),
            kip_core::address::IndexKey::String(text) => text.clone(),
        });
    }
    for step in &address.path {
        parts.push(step.kind.clone());
        parts.push(match &step.label {
            kip_core::address::PathLabel::Name(name) => name.clone(),
            kip_core::address::PathLabel::Index(index) => index.to_string(),
        });
    }
    let mut name = String::from("KIP");
    for part in parts {
        name.push('_');
        name.extend(part.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        }));
    }
    name.push_str("_URL");
    name
}

/// The variables `kip env` prints: `KIP_<ADDRESS>_URL` for every applied instance and object that exports a
/// url, and the conventional variables the engines' schemas name for their exports (`DATABASE_URL`, `REDIS_URL`,
/// `AWS_ACCESS_KEY_ID`, …): the first instance in address order gives each, its objects before itself.
pub(crate) fn env_variables(
    project: &Project,
    state: &State,
) -> anyhow::Result<BTreeMap<String, String>> {
    let engines = engines();
    let mut variables: BTreeMap<String, String> = BTreeMap::new();
    let mut owners: BTreeMap<String, Address> = BTreeMap::new();
    let mut conventional: BTreeMap<&'static str, String> = BTreeMap::new();
    for (instance, saved) in &state.instances {
        let Some(engine) = engines.get(&saved.engine) else {
            continue;
        };
        let schema = engine.schema();
        let ctx = lifecycle::ctx_from_state(project, instance, saved);
        let (exports, objects) = lifecycle::instance_exports(engine.as_ref(), &ctx);
        let mut add = |address: &Address,
                       exports: &BTreeMap<String, serde_json::Value>|
         -> anyhow::Result<()> {
            let Some(url) = exports.get("url").filter(|url| !url.is_null()) else {
                return Ok(());
            };
            let name = variable_name(address);
            if let Some(other) = owners.get(&name) {
                return Err(with_hint(
                    anyhow::anyhow!("{other} and {address} would both be exported as {name}"),
                    "rename one of the two blocks; `kip env` maps every character but letters and digits to `_`",
                ));
            }
            owners.insert(name.clone(), address.clone());
            variables.insert(name, text(url));
            Ok(())
        };
        add(instance, &exports)?;
        let mut named: BTreeMap<&'static str, String> = BTreeMap::new();
        for (object, exports) in &objects {
            add(object, exports)?;
            let block = object
                .path
                .iter()
                .try_fold(&schema.instance, |block, step| block.block(&step.kind));
            if let Some(block) = block {
                conventional_of(block, exports, &mut named);
            }
        }
        conventional_of(&schema.instance, &exports, &mut named);
        for (name, value) in named {
            conventional.entry(name).or_insert(value);
        }
    }
    for (name, value) in conventional {
        variables.entry(name.to_owned()).or_insert(value);
    }
    Ok(variables)
}

/// The conventional variables `block`'s schema names for these exports, where none is named yet.
fn conventional_of(
    block: &kip_schemas::BlockSchema,
    exports: &BTreeMap<String, serde_json::Value>,
    named: &mut BTreeMap<&'static str, String>,
) {
    for export in &block.exports {
        if let (Some(name), Some(value)) = (export.env, exports.get(export.name))
            && !value.is_null()
        {
            named.entry(name).or_insert_with(|| text(value));
        }
    }
}

/// A value in single quotes for a POSIX shell: nothing inside is interpreted; a `'` ends the quote, is escaped,
/// and opens a new one.
pub(crate) fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// A dotenv value: bare when every character is plain, single-quoted (literal) when it holds no `'`, else
/// double-quoted with `\\`, `"`, `$` and newlines escaped, as dotenv readers unescape them.
pub(crate) fn dotenv_quote(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:@%?&=+,~".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        return value.to_owned();
    }
    if !value.contains(['\'', '\n', '\r']) {
        return format!("'{value}'");
    }
    let mut quoted = String::from("\"");
    for c in value.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '$' => quoted.push_str("\\$"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

pub fn env(context: &Context, args: EnvArgs) -> anyhow::Result<ExitStatus> {
    let project = project(context)?;
    let state = State::read(&project.kip_dir).map_err(state_error)?;
    let variables = env_variables(&project, &state)?;
    let mut stdout = std::io::stdout().lock();
    match args.format {
        EnvFormat::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&variables)?)?,
        EnvFormat::Dotenv => {
            for (key, value) in &variables {
                writeln!(stdout, "{key}={}", dotenv_quote(value))?;
            }
        }
        EnvFormat::Shell => {
            for (key, value) in &variables {
                writeln!(stdout, "export {key}={}", shell_quote(value))?;
            }
        }
    }
    Ok(ExitStatus::Success)
}

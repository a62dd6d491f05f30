//! ACL users: the rules kip sets, and what Valkey reports back, as the attributes the plan compares.
//!
//! A user is set with its rules replaced as a whole: `ACL SETUSER name reset on|off #<sha256> ~key… &channel…
//! rule…`, so whatever was there before (drift, an old rule) goes. Passwords travel as their SHA-256 (`#…`),
//! never as plaintext, and are checked the same way: `ACL GETUSER` reports the hashes, and the user's password
//! works when the only one is the hash of the password kip hands out.
//!
//! Valkey reports command rules in its own normal form (lowercased, `-@all` first unless the rules start from
//! `+@all`, rules a later one overrides dropped). kip keeps, in the instance's state, the SHA-256 of the form
//! Valkey reported right after kip set the user: when Valkey reports the same form at refresh, the rules are the
//! ones kip applied; otherwise they were changed behind kip's back, and the reported rules are the drift.

use redis::Value;

use super::VkError;
use super::args::UserArgs;

/// The state key of the fingerprint of a user's command rules as Valkey reported them after kip set them.
pub fn rules_key(user: &str) -> String {
    format!("acl-rules:{user}")
}

/// The fingerprint kept under [`rules_key`].
pub fn rules_fingerprint(commands: &str) -> String {
    super::password_hash(commands)
}

/// The arguments of `ACL SETUSER` for `user` with `password` (after `ACL SETUSER`).
pub fn setuser_args(name: &str, user: &UserArgs, password: &str) -> Result<Vec<String>, VkError> {
    let mut args = vec![
        name.to_owned(),
        "reset".to_owned(),
        if user.enabled { "on" } else { "off" }.to_owned(),
        format!("#{}", super::password_hash(password)),
    ];
    for (prefix, list, what) in [
        ("~", &user.keys, "key pattern"),
        ("&", &user.channels, "channel pattern"),
    ] {
        for pattern in list.iter().flatten() {
            check_rule(name, what, pattern)?;
            args.push(format!("{prefix}{pattern}"));
        }
    }
    for rule in user.commands.iter().flatten() {
        check_rule(name, "command rule", rule)?;
        args.push(rule.clone());
    }
    Ok(args)
}

/// Valkey's ACL rules are single words (its ACL file is split on spaces): a rule with a space or a control
/// character would not survive `ACL SAVE`.
fn check_rule(user: &str, what: &str, rule: &str) -> Result<(), VkError> {
    if rule.is_empty() || rule.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(VkError::InvalidUser {
            user: user.to_owned(),
            reason: format!(
                "the {what} {rule:?} is empty or holds a space or a control character, which Valkey's ACL syntax \
                 cannot express"
            ),
        });
    }
    Ok(())
}

/// One user as `ACL GETUSER` reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LiveUser {
    pub enabled: bool,
    /// SHA-256 hashes (hex) of the passwords Valkey accepts for the user.
    pub passwords: Vec<String>,
    /// The command rules in Valkey's normal form (`+@all -flushall`).
    pub commands: String,
    /// Key patterns without the `~`.
    pub keys: Vec<String>,
    /// Channel patterns without the `&`.
    pub channels: Vec<String>,
}

impl LiveUser {
    /// The command rules as a list, as a user would declare them.
    pub fn command_rules(&self) -> Vec<String> {
        let rules: Vec<String> = self.commands.split(' ').map(str::to_owned).collect();
        // `-@all` first is Valkey's way of saying "nothing but what follows", which a declaration leaves implicit.
        match rules.split_first() {
            Some((first, rest)) if first == "-@all" => rest.to_vec(),
            _ => rules,
        }
        .into_iter()
        .filter(|rule| !rule.is_empty())
        .collect()
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn texts(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) | Value::Set(items) => items.iter().filter_map(text).collect(),
        other => text(other).into_iter().collect(),
    }
}

fn patterns(value: &Value, prefix: char) -> Vec<String> {
    let joined = text(value).unwrap_or_default();
    joined
        .split(' ')
        .filter(|pattern| !pattern.is_empty())
        .map(|pattern| pattern.strip_prefix(prefix).unwrap_or(pattern).to_owned())
        .collect()
}

/// Reads an `ACL GETUSER` answer: `None` for a user that does not exist.
pub fn parse_getuser(answer: &Value) -> Result<Option<LiveUser>, VkError> {
    let pairs: Vec<(String, &Value)> = match answer {
        Value::Nil => return Ok(None),
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [key, value] => text(key).map(|key| (key, value)),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(key, value)| text(key).map(|key| (key, value)))
            .collect(),
        other => {
            return Err(VkError::Unexpected {
                command: "ACL GETUSER".into(),
                answer: format!("{other:?}"),
            });
        }
    };
    let mut user = LiveUser::default();
    for (key, value) in pairs {
        match key.as_str() {
            "flags" => user.enabled = texts(value).iter().any(|flag| flag == "on"),
            "passwords" => user.passwords = texts(value),
            "commands" => user.commands = text(value).unwrap_or_default(),
            "keys" => user.keys = patterns(value, '~'),
            "channels" => user.channels = patterns(value, '&'),
            _ => {}
        }
    }
    Ok(Some(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn rules_are_replaced_as_a_whole_with_hashed_passwords() {
        let user = UserArgs {
            enabled: true,
            password: None,
            commands: Some(vec!["+@all".into(), "-flushall".into()]),
            keys: Some(vec!["app:*".into()]),
            channels: Some(vec!["events.*".into()]),
            password_works: true,
        };
        let args = setuser_args(">odd\"name", &user, "pw").unwrap();
        assert_eq!(
            args,
            [
                ">odd\"name",
                "reset",
                "on",
                "#30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4",
                "~app:*",
                "&events.*",
                "+@all",
                "-flushall"
            ]
        );
        let spaced = UserArgs {
            keys: Some(vec!["a b".into()]),
            ..user
        };
        assert!(setuser_args("app", &spaced, "pw").is_err());
    }

    #[test]
    fn getuser_answers_are_read() {
        let answer = Value::Array(vec![
            bulk("flags"),
            Value::Array(vec![bulk("on")]),
            bulk("passwords"),
            Value::Array(vec![bulk("abc")]),
            bulk("commands"),
            bulk("-@all +get"),
            bulk("keys"),
            bulk("~app:* ~other"),
            bulk("channels"),
            bulk(""),
            bulk("selectors"),
            Value::Array(vec![]),
        ]);
        let user = parse_getuser(&answer).unwrap().unwrap();
        assert!(user.enabled);
        assert_eq!(user.passwords, ["abc"]);
        assert_eq!(user.command_rules(), ["+get"]);
        assert_eq!(user.keys, ["app:*", "other"]);
        assert!(user.channels.is_empty());
        assert_eq!(parse_getuser(&Value::Nil).unwrap(), None);
    }
}

//! The variables pass: each `variable` block's type, default and value, taken from `--var`, then `KIP_VAR_`,
//! then the default.
//!
//! It runs first because every later expression may read `var.*`. A variable that ends up without a value is
//! reported here and left out of the evaluation context, so nothing is evaluated against a made-up value.

use std::collections::BTreeMap;

use hcl::edit::structure::Block as EditBlock;
use hcl::eval::{Context, Evaluate};
use kip_schemas::did_you_mean;

use super::{Checker, span_of};
use crate::config::eval::{conform, parse_cli_value, variable_type};
use crate::config::{Declared, ValueSource, Variable, VariableType};
use crate::diag::Diagnostic;
use crate::source::FileId;

impl Checker<'_> {
    pub(super) fn variables(&mut self, blocks: &[(FileId, &EditBlock)]) -> Vec<Variable> {
        let mut seen: BTreeMap<String, Declared> = BTreeMap::new();
        let mut variables = Vec::new();
        for &(file, block) in blocks {
            let Some((name, declared)) = self.named(
                file,
                block,
                &mut seen,
                "",
                "Duplicate variable declaration",
                "variable",
            ) else {
                continue;
            };
            // Known as declared from here on, with or without a value, so a reference to it is never "undeclared".
            self.context_values.declared_vars.insert(name.clone());
            self.check_arguments(
                file,
                &block.body,
                &["type", "default", "description", "sensitive"],
                "variable",
            );
            let ty = match block.body.get_attribute("type") {
                None => VariableType::Any,
                Some(attribute) => variable_type(&attribute.value).unwrap_or_else(|| {
                    let span = span_of(&attribute.value, &declared.span);
                    self.error(
                        file,
                        span,
                        "Invalid type specification",
                        "A variable type is one of string, number, bool, any, list(TYPE) or map(TYPE).",
                    );
                    VariableType::Any
                }),
            };
            let description = self.literal_string(file, &block.body, "description");
            let sensitive = self
                .literal_bool(file, &block.body, "sensitive")
                .unwrap_or(false);
            let default = block.body.get_attribute("default").and_then(|attribute| {
                let span = span_of(&attribute.value, &declared.span);
                match hcl::Expression::from(attribute.value.clone()).evaluate(&Context::new()) {
                    Ok(value) => match conform(value, &ty) {
                        Ok(value) => Some(value),
                        Err(why) => {
                            self.error(
                                file,
                                span,
                                "Invalid default value for variable",
                                format!("The default of variable {name:?} does not fit its type: {why}."),
                            );
                            None
                        }
                    },
                    Err(_) => {
                        self.error(
                            file,
                            span,
                            "Invalid default value for variable",
                            "A variable's default must be a literal value; it cannot read other variables, locals \
                             or engines.",
                        );
                        None
                    }
                }
            });
            let from_flag = self.options.vars.iter().rev().find(|(key, _)| key == &name);
            let from_env = self
                .options
                .env_vars
                .iter()
                .rev()
                .find(|(key, _)| key == &name);
            let (raw, source) = match (from_flag, from_env) {
                (Some((_, raw)), _) => (Some(raw), ValueSource::Flag),
                (None, Some((_, raw))) => (Some(raw), ValueSource::Environment),
                (None, None) => (None, ValueSource::Default),
            };
            let value = match raw {
                Some(raw) => match parse_cli_value(raw, &ty) {
                    Ok(value) => Some(value),
                    Err(why) => {
                        let origin = match source {
                            ValueSource::Flag => format!("--var {name}=…"),
                            _ => format!("KIP_VAR_{name}"),
                        };
                        self.error(
                            file,
                            declared.span.clone(),
                            "Invalid value for variable",
                            format!(
                                "The value given by {origin} does not fit the type {ty}: {why}."
                            ),
                        );
                        None
                    }
                },
                None => {
                    if default.is_none() && block.body.get_attribute("default").is_none() {
                        self.error(
                            file,
                            declared.span.clone(),
                            "No value for required variable",
                            format!(
                                "Variable {name:?} has no default. Set it with --var {name}=VALUE or the \
                                 environment variable KIP_VAR_{name}, or give it a default."
                            ),
                        );
                    }
                    default
                }
            };
            let Some(value) = value else { continue };
            self.context_values.vars.insert(name.clone(), value.clone());
            variables.push(Variable {
                name,
                ty,
                description,
                sensitive,
                value,
                source,
                declared,
            });
        }
        for (name, _) in &self.options.vars {
            if !seen.contains_key(name) {
                let hint = match did_you_mean(name, seen.keys().map(String::as_str)) {
                    Some(close) => format!(" Did you mean {close:?}?"),
                    None => " Declare it with a variable block, or drop the flag.".to_owned(),
                };
                self.diagnostics.push(Diagnostic::error(
                    "Value for undeclared variable",
                    format!("--var sets {name:?}, but no variable {name:?} is declared.{hint}"),
                ));
            }
        }
        variables
    }
}

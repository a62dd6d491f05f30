//! Evaluating the parts of a configuration that are known before anything runs: variables, locals, `count`,
//! `for_each`, and any attribute whose expression reads only those.
//!
//! hcl-rs does the evaluation; this module declares what an expression may see (`var`, `local`, `count`, `each`,
//! a small set of pure functions) and converts between HCL values, variable types and the shapes the schema
//! validator checks.

use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};
use hcl::{Map, Value as HclValue};
use kip_schemas::Shape;

use super::VariableType;

/// The functions every kip expression can call. They are pure: the same arguments always give the same value.
pub fn declare_functions(context: &mut Context<'_>) {
    context.declare_func(
        "upper",
        FuncDef::builder().param(ParamType::String).build(upper),
    );
    context.declare_func(
        "lower",
        FuncDef::builder().param(ParamType::String).build(lower),
    );
    context.declare_func(
        "join",
        FuncDef::builder()
            .param(ParamType::String)
            .param(ParamType::array_of(ParamType::Any))
            .build(join),
    );
    context.declare_func(
        "length",
        FuncDef::builder().param(ParamType::Any).build(length),
    );
    context.declare_func(
        "tostring",
        FuncDef::builder().param(ParamType::Any).build(to_string),
    );
    context.declare_func(
        "tonumber",
        FuncDef::builder().param(ParamType::Any).build(to_number),
    );
    context.declare_func(
        "concat",
        FuncDef::builder()
            .variadic_param(ParamType::array_of(ParamType::Any))
            .build(concat),
    );
    context.declare_func(
        "merge",
        FuncDef::builder()
            .variadic_param(ParamType::object_of(ParamType::Any))
            .build(merge),
    );
}

/// The names of [`declare_functions`], for did-you-mean hints.
pub const FUNCTIONS: &[&str] = &[
    "upper", "lower", "join", "length", "tostring", "tonumber", "concat", "merge",
];

fn string_arg(args: &FuncArgs, index: usize) -> String {
    args[index].as_str().unwrap_or_default().to_owned()
}

fn upper(args: FuncArgs) -> Result<HclValue, String> {
    Ok(HclValue::String(string_arg(&args, 0).to_uppercase()))
}

fn lower(args: FuncArgs) -> Result<HclValue, String> {
    Ok(HclValue::String(string_arg(&args, 0).to_lowercase()))
}

fn join(args: FuncArgs) -> Result<HclValue, String> {
    let separator = string_arg(&args, 0);
    let items = args[1].as_array().map(Vec::as_slice).unwrap_or_default();
    let parts: Result<Vec<String>, String> = items
        .iter()
        .map(|item| scalar_to_string(item).ok_or_else(|| format!("join: cannot join {item}")))
        .collect();
    Ok(HclValue::String(parts?.join(&separator)))
}

fn length(args: FuncArgs) -> Result<HclValue, String> {
    let count = match &args[0] {
        HclValue::Array(items) => items.len(),
        HclValue::Object(map) => map.len(),
        HclValue::String(text) => text.chars().count(),
        other => return Err(format!("length: {other} has no length")),
    };
    Ok(HclValue::from(count as u64))
}

fn to_string(args: FuncArgs) -> Result<HclValue, String> {
    scalar_to_string(&args[0])
        .map(HclValue::String)
        .ok_or_else(|| format!("tostring: {} is not a string, number or bool", args[0]))
}

fn to_number(args: FuncArgs) -> Result<HclValue, String> {
    match &args[0] {
        HclValue::Number(number) => Ok(HclValue::Number(*number)),
        HclValue::String(text) => {
            parse_number(text).ok_or_else(|| format!("tonumber: {text:?} is not a number"))
        }
        other => Err(format!("tonumber: {other} is not a number")),
    }
}

fn concat(args: FuncArgs) -> Result<HclValue, String> {
    let mut all = Vec::new();
    for list in args.variadic_args() {
        all.extend(list.as_array().cloned().unwrap_or_default());
    }
    Ok(HclValue::Array(all))
}

fn merge(args: FuncArgs) -> Result<HclValue, String> {
    let mut merged = Map::new();
    for object in args.variadic_args() {
        if let Some(map) = object.as_object() {
            merged.extend(map.iter().map(|(key, value)| (key.clone(), value.clone())));
        }
    }
    Ok(HclValue::Object(merged))
}

pub fn scalar_to_string(value: &HclValue) -> Option<String> {
    match value {
        HclValue::String(text) => Some(text.clone()),
        HclValue::Number(number) => Some(number.to_string()),
        HclValue::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

pub fn parse_number(text: &str) -> Option<HclValue> {
    let text = text.trim();
    if let Ok(integer) = text.parse::<i64>() {
        return Some(HclValue::from(integer));
    }
    text.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(HclValue::from)
}

/// The shape the schema validator sees for a known value.
pub fn shape_of(value: &HclValue) -> Shape {
    match value {
        HclValue::Null => Shape::Null,
        HclValue::Bool(flag) => Shape::Bool(*flag),
        HclValue::Number(number) => Shape::Number(number.as_f64().unwrap_or(f64::NAN)),
        HclValue::String(text) => Shape::String(text.clone()),
        HclValue::Array(items) => Shape::List(items.iter().map(shape_of).collect()),
        HclValue::Object(map) => {
            Shape::Object(map.iter().map(|(k, v)| (k.clone(), shape_of(v))).collect())
        }
    }
}

/// Decodes a variable's `type = ...` expression: `string`, `number`, `bool`, `any`, `list(T)`, `map(T)`.
pub fn variable_type(expr: &hcl::edit::expr::Expression) -> Option<VariableType> {
    use hcl::edit::expr::Expression;
    match expr {
        Expression::Variable(name) => match name.as_str() {
            "string" => Some(VariableType::String),
            "number" => Some(VariableType::Number),
            "bool" => Some(VariableType::Bool),
            "any" => Some(VariableType::Any),
            _ => None,
        },
        Expression::FuncCall(call) if call.args.len() == 1 && call.name.namespace.is_empty() => {
            let inner = Box::new(variable_type(call.args.iter().next()?)?);
            match call.name.name.as_str() {
                "list" | "set" => Some(VariableType::List(inner)),
                "map" | "object" => Some(VariableType::Map(inner)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Converts `value` to `ty` the way a user expects (`"8080"` is a fine number), or says why it cannot.
pub fn conform(value: HclValue, ty: &VariableType) -> Result<HclValue, String> {
    match (ty, value) {
        (VariableType::Any, value) => Ok(value),
        (VariableType::String, value) => match scalar_to_string(&value) {
            Some(text) => Ok(HclValue::String(text)),
            None => Err(format!("expected a string, got {}", kind_of(&value))),
        },
        (VariableType::Number, HclValue::Number(number)) => Ok(HclValue::Number(number)),
        (VariableType::Number, HclValue::String(text)) => {
            parse_number(&text).ok_or_else(|| format!("expected a number, got {text:?}"))
        }
        (VariableType::Bool, HclValue::Bool(flag)) => Ok(HclValue::Bool(flag)),
        (VariableType::Bool, HclValue::String(text)) if text == "true" || text == "false" => {
            Ok(HclValue::Bool(text == "true"))
        }
        (VariableType::List(inner), HclValue::Array(items)) => items
            .into_iter()
            .map(|item| conform(item, inner))
            .collect::<Result<_, _>>()
            .map(HclValue::Array),
        (VariableType::Map(inner), HclValue::Object(map)) => map
            .into_iter()
            .map(|(key, item)| conform(item, inner).map(|item| (key, item)))
            .collect::<Result<Map<_, _>, _>>()
            .map(HclValue::Object),
        (ty, value) => Err(format!("expected {ty}, got {}", kind_of(&value))),
    }
}

pub fn kind_of(value: &HclValue) -> &'static str {
    match value {
        HclValue::Null => "null",
        HclValue::Bool(_) => "bool",
        HclValue::Number(_) => "number",
        HclValue::String(_) => "string",
        HclValue::Array(_) => "list",
        HclValue::Object(_) => "object",
    }
}

/// Reads a value given on the command line or in the environment: strings stay strings for string variables;
/// other types are parsed as an HCL expression (`--var 'ports=[1, 2]'`), as Terraform does.
pub fn parse_cli_value(raw: &str, ty: &VariableType) -> Result<HclValue, String> {
    if matches!(ty, VariableType::String) {
        return Ok(HclValue::String(raw.to_owned()));
    }
    let parsed = match hcl::edit::parser::parse_expr(raw) {
        Ok(expr) => {
            let expr = hcl::Expression::from(expr);
            let context = Context::new();
            hcl::eval::Evaluate::evaluate(&expr, &context)
                .unwrap_or_else(|_| HclValue::String(raw.to_owned()))
        }
        Err(_) => HclValue::String(raw.to_owned()),
    };
    conform(parsed, ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_conform_to_variable_types() {
        assert_eq!(
            conform(HclValue::from("8080"), &VariableType::Number),
            Ok(HclValue::from(8080))
        );
        assert_eq!(
            conform(HclValue::from(16), &VariableType::String),
            Ok(HclValue::from("16"))
        );
        assert!(
            conform(HclValue::from("x"), &VariableType::Number)
                .unwrap_err()
                .contains("expected a number")
        );
        assert_eq!(
            parse_cli_value(
                "[1, 2]",
                &VariableType::List(Box::new(VariableType::Number))
            ),
            Ok(HclValue::Array(vec![HclValue::from(1), HclValue::from(2)]))
        );
        assert_eq!(
            parse_cli_value("[1, 2]", &VariableType::String),
            Ok(HclValue::from("[1, 2]"))
        );
        assert_eq!(
            parse_cli_value("true", &VariableType::Bool),
            Ok(HclValue::Bool(true))
        );
    }

    #[test]
    fn type_expressions_decode() {
        let ty = |src: &str| variable_type(&hcl::edit::parser::parse_expr(src).unwrap());
        assert_eq!(ty("string"), Some(VariableType::String));
        assert_eq!(
            ty("map(list(number))"),
            Some(VariableType::Map(Box::new(VariableType::List(Box::new(
                VariableType::Number
            )))))
        );
        assert_eq!(ty("strin"), None);
    }
}

//! Templates, rendered by minijinja with strict undefined: a variable the
//! context lacks is an error that names it, never an empty string. Batch
//! keys and message templates render through it; a message template's
//! variables are checked against its JSON Schema here too.

use minijinja::{Environment, UndefinedBehavior};

/// The most work one render may do (minijinja's fuel: about one unit per
/// instruction): a template that loops without end stops with an error.
const FUEL: u64 = 100_000;

/// How deep a render may recurse (a macro counts about ten, a block or a
/// loop one): ample for a message, far from the stack's end.
const RECURSION: usize = 60;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    // A macro that calls itself stops with an error long before the
    // stack of the task rendering it runs out (minijinja's own cap, 500,
    // is more than a debug build's 2 MiB worker stack holds).
    env.set_recursion_limit(RECURSION);
    // Keeps the span of a failing expression, so an error can name it.
    env.set_debug(true);
    env
}

/// The engine's words, with the failing expression of `source` named
/// when the engine says where it is (`data.thread` is undefined).
fn described(source: &str, err: &minijinja::Error) -> String {
    let expression = err
        .range()
        .and_then(|r| source.get(r))
        .map(str::trim)
        .filter(|e| !e.is_empty());
    match (err.kind(), expression) {
        (minijinja::ErrorKind::UndefinedError, Some(e)) => format!("`{e}` is undefined"),
        (_, Some(e)) => format!("{} (at `{e}`)", err.detail().unwrap_or("cannot render")),
        _ => err.to_string(),
    }
}

/// Whether `source` is a template (syntax only): the engine's words when
/// it is not.
pub fn check_template(source: &str) -> Result<(), String> {
    environment()
        .template_from_str(source)
        .map(|_| ())
        .map_err(|e| described(source, &e))
}

/// `source` rendered with `context`, or why not (a missing variable is
/// named).
pub fn render(source: &str, context: &serde_json::Value) -> Result<String, String> {
    let env = environment();
    let template = env
        .template_from_str(source)
        .map_err(|e| described(source, &e))?;
    template
        .render(minijinja::value::Serde(context))
        .map_err(|e| described(source, &e))
}

/// A template's JSON Schema, compiled: what a send's variables are
/// checked against. References reach nothing outside the schema (no
/// network, no files: the crate's resolvers are not built in).
pub struct VariablesCheck(jsonschema::Validator);

impl VariablesCheck {
    /// `schema` compiled, or why it is not a schema (checked against its
    /// draft's meta-schema).
    pub fn compile(schema: &serde_json::Value) -> Result<Self, String> {
        jsonschema::validator_for(schema)
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// Every way `variables` fail the schema: where (a JSON pointer, `""`
    /// for the whole) and why.
    pub fn violations(&self, variables: &serde_json::Value) -> Vec<(String, String)> {
        self.0
            .iter_errors(variables)
            .map(|e| (e.instance_path().to_string(), e.to_string()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_missing_variable_is_an_error_that_names_it() {
        let ctx = json!({"recipient": "ann", "data": {"post": 42}});
        assert_eq!(
            render("{{ recipient }}/{{ data.post }}", &ctx).unwrap(),
            "ann/42"
        );
        let err = render("{{ recipient }}/{{ data.thread }}", &ctx).unwrap_err();
        assert_eq!(err, "`data.thread` is undefined");
        let endless = render("{% for i in range(1000000) %}{{ i }}{% endfor %}", &ctx);
        assert!(endless.is_err(), "a render is bounded");
        // Run on a thread with a small stack: recursion stops with an
        // error, never by overflowing it.
        let recursive = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                render(
                    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
                    &json!({}),
                )
            })
            .unwrap()
            .join()
            .expect("the render returns");
        assert!(recursive.is_err(), "{recursive:?}");
        assert!(check_template("{{ recipient").is_err());
        assert!(check_template("{{ recipient }}").is_ok());
    }

    #[test]
    fn variables_are_checked_against_the_schema_and_each_violation_says_where() {
        let check = VariablesCheck::compile(&json!({
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "order": {"type": "object",
                "properties": {"id": {"type": "integer"}}}}
        }))
        .unwrap();
        assert!(check.violations(&json!({"name": "Ada"})).is_empty());
        let found = check.violations(&json!({"order": {"id": "x"}}));
        let paths: Vec<_> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&""), "{found:?}");
        assert!(paths.contains(&"/order/id"), "{found:?}");
        assert!(
            found.iter().any(|(_, why)| why.contains("name")),
            "{found:?}"
        );
        assert!(VariablesCheck::compile(&json!({"type": "no such type"})).is_err());
        // A reference outside the schema is not fetched.
        assert!(VariablesCheck::compile(&json!({"$ref": "https://example.com/s.json"})).is_err());
    }
}

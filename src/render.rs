//! Templates, rendered by minijinja with strict undefined: a variable the
//! context lacks is an error that names it, never an empty string. Batch
//! keys render through it; message templates will too.

use minijinja::{Environment, UndefinedBehavior};

/// The most work one render may do (minijinja's fuel: about one unit per
/// instruction): a template that loops without end stops with an error.
const FUEL: u64 = 100_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
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
        assert!(check_template("{{ recipient").is_err());
        assert!(check_template("{{ recipient }}").is_ok());
    }
}

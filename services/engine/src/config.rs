//! `engine serve --config engine.toml` and `--print-config`.
//!
//! Generic over clap's definition of `serve`: every argument of the
//! command is a key of the file, named by its id (the flag with `_` for
//! `-`: `--http-addr` is `http_addr`), so a flag added to
//! [`crate::server::ServeConfig`] is a config key without further code.
//! Precedence: flag > environment variable > file > default. The file's
//! values are handed to clap as if they were flags, so they are checked by
//! the same parsers; a key that names no option is an error.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

/// The subcommand the file configures.
const SUBCOMMAND: &str = "serve";
/// Options of `serve` that are not configuration (they say where it is, or
/// what to do with it).
const NOT_KEYS: &[&str] = &["config", "print_config", "help", "version"];

/// The options a config file may hold: the ids of `serve`'s arguments.
pub fn keys<T: CommandFactory>() -> Vec<String> {
    serve_command::<T>()
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .filter(|id| !NOT_KEYS.contains(&id.as_str()))
        .collect()
}

fn serve_command<T: CommandFactory>() -> clap::Command {
    T::command()
        .find_subcommand(SUBCOMMAND)
        .cloned()
        .unwrap_or_else(|| clap::Command::new(SUBCOMMAND))
}

/// Parses the command line, with `serve --config FILE` merged in below the
/// flags and environment variables. Returns the matches too, for
/// [`effective`].
pub fn parse<T: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
) -> Result<(T, ArgMatches), clap::Error> {
    let mut command = T::command();
    let matches = command.try_get_matches_from_mut(args.clone())?;
    let matches = match matches.subcommand() {
        Some((SUBCOMMAND, serve)) => match serve.get_one::<PathBuf>("config") {
            Some(path) => {
                let extra = file_args::<T>(path, serve).map_err(|message| {
                    command.error(clap::error::ErrorKind::InvalidValue, message)
                })?;
                let mut args = args;
                args.extend(extra);
                T::command().try_get_matches_from(args)?
            }
            None => matches,
        },
        _ => matches,
    };
    let parsed = T::from_arg_matches(&matches)?;
    Ok((parsed, matches))
}

/// The file's settings as flags, for the options that neither a flag nor
/// an environment variable set.
fn file_args<T: CommandFactory>(
    path: &PathBuf,
    serve: &ArgMatches,
) -> Result<Vec<OsString>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("--config {}: {e}", path.display()))?;
    let command = serve_command::<T>();
    let mut args = Vec::new();
    for (key, value) in &table {
        let id = key.replace('-', "_");
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id() == id.as_str() && !NOT_KEYS.contains(&id.as_str()))
            .ok_or_else(|| {
                format!(
                    "--config {}: {key:?} is not an option of `engine serve` (see `engine serve --print-config`)",
                    path.display()
                )
            })?;
        if matches!(
            serve.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let Some(long) = arg.get_long() else {
            return Err(format!(
                "--config {}: {key:?} cannot be set from a file",
                path.display()
            ));
        };
        let values = match value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>(),
            other => scalar(other).map(|v| vec![v]),
        }
        .ok_or_else(|| {
            format!(
                "--config {}: {key:?} must be a string, number, boolean or a list of them",
                path.display()
            )
        })?;
        if !arg.get_action().takes_values() {
            // A switch (`demo = true`): given or not.
            match values.as_slice() {
                [v] if v == "true" => args.push(format!("--{long}").into()),
                [v] if v == "false" => {}
                _ => {
                    return Err(format!(
                        "--config {}: {key:?} must be true or false",
                        path.display()
                    ));
                }
            }
            continue;
        }
        for value in values {
            args.push(format!("--{long}={value}").into());
        }
    }
    Ok(args)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The effective configuration of `serve` as TOML: every option with its
/// help, flag and environment variable, its value from the matches (flag,
/// environment, file or default); options without a value commented out.
/// With only defaults this is the example file.
pub fn effective<T: CommandFactory>(matches: &ArgMatches) -> String {
    let Some((SUBCOMMAND, serve)) = matches.subcommand() else {
        return String::new();
    };
    let command = serve_command::<T>();
    let mut out = String::from(
        "# engine serve's configuration: `engine serve --config FILE`.\n\
         # Keys are the flags with `_` for `-`; a flag or an environment variable\n\
         # outranks the file. Written by `engine serve --print-config`.\n",
    );
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if NOT_KEYS.contains(&id) {
            continue;
        }
        out.push('\n');
        if let Some(help) = arg.get_long_help().or(arg.get_help()) {
            for line in help.to_string().lines() {
                for wrapped in wrap(line, 76) {
                    out.push_str(format!("# {wrapped}").trim_end());
                    out.push('\n');
                }
            }
        }
        let mut origin = Vec::new();
        if let Some(long) = arg.get_long() {
            origin.push(format!("--{long}"));
        }
        if let Some(env) = arg.get_env() {
            origin.push(format!("${}", env.to_string_lossy()));
        }
        if !origin.is_empty() {
            out.push_str(&format!("# ({})\n", origin.join(", ")));
        }
        let raw: Option<Vec<String>> = serve
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect());
        let list = matches!(arg.get_action(), clap::ArgAction::Append);
        let switch = !arg.get_action().takes_values();
        match raw {
            Some(values) if !(list && values.is_empty()) => {
                let rendered = if switch {
                    values.first().map_or("false".to_owned(), |v| {
                        if v == "true" {
                            "true".into()
                        } else {
                            "false".into()
                        }
                    })
                } else if list {
                    let items: Vec<String> = values.iter().map(|v| toml_scalar(v)).collect();
                    format!("[{}]", items.join(", "))
                } else {
                    values.first().map(|v| toml_scalar(v)).unwrap_or_default()
                };
                out.push_str(&format!("{id} = {rendered}\n"));
            }
            _ => {
                let placeholder = arg
                    .get_value_names()
                    .and_then(|names| names.first())
                    .map_or_else(|| id.to_uppercase(), |name| name.to_string());
                let example = toml_scalar(&placeholder);
                if list {
                    out.push_str(&format!("# {id} = [{example}]\n"));
                } else {
                    out.push_str(&format!("# {id} = {example}\n"));
                }
            }
        }
    }
    out
}

/// A whole number as a TOML integer, anything else as a string.
fn toml_scalar(value: &str) -> String {
    match value.parse::<i64>() {
        Ok(n) if n.to_string() == value => n.to_string(),
        _ => toml::Value::String(value.to_owned()).to_string(),
    }
}

/// `line` cut at spaces into lines of at most `width` characters (a longer
/// word stays whole).
fn wrap(line: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in line.split(' ') {
        let current = lines.last_mut().expect("never empty");
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_owned());
        } else {
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_keeps_every_word() {
        let line = "a long line of words that goes on past the width of the comment block for sure";
        let wrapped = wrap(line, 20);
        assert!(wrapped.iter().all(|l| l.len() <= 20));
        assert_eq!(wrapped.join(" "), line);
    }

    #[test]
    fn numbers_are_integers_and_the_rest_strings() {
        assert_eq!(toml_scalar("64"), "64");
        assert_eq!(toml_scalar("10s"), "\"10s\"");
        assert_eq!(toml_scalar("007"), "\"007\"");
        let quoted = toml_scalar("a\"b\\c");
        let table: toml::Table = format!("x = {quoted}").parse().unwrap();
        assert_eq!(table["x"].as_str(), Some("a\"b\\c"));
    }
}

//! Scopes (`ACTION:PATTERN` or `admin`) and what a holder of some may do.

use std::fmt;
use std::str::FromStr;

use crate::model::SensorPattern;

/// What a request does to a sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Sensor list and info, chart series, live SSE, gRPC `Scan`,
    /// `ListSensors`, `Subscribe`.
    Read,
    /// The export endpoint; implies [`Action::Read`] on the same pattern.
    Export,
    /// HTTP import, gRPC `Write`.
    Write,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Export => "export",
            Action::Write => "write",
        }
    }
}

/// One right of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything, tokens and the audit trail included.
    Admin,
    /// `ACTION:PATTERN`: one action on the sensors the pattern matches.
    Sensors {
        action: Action,
        pattern: SensorPattern,
    },
}

/// Why a string is not a [`Scope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid scope {text:?}: {why} (expected admin, read:PATTERN, export:PATTERN or write:PATTERN)"
)]
pub struct InvalidScope {
    text: String,
    why: String,
}

impl FromStr for Scope {
    type Err = InvalidScope;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |why: String| InvalidScope {
            text: text.to_owned(),
            why,
        };
        if text == "admin" {
            return Ok(Scope::Admin);
        }
        let (action, pattern) = text
            .split_once(':')
            .ok_or_else(|| invalid("no `:`".into()))?;
        let action = match action {
            "read" => Action::Read,
            "export" => Action::Export,
            "write" => Action::Write,
            other => return Err(invalid(format!("unknown action {other:?}"))),
        };
        let pattern = SensorPattern::new(pattern).map_err(|e| invalid(e.to_string()))?;
        Ok(Scope::Sensors { action, pattern })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Sensors { action, pattern } => write!(f, "{}:{}", action.as_str(), pattern),
        }
    }
}

/// Whether `scopes` allow `action` on `sensor_id`.
pub fn allows(scopes: &[Scope], action: Action, sensor_id: &str) -> bool {
    scopes.iter().any(|scope| match scope {
        Scope::Admin => true,
        Scope::Sensors {
            action: granted,
            pattern,
        } => {
            let covers =
                *granted == action || (action == Action::Read && *granted == Action::Export);
            covers && pattern.matches(sensor_id)
        }
    })
}

/// Whether `scopes` allow `action` on some sensor at all (the dashboard
/// hides "Export CSV" without it).
pub fn allows_any(scopes: &[Scope], action: Action) -> bool {
    scopes.iter().any(|scope| match scope {
        Scope::Admin => true,
        Scope::Sensors {
            action: granted, ..
        } => *granted == action || (action == Action::Read && *granted == Action::Export),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[&str]) -> Vec<Scope> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn parses_and_prints() {
        for text in ["admin", "read:**", "export:plant/line-1/*", "write:a/b"] {
            assert_eq!(text.parse::<Scope>().unwrap().to_string(), text);
        }
        for bad in ["", "read", "delete:x", "read:", "read:a***", "admin:x"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
    }

    #[test]
    fn export_implies_read_and_patterns_bind() {
        let s = scopes(&["export:plant/line-1/*", "write:lab/**"]);
        assert!(allows(&s, Action::Read, "plant/line-1/p"));
        assert!(allows(&s, Action::Export, "plant/line-1/p"));
        assert!(!allows(&s, Action::Write, "plant/line-1/p"));
        assert!(!allows(&s, Action::Read, "plant/line-1/a/b"));
        assert!(allows(&s, Action::Write, "lab/x/y"));
        assert!(!allows(&s, Action::Read, "lab/x/y"));
        let r = scopes(&["read:**"]);
        assert!(allows(&r, Action::Read, "any/thing"));
        assert!(!allows(&r, Action::Export, "any/thing"));
        assert!(allows(&scopes(&["admin"]), Action::Write, "x"));
        assert!(allows_any(&s, Action::Export) && !allows_any(&r, Action::Write));
    }
}

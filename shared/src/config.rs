//! Configuration checks that report every bad key at once.
//!
//! Binaries take flags with `FERRY_*` environment fallbacks (clap), then validate the raw values
//! here so that one run names every problem instead of the first.

use std::fmt;
use std::net::SocketAddr;

/// Collected configuration problems.
#[derive(Debug, Default)]
pub struct ConfigCheck {
    problems: Vec<String>,
}

impl ConfigCheck {
    /// Records a problem with `key` (the environment variable name).
    pub fn problem(&mut self, key: &str, message: impl fmt::Display) {
        self.problems.push(format!("{key}: {message}"));
    }

    /// Checks that `value` is set and a URL with one of `schemes`.
    pub fn url(&mut self, key: &str, value: Option<&str>, schemes: &[&str]) -> Option<String> {
        let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
            self.problem(key, "is required");
            return None;
        };
        match url::Url::parse(value) {
            Ok(url) if schemes.contains(&url.scheme()) => Some(value.to_owned()),
            Ok(url) => {
                self.problem(
                    key,
                    format!("scheme {:?} is not one of {schemes:?}", url.scheme()),
                );
                None
            }
            Err(err) => {
                self.problem(key, format!("{value:?} is not a URL ({err})"));
                None
            }
        }
    }

    /// Checks that `value` is a `host:port` socket address.
    pub fn socket_addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(addr) => Some(addr),
            Err(err) => {
                self.problem(
                    key,
                    format!("{value:?} is not an address like 127.0.0.1:50051 ({err})"),
                );
                None
            }
        }
    }

    /// Like [`Self::socket_addr`], where `off` means none.
    pub fn socket_addr_or_off(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.trim() {
            "off" => None,
            addr => self.socket_addr(key, addr),
        }
    }

    /// Checks that `value` is a whole number greater than 0.
    pub fn positive(&mut self, key: &str, value: &str) -> Option<u64> {
        match value.trim().parse::<u64>() {
            Ok(number) if number > 0 => Some(number),
            _ => {
                self.problem(
                    key,
                    format!("{value:?} is not a whole number greater than 0"),
                );
                None
            }
        }
    }

    /// Checks that `value` is a whole number (0 allowed).
    pub fn whole(&mut self, key: &str, value: &str) -> Option<u64> {
        match value.trim().parse::<u64>() {
            Ok(number) => Some(number),
            Err(_) => {
                self.problem(key, format!("{value:?} is not a whole number"));
                None
            }
        }
    }

    /// Finishes the check: `Err` lists every problem, one per line.
    pub fn finish(self) -> Result<(), String> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "invalid configuration:\n  {}",
                self.problems.join("\n  ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported() {
        let mut check = ConfigCheck::default();
        assert!(
            check
                .url("FERRY_DATABASE_URL", None, &["postgres"])
                .is_none()
        );
        assert!(
            check
                .url("FERRY_REDIS_URL", Some("http://x"), &["redis"])
                .is_none()
        );
        assert!(check.socket_addr("FERRY_LISTEN_ADDR", "nowhere").is_none());
        assert!(check.positive("FERRY_CAPACITY", "0").is_none());
        assert_eq!(check.positive("FERRY_OK", "7"), Some(7));
        assert_eq!(
            check
                .url("FERRY_STORAGE_URL", Some("file:///tmp"), &["file"])
                .as_deref(),
            Some("file:///tmp")
        );
        let message = check.finish().unwrap_err();
        for key in [
            "FERRY_DATABASE_URL",
            "FERRY_REDIS_URL",
            "FERRY_LISTEN_ADDR",
            "FERRY_CAPACITY",
        ] {
            assert!(message.contains(key), "{message}");
        }
        assert!(!message.contains("FERRY_STORAGE_URL"));
    }
}

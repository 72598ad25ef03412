//! Strict reading of JSON objects: unknown fields are errors, and messages name fields by
//! their path (`request.url`). A null value counts as absent.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::retry::parse_duration;

/// The fields of one JSON object.
pub(super) struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    /// Reads `map`, found at `path` ("" for the top), whose keys must all be in `allowed`.
    pub(super) fn new(
        map: &'a Map<String, Value>,
        path: &str,
        allowed: &[&str],
    ) -> Result<Self, String> {
        let f = Self {
            map,
            path: path.to_owned(),
        };
        match map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(format!("unknown field {:?}", f.name(k))),
            None => Ok(f),
        }
    }

    /// The path of a field, for messages.
    pub(super) fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of a field; None when absent or null.
    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The value of a required field.
    pub(super) fn required(&self, key: &str) -> Result<&'a Value, String> {
        self.get(key)
            .ok_or_else(|| format!("missing field {:?}", self.name(key)))
    }

    /// An optional string field.
    pub(super) fn str(&self, key: &str) -> Result<Option<&'a str>, String> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.expected(key, "a string")))
            .transpose()
    }

    /// A required string field.
    pub(super) fn req_str(&self, key: &str) -> Result<&'a str, String> {
        self.required(key)?;
        self.str(key).map(Option::unwrap_or_default)
    }

    /// An optional nested object, whose keys must be in `allowed`.
    pub(super) fn object(&self, key: &str, allowed: &[&str]) -> Result<Option<Self>, String> {
        self.get(key)
            .map(|v| {
                let map = v
                    .as_object()
                    .ok_or_else(|| self.expected(key, "an object"))?;
                Fields::new(map, &self.name(key), allowed)
            })
            .transpose()
    }

    /// An optional duration field, such as `"10s"`.
    pub(super) fn duration(&self, key: &str) -> Result<Option<Duration>, String> {
        self.str(key)
            .map_err(|_| self.expected(key, "a duration such as \"10s\""))?
            .map(|s| parse_duration(s).map_err(|e| format!("{e} in {}", self.name(key))))
            .transpose()
    }

    /// An optional duration field that must be greater than zero.
    pub(super) fn positive_duration(&self, key: &str) -> Result<Option<Duration>, String> {
        match self.duration(key)? {
            Some(d) if d.is_zero() => Err(format!("{} must be greater than 0", self.name(key))),
            d => Ok(d),
        }
    }

    /// An optional non-negative integer field.
    pub(super) fn uint(&self, key: &str) -> Result<Option<u64>, String> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.expected(key, "a whole number"))
            })
            .transpose()
    }

    /// An optional number field.
    pub(super) fn number(&self, key: &str) -> Result<Option<f64>, String> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.expected(key, "a number")))
            .transpose()
    }

    /// An optional list of strings (empty when absent).
    pub(super) fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        let Some(v) = self.get(key) else {
            return Ok(Vec::new());
        };
        v.as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_owned)).collect())
            .ok_or_else(|| self.expected(key, "a list of strings"))
    }

    /// An optional object of strings (empty when absent).
    pub(super) fn string_map(&self, key: &str) -> Result<BTreeMap<String, String>, String> {
        let Some(v) = self.get(key) else {
            return Ok(BTreeMap::new());
        };
        v.as_object()
            .and_then(|m| {
                m.iter()
                    .map(|(k, s)| Some((k.clone(), s.as_str()?.to_owned())))
                    .collect()
            })
            .ok_or_else(|| self.expected(key, "an object of strings"))
    }

    /// One of `choices` (the first is the default).
    pub(super) fn choice<T: Copy>(&self, key: &str, choices: &[(&str, T)]) -> Result<T, String> {
        let Some(s) = self.str(key)? else {
            return Ok(choices[0].1);
        };
        choices
            .iter()
            .find(|(name, _)| *name == s)
            .map(|&(_, t)| t)
            .ok_or_else(|| {
                let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
                format!(
                    "{} must be {}, not {s:?}",
                    self.name(key),
                    names.join(" or ")
                )
            })
    }

    fn expected(&self, key: &str, what: &str) -> String {
        format!("{} must be {what}", self.name(key))
    }
}

/// true if `s` has 1 to `max` characters, each ASCII alphanumeric or in `extra`.
pub(super) fn is_name(s: &str, max: usize, extra: &[u8]) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

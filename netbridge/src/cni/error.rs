//! The CNI error result: `{cniVersion, code, msg, details}` on stdout and a
//! non-zero exit (SPEC.md, section 5 "Error").
use serde_json::Value;

use super::version::CniVersion;

/// Error codes. 0-99 are the spec's well-known codes, 100+ are netbridge's.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration (message names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (message names them).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure, e.g. reading stdin.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (JSON, versions).
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// CNI_NETNS is invalid (not a namespace, or the plugin's own).
    pub const INVALID_NETNS: u32 = 8;
    /// Transient condition: retry later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing containers may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// netbridge: no free address left in a built-in IPAM range set.
    pub const IPAM_EXHAUSTED: u32 = 100;
    /// netbridge: ADD for a (container id, ifname) that is already attached.
    pub const ALREADY_ATTACHED: u32 = 101;
    /// netbridge: the netbridge state (journal, leases, lock) failed.
    pub const STATE_FAILURE: u32 = 102;
    /// Anything else; the code the Go reference plugins use for plain errors.
    pub const INTERNAL: u32 = 999;
}

/// A CNI error: what the plugin prints before exiting non-zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    /// Longer description; omitted from the JSON when empty.
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Code 7 with the `key = value: problem` message used for every config error.
    pub fn invalid(key: &str, value: &Value, problem: impl std::fmt::Display) -> Self {
        Self::new(code::INVALID_CONFIG, format!("{key} = {value}: {problem}"))
    }

    /// Code 2: a key (or value) netbridge-cni does not support.
    pub fn unsupported(key: &str, value: &Value, problem: impl std::fmt::Display) -> Self {
        Self::new(
            code::UNSUPPORTED_FIELD,
            format!("{key} = {value}: {problem}"),
        )
    }

    /// Prefixes the message, keeping code and details (for delegated errors).
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// The spec's error object in the given protocol version, keys in the
    /// spec's order.
    pub fn versioned(&self, version: CniVersion) -> impl serde::Serialize + '_ {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'static str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        Out {
            cni_version: version.as_str(),
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        }
    }

    pub fn to_json(&self, version: CniVersion) -> Value {
        serde_json::to_value(self.versioned(version)).expect("error serializes")
    }

    /// Parses an error object printed by another plugin (a delegate). The Go
    /// reference plugins of Debian 12 omit `cniVersion`; it is not required.
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Some(CniError {
            code,
            msg: text("msg"),
            details: text("details"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_keys_and_omits_empty_details() {
        let e = CniError::new(code::INVALID_CONFIG, "Invalid Configuration")
            .with_details("Network 192.168.0.0/31 too small to allocate from.");
        let text = serde_json::to_string(&e.versioned(CniVersion::V1_1_0)).unwrap();
        assert_eq!(
            text,
            r#"{"cniVersion":"1.1.0","code":7,"msg":"Invalid Configuration","details":"Network 192.168.0.0/31 too small to allocate from."}"#
        );
        let short = CniError::new(code::INVALID_ENV, "x").to_json(CniVersion::V0_4_0);
        assert_eq!(
            short,
            serde_json::json!({"cniVersion": "0.4.0", "code": 4, "msg": "x"})
        );
        assert_eq!(
            e.to_string(),
            "CNI error 7: Invalid Configuration (Network 192.168.0.0/31 too small to allocate from.)"
        );
    }

    #[test]
    fn reads_the_reference_plugins_errors() {
        for (text, want) in [
            (
                include_str!("testdata/ref-bridge-badjson.error.json"),
                code::DECODING_FAILURE,
            ),
            (
                include_str!("testdata/ref-bridge-1.1.0-ADD.error.json"),
                code::INCOMPATIBLE_VERSION,
            ),
            (
                include_str!("testdata/ref-bridge-GC.error.json"),
                code::INVALID_ENV,
            ),
            (
                include_str!("testdata/ref-bridge-0.4.0-ADD-again.error.json"),
                code::INTERNAL,
            ),
        ] {
            let e = CniError::from_json(text.as_bytes()).unwrap();
            assert_eq!(e.code, want, "{text}");
            assert!(!e.msg.is_empty());
        }
        let e = CniError::from_json(include_bytes!("testdata/ref-bridge-GC.error.json")).unwrap();
        assert_eq!(e.msg, "unknown CNI_COMMAND: GC");
        let e = CniError::from_json(include_bytes!("testdata/ref-bridge-1.1.0-ADD.error.json"))
            .unwrap();
        assert!(e.details.starts_with("config is"));
        assert_eq!(CniError::from_json(b"not json"), None);
        assert_eq!(CniError::from_json(br#"{"msg":"no code"}"#), None);
    }

    #[test]
    fn context_keeps_code_and_details() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "busy")
            .with_details("d")
            .context("ipam plugin host-local");
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert_eq!(e.msg, "ipam plugin host-local: busy");
        assert_eq!(e.details, "d");
    }
}

//! CNI specification versions this plugin speaks, and the VERSION verb.
use serde_json::{Value, json};

use super::error::{CniError, code};

/// A supported CNI specification version. Ordered oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// What VERSION lists, oldest first.
    pub const SUPPORTED: [CniVersion; 3] =
        [CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0];
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    pub fn from_str_opt(s: &str) -> Option<Self> {
        Self::SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    /// Parses the `cniVersion` of a configuration: code 1 with the reference
    /// plugins' message and details when it is not one we speak. A missing
    /// version means 0.1.0 (libcni's rule), which is not supported.
    pub fn parse(s: Option<&str>) -> Result<Self, CniError> {
        let s = s.unwrap_or("");
        Self::from_str_opt(s).ok_or_else(|| {
            let listed: Vec<String> = Self::SUPPORTED
                .iter()
                .map(|v| format!("{:?}", v.as_str()))
                .collect();
            let shown = if s.is_empty() { "0.1.0 (missing)" } else { s };
            CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(
                format!(
                    "config is {shown:?}, plugin supports [{}]",
                    listed.join(" ")
                ),
            )
        })
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn has_gc_and_status(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// 0.4.0 results carry `version` ("4"/"6") on each IP; 1.0.0 dropped it.
    pub fn ip_has_version_field(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// 1.1.0 added interface `mtu`/`socketPath`/`pciID` and route
    /// `mtu`/`advmss`/`priority`/`table`/`scope`.
    pub fn has_1_1_fields(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

impl std::fmt::Display for CniVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The VERSION reply. `cniVersion` echoes the request's (the spec's rule; the
/// Go skel prints its own instead), or the latest when stdin has none.
pub fn version_reply(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| CniVersion::LATEST.as_str().to_string());
    let supported: Vec<&str> = CniVersion::SUPPORTED.iter().map(|v| v.as_str()).collect();
    json!({ "cniVersion": asked, "supportedVersions": supported })
}

/// Highest version both `ours` and a peer's `supportedVersions` list, not
/// above `wanted` (delegation to an older IPAM plugin).
pub fn negotiate(wanted: CniVersion, peer_supported: &[String]) -> Option<CniVersion> {
    CniVersion::SUPPORTED
        .into_iter()
        .rev()
        .filter(|v| *v <= wanted)
        .find(|v| peer_supported.iter().any(|p| p == v.as_str()))
}

/// Parses a VERSION reply of another plugin: its `supportedVersions`.
pub fn parse_version_reply(stdout: &[u8]) -> Result<Vec<String>, CniError> {
    let v: Value = serde_json::from_slice(stdout).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("decoding version info: {e}"),
        )
    })?;
    let list = v
        .get("supportedVersions")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            CniError::new(
                code::DECODING_FAILURE,
                "decoding version info: missing field supportedVersions",
            )
        })?;
    Ok(list
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_supported_and_rejects_others_like_the_reference() {
        assert_eq!(CniVersion::parse(Some("0.4.0")), Ok(CniVersion::V0_4_0));
        assert_eq!(CniVersion::parse(Some("1.0.0")), Ok(CniVersion::V1_0_0));
        assert_eq!(CniVersion::parse(Some("1.1.0")), Ok(CniVersion::V1_1_0));
        for bad in [Some("0.3.1"), Some("2.0.0"), Some(""), None, Some("1.1")] {
            let e = CniVersion::parse(bad).unwrap_err();
            assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "{bad:?}");
            assert_eq!(e.msg, "incompatible CNI versions");
            assert!(
                e.details
                    .ends_with(r#"plugin supports ["0.4.0" "1.0.0" "1.1.0"]"#),
                "{}",
                e.details
            );
        }
        // Same shape as the reference bridge's own reply (captured fixture).
        let reference: Value =
            serde_json::from_str(include_str!("testdata/ref-bridge-1.1.0-ADD.error.json")).unwrap();
        assert_eq!(reference["msg"], "incompatible CNI versions");
        assert!(
            reference["details"]
                .as_str()
                .unwrap()
                .starts_with(r#"config is "1.1.0", plugin supports ["#)
        );
        let ours = CniVersion::parse(Some("0.3.1")).unwrap_err();
        assert!(
            ours.details
                .starts_with(r#"config is "0.3.1", plugin supports ["#)
        );
    }

    #[test]
    fn ordering_and_features() {
        assert!(CniVersion::V0_4_0 < CniVersion::V1_0_0);
        assert!(CniVersion::V1_0_0 < CniVersion::V1_1_0);
        assert!(!CniVersion::V1_0_0.has_gc_and_status());
        assert!(CniVersion::V1_1_0.has_gc_and_status());
        assert!(CniVersion::V0_4_0.ip_has_version_field());
        assert!(!CniVersion::V1_0_0.ip_has_version_field());
    }

    #[test]
    fn version_reply_echoes_request_and_lists_three() {
        let podman = include_bytes!("testdata/podman-VERSION.stdin.json");
        let r = version_reply(podman);
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        assert_eq!(version_reply(b"")["cniVersion"], "1.1.0");
        assert_eq!(
            version_reply(br#"{"cniVersion":"0.4.0"}"#)["cniVersion"],
            "0.4.0"
        );
    }

    #[test]
    fn negotiates_down_to_what_an_old_delegate_speaks() {
        // Debian 12's host-local (plugins 1.1.1) stops at 1.0.0.
        let debian: Vec<String> = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            negotiate(CniVersion::V1_1_0, &debian),
            Some(CniVersion::V1_0_0)
        );
        assert_eq!(
            negotiate(CniVersion::V0_4_0, &debian),
            Some(CniVersion::V0_4_0)
        );
        assert_eq!(negotiate(CniVersion::V1_1_0, &["0.3.1".into()]), None);
        let reply = br#"{"cniVersion":"1.0.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0"]}"#;
        assert_eq!(parse_version_reply(reply).unwrap(), debian);
        assert_eq!(
            parse_version_reply(b"{}").unwrap_err().code,
            code::DECODING_FAILURE
        );
    }
}

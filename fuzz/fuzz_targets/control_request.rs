//! The control directory's request documents (src/control/request.rs): `Request` (serde, tag
//! "op") as written to `.kmsfs/request`, and the documents other control files take: the rules
//! list (`RuleDoc`), a grant (`GrantSpec`), a simulated caller (`Simulated`).
//!
//! - parsing never panics;
//! - an accepted document round-trips: serialize → parse gives an equal value;
//! - the serialized request carries its `op` tag = `name()`; `action()`, `key_ref()` and
//!   `summary()` never panic, and the summary never contains imported key material;
//! - the policy text of a `PutKeyPolicy` goes through `Policy::parse` without panicking.
#![no_main]

use kmsfs::control::request::{GrantSpec, Request, RuleDoc, Simulated};
use kmsfs::keymgr::policy::{ACTIONS, Policy};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let v: T = serde_json::from_slice(data).ok()?;
    let s = serde_json::to_vec(&v).unwrap();
    let again: T = serde_json::from_slice(&s).unwrap_or_else(|e| {
        panic!(
            "serialized value does not parse: {e}: {}",
            String::from_utf8_lossy(&s)
        )
    });
    assert_eq!(again, v, "round trip changed the value");
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    if let Some(r) = round_trip::<Request>(data) {
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["op"].as_str(), Some(r.name()));
        assert!(ACTIONS.contains(&r.action()));
        let _ = r.key_ref();
        let summary = r.summary();
        match &r {
            Request::ImportKeyMaterial { material, .. } if material.0.len() >= 8 => {
                assert!(
                    !summary.contains(material.0.as_str()),
                    "summary shows key material"
                );
            }
            Request::PutKeyPolicy { policy, .. } => {
                let _ = Policy::parse(policy);
            }
            _ => {}
        }
    }
    let _ = round_trip::<Vec<RuleDoc>>(data);
    let _ = round_trip::<GrantSpec>(data);
    let _ = round_trip::<Simulated>(data);
});

//! Who may do what: each device's account patterns and whether it may create credit. The
//! open default (no devices configured) lets any device do anything.

use std::collections::HashMap;

/// What one device may do.
#[derive(Debug, Clone, Default)]
pub struct DeviceRights {
    /// Account-name patterns it may debit, open, close and read.
    pub may_debit: Vec<String>,
    /// May open issuance accounts and grant overdraft limits.
    pub may_issue: bool,
}

/// The principal of commands an operator sends over zenoh (`ledgerctl account open`):
/// every right a device can have. No device can take this name (device ids have no `~`).
pub const OPERATOR: &str = "~operator";

/// The rights of each device. `None`: the open default, any device may do anything.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    devices: Option<HashMap<String, DeviceRights>>,
}

impl Permissions {
    pub fn open() -> Permissions {
        Permissions { devices: None }
    }

    pub fn restricted(devices: HashMap<String, DeviceRights>) -> Permissions {
        Permissions { devices: Some(devices) }
    }

    pub fn allows(&self, device: Option<&str>, account: &str) -> bool {
        let Some(devices) = &self.devices else { return true };
        if device == Some(OPERATOR) {
            return true;
        }
        let Some(rights) = device.and_then(|d| devices.get(d)) else { return false };
        rights.may_debit.iter().any(|p| glob_match(p, account))
    }

    pub fn may_issue(&self, device: Option<&str>) -> bool {
        let Some(devices) = &self.devices else { return true };
        if device == Some(OPERATOR) {
            return true;
        }
        device.and_then(|d| devices.get(d)).is_some_and(|r| r.may_issue)
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

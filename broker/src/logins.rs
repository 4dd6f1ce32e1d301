//! Device logins: argon2 password checks on a few threads of their own, the passwords
//! already verified, and back-off after failures, per device id and per source address.
//!
//! Owns what a stranger can make the broker spend on logins; every table here is bounded
//! (by the device list, or by `MAX_TRACKED_ADDRESSES`). It must not decide topics or know
//! ledger semantics.

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Threads that check passwords (argon2), for all listeners together.
pub const PASSWORD_CHECKERS: usize = 2;
/// Logins waiting for a password check; beyond this a login is refused at once (the device
/// tries again), so a flood of logins costs neither memory nor a growing queue.
pub const PASSWORD_QUEUE: usize = 64;

/// Wrong passwords a device id may have in a row before its logins wait.
pub const FREE_FAILURES: u32 = 3;
/// Failed logins (any reason) a source address may have before its logins wait: more than
/// a device's, since many devices may share an address behind NAT.
pub const FREE_ADDRESS_FAILURES: u32 = 10;
/// The first wait after the free failures; it doubles with each further failure, up to
/// `MAX_BACKOFF`.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Failures older than this are forgotten, so that a few typos a day never add up.
pub const FORGET_FAILURES_AFTER: Duration = Duration::from_secs(600);
/// Source addresses whose failures are tracked at once. When full, entries that are not
/// backing off make room; if every one is, a new address is not tracked (the per-device
/// back-off and the bounded check queue still hold).
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;
/// Logins refused because their device id or source address was backing off, since start.
pub static LOGINS_BACKED_OFF: AtomicU64 = AtomicU64::new(0);

type Check = (Arc<Credentials>, String, String, IpAddr, tokio::sync::oneshot::Sender<bool>);

/// Argon2 takes tens of milliseconds and 19 MiB by design. It runs on a few threads of its
/// own, so that at most `PASSWORD_CHECKERS` checks (and their memory) exist at once, and not
/// on a listener's single-threaded runtime, which it would stall.
pub(crate) struct PasswordChecker {
    queue: flume::Sender<Check>,
}

impl PasswordChecker {
    pub(crate) fn start() -> PasswordChecker {
        let (queue, checks) = flume::bounded::<Check>(PASSWORD_QUEUE);
        for i in 0..PASSWORD_CHECKERS {
            let checks = checks.clone();
            std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    for (credentials, username, password, peer, answer) in checks.iter() {
                        let _ = answer.send(credentials.check_password(&username, &password, peer, &mut memory));
                    }
                })
                .expect("password checker thread");
        }
        PasswordChecker { queue }
    }

    /// Whether `password` is `username`'s; false at once when too many logins wait.
    async fn check(&self, credentials: Arc<Credentials>, username: String, password: String, peer: IpAddr) -> bool {
        let (answer, answered) = tokio::sync::oneshot::channel();
        if self.queue.try_send((credentials, username.clone(), password, peer, answer)).is_err() {
            tracing::warn!(username, %peer, "login refused: too many logins wait for a password check");
            return false;
        }
        answered.await.unwrap_or(false)
    }
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    in_a_row: u32,
    last: Instant,
    until: Instant,
}

impl Backoff {
    /// The wait after `in_a_row` failures when the first `free` cost nothing.
    fn wait(in_a_row: u32, free: u32) -> Duration {
        if in_a_row < free {
            return Duration::ZERO;
        }
        let doublings = (in_a_row - free).min(16);
        FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF)
    }

    /// The entry after one more failure at `now` (`previous` forgotten when old).
    fn after_failure(previous: Option<Backoff>, free: u32, now: Instant) -> Backoff {
        let previous = previous.filter(|b| now.duration_since(b.last) < FORGET_FAILURES_AFTER);
        let in_a_row = previous.map_or(0, |b| b.in_a_row).saturating_add(1);
        Backoff { in_a_row, last: now, until: now + Backoff::wait(in_a_row, free) }
    }

    fn active(&self, now: Instant) -> bool {
        now < self.until
    }
}

/// Device password hashes, the passwords already verified (as BLAKE3 digests, one per
/// configured device, never for a failed login) so that a reconnecting device does not pay
/// for argon2 again, and the failures that make logins wait.
pub(crate) struct Credentials {
    hashes: HashMap<String, String>,
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// Wrong passwords in a row per configured device (never for unknown names, so it is
    /// bounded by the device list).
    failures: Mutex<HashMap<String, Backoff>>,
    /// Failed logins per source address, at most `MAX_TRACKED_ADDRESSES`.
    addresses: Mutex<HashMap<IpAddr, Backoff>>,
    checker: PasswordChecker,
}

impl Credentials {
    pub(crate) fn new(hashes: HashMap<String, String>) -> Credentials {
        Credentials {
            hashes,
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
            checker: PasswordChecker::start(),
        }
    }

    /// A device is let in when its client id is its username and the password matches the
    /// configured hash. Binding the client id to the username keeps one device one identity.
    pub(crate) async fn login(self: Arc<Self>, client_id: String, username: String, password: String, peer: IpAddr) -> bool {
        if let Some(decided) = self.decide_cheaply(&client_id, &username, &password, peer) {
            return decided;
        }
        self.checker.check(self.clone(), username, password, peer).await
    }

    #[cfg(test)]
    fn authenticate(&self, client_id: &str, username: &str, password: &str, peer: IpAddr) -> bool {
        self.decide_cheaply(client_id, username, password, peer)
            .unwrap_or_else(|| self.check_password(username, password, peer, &mut Vec::new()))
    }

    /// The answer when it needs no argon2: a client id that is not the username, an unknown
    /// device, the password this device last logged in with, or a device id or address
    /// that is backing off. `None`: check the hash.
    fn decide_cheaply(&self, client_id: &str, username: &str, password: &str, peer: IpAddr) -> Option<bool> {
        if client_id != username {
            tracing::warn!(client_id, username, %peer, "login refused: client id must equal the username");
            self.address_failed(peer);
            return Some(false);
        }
        if !self.hashes.contains_key(username) {
            tracing::warn!(username, %peer, "login refused: unknown device");
            self.address_failed(peer);
            return Some(false);
        }
        let digest = *blake3::hash(password.as_bytes()).as_bytes();
        if self.verified.lock().expect("lock").get(username) == Some(&digest) {
            // The password this device last logged in with: no argon2, and no back-off, so
            // that strangers guessing cannot lock a known device out.
            return Some(true);
        }
        let now = Instant::now();
        let device_waits = self.failures.lock().expect("lock").get(username).is_some_and(|b| b.active(now));
        let address_waits = self.addresses.lock().expect("lock").get(&peer).is_some_and(|b| b.active(now));
        if device_waits || address_waits {
            LOGINS_BACKED_OFF.fetch_add(1, Ordering::Relaxed);
            let why = if device_waits { "device id" } else { "source address" };
            tracing::warn!(username, %peer, "login refused: too many failed logins for this {why}, backing off");
            return Some(false);
        }
        None
    }

    /// Checks the password against the device's argon2 hash; remembers it when it matches.
    fn check_password(&self, username: &str, password: &str, peer: IpAddr, memory: &mut Vec<Block>) -> bool {
        let Some(phc) = self.hashes.get(username) else { return false };
        let ok = verify_password_in(phc, password, memory);
        let mut failures = self.failures.lock().expect("lock");
        if ok {
            let digest = *blake3::hash(password.as_bytes()).as_bytes();
            self.verified.lock().expect("lock").insert(username.to_string(), digest);
            failures.remove(username);
        } else {
            let entry = Backoff::after_failure(failures.get(username).copied(), FREE_FAILURES, Instant::now());
            failures.insert(username.to_string(), entry);
            drop(failures);
            self.address_failed(peer);
            let wait_ms = entry.until.saturating_duration_since(entry.last).as_millis() as u64;
            tracing::warn!(username, %peer, in_a_row = entry.in_a_row, wait_ms, "login refused: wrong password");
        }
        ok
    }

    /// One more failed login from `peer`. A success does not clear it: one valid
    /// credential must not reset an address that guesses others.
    fn address_failed(&self, peer: IpAddr) {
        let now = Instant::now();
        let mut addresses = self.addresses.lock().expect("lock");
        if addresses.len() >= MAX_TRACKED_ADDRESSES && !addresses.contains_key(&peer) {
            addresses.retain(|_, b| b.active(now));
            if addresses.len() >= MAX_TRACKED_ADDRESSES {
                return;
            }
        }
        let entry = Backoff::after_failure(addresses.get(&peer).copied(), FREE_ADDRESS_FAILURES, now);
        addresses.insert(peer, entry);
    }
}

pub fn verify_password(phc: &str, password: &str) -> bool {
    verify_password_in(phc, password, &mut Vec::new())
}

/// `verify_password` with argon2's working memory (19 MiB at the default cost) in `memory`,
/// kept by the caller from one check to the next: a checker thread holds one buffer for
/// its whole life instead of asking the allocator for a fresh one per login, which the
/// allocator did not give back.
fn verify_password_in(phc: &str, password: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else { return false };
    let Ok(version) = hash.version.map(Version::try_from).transpose() else { return false };
    let Ok(params) = Params::try_from(&hash) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    memory.resize(params.block_count(), Block::default());
    let mut computed = [0u8; Output::MAX_LENGTH];
    let computed = &mut computed[..expected.len()];
    let argon2 = Argon2::new(algorithm, version.unwrap_or_default(), params);
    if argon2.hash_password_into_with_memory(password.as_bytes(), salt, computed, &mut memory[..]).is_err() {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(computed).is_ok_and(|computed| computed == expected)
}

/// An argon2id PHC string for `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let mut salt_bytes = [0u8; 16];
    crate::getrandom(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes).expect("16 bytes make a salt");
    Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 hashes").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const THERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn credentials() -> Credentials {
        let phc = hash_password("s3cret");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password(&phc, "s3cret"));
        assert!(!verify_password(&phc, "s3cret!"));
        let hashes = (1..=3).map(|i| (format!("t{i}"), phc.clone())).collect();
        Credentials::new(hashes)
    }

    #[test]
    fn passwords_and_the_device_back_off() {
        let creds = credentials();
        assert!(creds.authenticate("t1", "t1", "s3cret", HERE));
        assert!(creds.authenticate("t1", "t1", "s3cret", HERE), "again, from the cache");
        assert!(!creds.authenticate("t1", "t1", "s3cret!", HERE), "the cache holds only the right password");
        assert!(!creds.authenticate("t2", "t1", "s3cret", HERE), "client id must be the username");
        assert!(!creds.authenticate("t9", "t9", "s3cret", HERE));

        // Wrong passwords for t2, a device that never logged in: after FREE_FAILURES the
        // right one is refused too, without a check, until the wait is over — from any address.
        for _ in 0..FREE_FAILURES {
            assert!(!creds.authenticate("t2", "t2", "guess", THERE));
        }
        assert_eq!(creds.decide_cheaply("t2", "t2", "s3cret", HERE), Some(false), "backing off");
        creds.failures.lock().unwrap().get_mut("t2").unwrap().until = Instant::now();
        assert!(creds.authenticate("t2", "t2", "s3cret", HERE), "after the wait");
        assert!(!creds.failures.lock().unwrap().contains_key("t2"), "a success forgets the failures");
        // t1 logged in before: guesses against it never lock it out.
        for _ in 0..FREE_FAILURES + 2 {
            assert!(!creds.authenticate("t1", "t1", "guess", THERE));
        }
        assert!(creds.authenticate("t1", "t1", "s3cret", THERE), "its known password passes the back-off");
    }

    #[test]
    fn an_address_that_keeps_failing_waits_for_every_device() {
        let creds = credentials();
        assert!(creds.authenticate("t1", "t1", "s3cret", THERE), "t1 logs in once");
        // THERE sprays unknown names and wrong client ids: cheap refusals, but counted.
        for i in 0..FREE_ADDRESS_FAILURES {
            assert!(!creds.authenticate(&format!("x{i}"), &format!("x{i}"), "guess", THERE));
        }
        // Now even a right first login of t3 from THERE waits, without an argon2 check...
        assert_eq!(creds.decide_cheaply("t3", "t3", "s3cret", THERE), Some(false));
        // ...while the same login from elsewhere goes on to the check, and a device whose
        // password is known still gets in from THERE (a shared NAT address stays usable).
        assert_eq!(creds.decide_cheaply("t3", "t3", "s3cret", HERE), None);
        assert!(creds.authenticate("t1", "t1", "s3cret", THERE));
        // A success does not reset the address.
        assert_eq!(creds.decide_cheaply("t3", "t3", "s3cret", THERE), Some(false));
        // After the wait, it may try again.
        creds.addresses.lock().unwrap().get_mut(&THERE).unwrap().until = Instant::now();
        assert!(creds.authenticate("t3", "t3", "s3cret", THERE));
    }

    #[test]
    fn the_address_table_is_bounded() {
        let creds = credentials();
        for i in 0..MAX_TRACKED_ADDRESSES as u32 + 50 {
            creds.address_failed(IpAddr::V4(std::net::Ipv4Addr::from(i)));
        }
        assert!(creds.addresses.lock().unwrap().len() <= MAX_TRACKED_ADDRESSES);
    }

    #[test]
    fn backoff_doubles_to_a_ceiling_and_old_failures_are_forgotten() {
        assert_eq!(Backoff::wait(1, FREE_FAILURES), Duration::ZERO);
        assert_eq!(Backoff::wait(FREE_FAILURES, FREE_FAILURES), FIRST_BACKOFF);
        assert_eq!(Backoff::wait(FREE_FAILURES + 1, FREE_FAILURES), FIRST_BACKOFF * 2);
        assert_eq!(Backoff::wait(FREE_FAILURES + 40, FREE_FAILURES), MAX_BACKOFF);
        assert_eq!(Backoff::wait(u32::MAX, FREE_FAILURES), MAX_BACKOFF);
        let now = Instant::now();
        let old = Backoff { in_a_row: 50, last: now, until: now };
        assert_eq!(Backoff::after_failure(Some(old), FREE_FAILURES, now + Duration::from_secs(1)).in_a_row, 51);
        assert_eq!(Backoff::after_failure(Some(old), FREE_FAILURES, now + FORGET_FAILURES_AFTER).in_a_row, 1);
    }
}

//! What this process did to the event store, counted for `/metrics`: commands by aggregate
//! type and outcome, and events appended by aggregate type. Counts since the process started;
//! no ids, no data.

use std::collections::BTreeMap;
use std::sync::Mutex;

static COMMANDS: Mutex<BTreeMap<(&'static str, &'static str), u64>> = Mutex::new(BTreeMap::new());
static APPENDED: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Counts a command on an aggregate of `aggregate_type` that ended in `outcome`.
pub(crate) fn command(aggregate_type: &'static str, outcome: &'static str) {
    if let Ok(mut counts) = COMMANDS.lock() {
        *counts.entry((aggregate_type, outcome)).or_default() += 1;
    }
}

/// Counts `n` events of `aggregate_type` appended (committed).
pub(crate) fn appended(aggregate_type: &str, n: usize) {
    if n == 0 {
        return;
    }
    if let Ok(mut counts) = APPENDED.lock() {
        *counts.entry(aggregate_type.to_owned()).or_default() += n as u64;
    }
}

/// Commands so far: aggregate type, outcome, count.
pub fn commands() -> Vec<(&'static str, &'static str, u64)> {
    COMMANDS.lock().map_or_else(
        |_| Vec::new(),
        |counts| counts.iter().map(|(&(t, o), &n)| (t, o, n)).collect(),
    )
}

/// Events appended so far, by aggregate type.
pub fn appended_events() -> Vec<(String, u64)> {
    APPENDED.lock().map_or_else(
        |_| Vec::new(),
        |counts| counts.iter().map(|(t, &n)| (t.clone(), n)).collect(),
    )
}

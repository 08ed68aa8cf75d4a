//! Where the current time comes from: the system clock in production, a fixed or moving one
//! in tests. Every use case takes its time from here, never from `Utc::now()`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// The current time.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

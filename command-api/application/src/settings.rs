//! The policies the use cases follow, as configuration gives them.

use serde::Deserialize;

/// Scheduling policy.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulingSettings {
    /// How long a hold (two-step booking) or a wait-list offer keeps its time.
    pub hold_minutes: u32,
    /// A cancellation this close to the start is flagged late.
    pub late_cancellation_hours: u32,
    /// Reserved (urgent) capacity starting within this lead time is released to routine
    /// requests.
    pub reserved_release_minutes: u32,
    /// `best-fit` or `first-fit`: how a resource is chosen among several.
    pub strategy: String,
    /// Reminders go out this many minutes before each booked appointment.
    #[serde(default)]
    pub reminder_offsets_minutes: Vec<u32>,
}

impl Default for SchedulingSettings {
    fn default() -> Self {
        Self {
            hold_minutes: 10,
            late_cancellation_hours: 24,
            reserved_release_minutes: 120,
            strategy: "best-fit".to_owned(),
            reminder_offsets_minutes: vec![1440, 120],
        }
    }
}

//! Appointment scheduling: resources' calendars computed from weekly templates (no slot rows),
//! appointments with FHIR R4 statuses and only the allowed transitions, priorities with
//! reserved capacity, wait lists, and the choice of resource among several that could serve a
//! request.
//!
//! - [`calendar`]: templates, blocks, free slots, priorities.
//! - [`appointment`]: the appointment aggregate and its status chart.
//! - [`notification`]: reminders and wait-list offers, each sent once.
//! - [`assignment`]: first fit and best fit, and the clinic-week simulation.

pub mod appointment;
pub mod assignment;
pub mod calendar;
pub mod notification;

pub use appointment::{Appointment, AppointmentCommand, AppointmentEvent, AppointmentStatus};
pub use calendar::{Interval, Priority, Slot, WeeklyTemplate, Window};

/// Errors of scheduling: one variant per rule, each message safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulingError {
    #[error("an appointment with this id exists already")]
    AppointmentExists,
    #[error("no such appointment")]
    AppointmentNotFound,
    #[error("an appointment cannot go from {} to {}", .from.code(), .to.code())]
    TransitionNotAllowed {
        from: AppointmentStatus,
        to: AppointmentStatus,
    },
    #[error("the hold has expired")]
    HoldExpired,
    #[error("the appointment has no time yet")]
    NoTimeYet,
    #[error("a no-show is recorded only once the appointment has started")]
    NoShowBeforeStart,
    #[error("the interval ends before it starts")]
    EmptyInterval,
    #[error("an appointment needs at least one resource")]
    NoResources,
    #[error("the change changes nothing")]
    ChangesNothing,
    #[error("another appointment holds some of this time")]
    TimeTaken,
    #[error("the notification was sent already")]
    AlreadySent,
    #[error("the offer has not expired yet")]
    OfferStillOpen,
}

impl SchedulingError {
    /// A stable machine-readable code for the rule that was broken.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AppointmentExists => "appointment-exists",
            Self::AppointmentNotFound => "appointment-not-found",
            Self::TransitionNotAllowed { .. } => "transition-not-allowed",
            Self::HoldExpired => "hold-expired",
            Self::NoTimeYet => "no-time-yet",
            Self::NoShowBeforeStart => "no-show-before-start",
            Self::EmptyInterval => "empty-interval",
            Self::NoResources => "no-resources",
            Self::ChangesNothing => "changes-nothing",
            Self::TimeTaken => "time-taken",
            Self::AlreadySent => "already-sent",
            Self::OfferStillOpen => "offer-still-open",
        }
    }
}

//! The appointment aggregate: one per appointment (or wait-list entry), its FHIR R4 status and
//! the transitions allowed between them.
//!
//! ```text
//! (hold) pending ──> booked ──> arrived ──> checked-in ──> fulfilled
//! proposed ────────> booked ──> noshow
//! waitlist ──> pending (an offer: a hold that expires) ──> waitlist (the offer expired)
//! proposed, pending, booked, arrived, waitlist ──> cancelled
//! every status but entered-in-error ──> entered-in-error
//! ```
//!
//! Whether the time is free is not decided here: the store claims the resources' time in the
//! transaction that stores the event, under an exclusion constraint.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::calendar::{Interval, Priority};
use super::SchedulingError;
use crate::patient::governance::Principal;
use crate::patient::{PatientId, Reason};

crate::code_enum!(
    /// FHIR R4 `Appointment.status`.
    AppointmentStatus {
        Proposed = "proposed",
        Pending = "pending",
        Booked = "booked",
        Arrived = "arrived",
        CheckedIn = "checked-in",
        Fulfilled = "fulfilled",
        Cancelled = "cancelled",
        NoShow = "noshow",
        EnteredInError = "entered-in-error",
        Waitlist = "waitlist",
    }
);

impl AppointmentStatus {
    /// Whether an appointment may go from `self` to `to`.
    pub fn allows(self, to: AppointmentStatus) -> bool {
        use AppointmentStatus as S;
        matches!(
            (self, to),
            (S::Proposed, S::Booked | S::Cancelled)
                | (
                    S::Pending,
                    S::Booked | S::Pending | S::Cancelled | S::Waitlist
                )
                | (S::Booked, S::Booked | S::Arrived | S::Cancelled | S::NoShow)
                | (S::Arrived, S::CheckedIn | S::Cancelled)
                | (S::CheckedIn, S::Fulfilled)
                | (S::Waitlist, S::Pending | S::Cancelled)
        ) || (to == S::EnteredInError && self != S::EnteredInError)
    }

    /// Whether the appointment holds its resources' time in this status.
    pub fn claims_time(self) -> bool {
        use AppointmentStatus as S;
        matches!(self, S::Pending | S::Booked | S::Arrived | S::CheckedIn)
    }
}

crate::code_enum!(
    /// Why an appointment was cancelled.
    CancellationReason {
        Patient = "patient",
        PatientSick = "patient-sick",
        RecordArchived = "record-archived",
        Practitioner = "practitioner",
        Facility = "facility",
        Weather = "weather",
        Rescheduled = "rescheduled",
        Other = "other",
    }
);

/// The time and resources an appointment claims: a practitioner, and the rooms and equipment
/// its service needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Booking {
    pub interval: Interval,
    /// Resource ids: the practitioner first, then rooms and equipment.
    pub resources: Vec<String>,
}

/// A wait-list entry's wishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WaitlistWish {
    /// The window the patient could come in.
    pub window: Interval,
    /// A practitioner asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
}

/// Who cancelled, why, and whether it was late by the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cancellation {
    pub reason: CancellationReason,
    pub by: Principal,
    pub at: DateTime<Utc>,
    pub late: bool,
}

/// An appointment as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentState {
    pub patient_id: PatientId,
    pub service: String,
    pub priority: Priority,
    pub status: AppointmentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking: Option<Booking>,
    /// Until when a pending appointment (a hold or an offer) keeps its time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waitlist: Option<WaitlistWish>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<Cancellation>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The appointment aggregate; `None` until created.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Appointment {
    state: Option<AppointmentState>,
}

/// How an appointment starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAppointment {
    pub patient_id: PatientId,
    pub service: String,
    pub priority: Priority,
    pub at: DateTime<Utc>,
}

/// Commands on an appointment. Time arrives with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppointmentCommand {
    /// Booked at once.
    Book {
        new: NewAppointment,
        booking: Booking,
    },
    /// Held (pending) until `expires_at`: the first step of two-step booking.
    Hold {
        new: NewAppointment,
        booking: Booking,
        expires_at: DateTime<Utc>,
    },
    /// Proposed: a time suggested, not yet held (confirming books it, if still free).
    Propose {
        new: NewAppointment,
        booking: Option<Booking>,
    },
    /// On the wait list.
    JoinWaitlist {
        new: NewAppointment,
        wish: WaitlistWish,
    },
    /// A wait-list entry is offered a slot, held until `expires_at`.
    Offer {
        booking: Booking,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A pending hold or offer (or a proposal with its booking) becomes booked.
    Confirm {
        at: DateTime<Utc>,
    },
    /// A wait-list offer was not taken in time: back on the wait list.
    ExpireOffer {
        at: DateTime<Utc>,
    },
    /// Moves a pending or booked appointment.
    Reschedule {
        booking: Booking,
        reason: Reason,
        at: DateTime<Utc>,
    },
    Arrive {
        at: DateTime<Utc>,
    },
    CheckIn {
        at: DateTime<Utc>,
    },
    Fulfil {
        at: DateTime<Utc>,
    },
    NoShow {
        at: DateTime<Utc>,
    },
    Cancel {
        reason: CancellationReason,
        by: Principal,
        /// Cancelling closer than this to the start is late.
        late_within: Duration,
        at: DateTime<Utc>,
    },
    EnterInError {
        reason: Reason,
        at: DateTime<Utc>,
    },
}

/// The events of an appointment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppointmentEvent {
    AppointmentCreated {
        patient_id: PatientId,
        service: String,
        priority: Priority,
        status: AppointmentStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        booking: Option<Booking>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hold_expires_at: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        waitlist: Option<WaitlistWish>,
        at: DateTime<Utc>,
    },
    AppointmentOffered {
        booking: Booking,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    AppointmentRescheduled {
        booking: Booking,
        reason: Reason,
        at: DateTime<Utc>,
    },
    /// A move along the status chart without other change (confirm, arrive, check in,
    /// fulfil, no-show).
    AppointmentStatusChanged {
        from: AppointmentStatus,
        to: AppointmentStatus,
        at: DateTime<Utc>,
    },
    AppointmentCancelled {
        cancellation: Cancellation,
    },
    AppointmentOfferExpired {
        at: DateTime<Utc>,
    },
    AppointmentEnteredInError {
        reason: Reason,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for AppointmentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AppointmentCreated { .. } => "AppointmentCreated",
            Self::AppointmentOffered { .. } => "AppointmentOffered",
            Self::AppointmentRescheduled { .. } => "AppointmentRescheduled",
            Self::AppointmentStatusChanged { .. } => "AppointmentStatusChanged",
            Self::AppointmentCancelled { .. } => "AppointmentCancelled",
            Self::AppointmentOfferExpired { .. } => "AppointmentOfferExpired",
            Self::AppointmentEnteredInError { .. } => "AppointmentEnteredInError",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl Appointment {
    pub fn state(&self) -> Option<&AppointmentState> {
        self.state.as_ref()
    }

    /// Decides the events of a command, or the rule it breaks. Pure.
    ///
    /// # Errors
    ///
    /// The [`SchedulingError`] naming the rule.
    pub fn decide(
        &self,
        command: AppointmentCommand,
    ) -> Result<Vec<AppointmentEvent>, SchedulingError> {
        use AppointmentCommand as C;
        use AppointmentStatus as S;
        let created = |new: NewAppointment,
                       status: S,
                       booking: Option<Booking>,
                       hold_expires_at: Option<DateTime<Utc>>,
                       waitlist: Option<WaitlistWish>| {
            AppointmentEvent::AppointmentCreated {
                patient_id: new.patient_id,
                service: new.service,
                priority: new.priority,
                status,
                booking,
                hold_expires_at,
                waitlist,
                at: new.at,
            }
        };
        let event = match (command, &self.state) {
            (C::Book { new, booking }, None) => {
                check_booking(&booking)?;
                created(new, S::Booked, Some(booking), None, None)
            }
            (
                C::Hold {
                    new,
                    booking,
                    expires_at,
                },
                None,
            ) => {
                check_booking(&booking)?;
                created(new, S::Pending, Some(booking), Some(expires_at), None)
            }
            (C::Propose { new, booking }, None) => {
                if let Some(booking) = &booking {
                    check_booking(booking)?;
                }
                created(new, S::Proposed, booking, None, None)
            }
            (C::JoinWaitlist { new, wish }, None) => {
                if wish.window.end <= wish.window.start {
                    return Err(SchedulingError::EmptyInterval);
                }
                created(new, S::Waitlist, None, None, Some(wish))
            }
            (_, None) => return Err(SchedulingError::AppointmentNotFound),
            (
                C::Book { .. } | C::Hold { .. } | C::Propose { .. } | C::JoinWaitlist { .. },
                Some(_),
            ) => return Err(SchedulingError::AppointmentExists),
            (
                C::Offer {
                    booking,
                    expires_at,
                    at,
                },
                Some(state),
            ) => {
                transition(state.status, S::Pending)?;
                if state.status != S::Waitlist {
                    return Err(SchedulingError::TransitionNotAllowed {
                        from: state.status,
                        to: S::Pending,
                    });
                }
                check_booking(&booking)?;
                AppointmentEvent::AppointmentOffered {
                    booking,
                    expires_at,
                    at,
                }
            }
            (C::Confirm { at }, Some(state)) => {
                transition(state.status, S::Booked)?;
                if state.booking.is_none() {
                    return Err(SchedulingError::NoTimeYet);
                }
                if state.hold_expires_at.is_some_and(|e| e <= at) {
                    return Err(SchedulingError::HoldExpired);
                }
                AppointmentEvent::AppointmentStatusChanged {
                    from: state.status,
                    to: S::Booked,
                    at,
                }
            }
            (C::ExpireOffer { at }, Some(state)) => {
                if state.status != S::Pending || state.waitlist.is_none() {
                    return Err(SchedulingError::TransitionNotAllowed {
                        from: state.status,
                        to: S::Waitlist,
                    });
                }
                if state.hold_expires_at.is_some_and(|e| e > at) {
                    return Err(SchedulingError::OfferStillOpen);
                }
                AppointmentEvent::AppointmentOfferExpired { at }
            }
            (
                C::Reschedule {
                    booking,
                    reason,
                    at,
                },
                Some(state),
            ) => {
                if !matches!(state.status, S::Pending | S::Booked) {
                    return Err(SchedulingError::TransitionNotAllowed {
                        from: state.status,
                        to: state.status,
                    });
                }
                check_booking(&booking)?;
                if state.booking.as_ref() == Some(&booking) {
                    return Err(SchedulingError::ChangesNothing);
                }
                AppointmentEvent::AppointmentRescheduled {
                    booking,
                    reason,
                    at,
                }
            }
            (C::Arrive { at }, Some(state)) => step(state, S::Arrived, at)?,
            (C::CheckIn { at }, Some(state)) => step(state, S::CheckedIn, at)?,
            (C::Fulfil { at }, Some(state)) => step(state, S::Fulfilled, at)?,
            (C::NoShow { at }, Some(state)) => {
                if state
                    .booking
                    .as_ref()
                    .is_some_and(|b| at < b.interval.start)
                {
                    return Err(SchedulingError::NoShowBeforeStart);
                }
                step(state, S::NoShow, at)?
            }
            (
                C::Cancel {
                    reason,
                    by,
                    late_within,
                    at,
                },
                Some(state),
            ) => {
                transition(state.status, S::Cancelled)?;
                // Late is the patient's doing, on a booked time, too close to it.
                let late = state.status == S::Booked
                    && matches!(
                        reason,
                        CancellationReason::Patient | CancellationReason::PatientSick
                    )
                    && state
                        .booking
                        .as_ref()
                        .is_some_and(|b| b.interval.start - at < late_within);
                AppointmentEvent::AppointmentCancelled {
                    cancellation: Cancellation {
                        reason,
                        by,
                        at,
                        late,
                    },
                }
            }
            (C::EnterInError { reason, at }, Some(state)) => {
                transition(state.status, S::EnteredInError)?;
                AppointmentEvent::AppointmentEnteredInError { reason, at }
            }
        };
        Ok(vec![event])
    }
}

fn transition(from: AppointmentStatus, to: AppointmentStatus) -> Result<(), SchedulingError> {
    if from.allows(to) {
        Ok(())
    } else {
        Err(SchedulingError::TransitionNotAllowed { from, to })
    }
}

fn step(
    state: &AppointmentState,
    to: AppointmentStatus,
    at: DateTime<Utc>,
) -> Result<AppointmentEvent, SchedulingError> {
    transition(state.status, to)?;
    Ok(AppointmentEvent::AppointmentStatusChanged {
        from: state.status,
        to,
        at,
    })
}

fn check_booking(booking: &Booking) -> Result<(), SchedulingError> {
    if booking.interval.end <= booking.interval.start {
        return Err(SchedulingError::EmptyInterval);
    }
    if booking.resources.is_empty() {
        return Err(SchedulingError::NoResources);
    }
    Ok(())
}

impl Aggregate for Appointment {
    const TYPE: &'static str = "Appointment";
    type Command = AppointmentCommand;
    type Event = AppointmentEvent;
    type Error = SchedulingError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        use AppointmentEvent as E;
        if let E::AppointmentCreated {
            patient_id,
            service,
            priority,
            status,
            booking,
            hold_expires_at,
            waitlist,
            at,
        } = event
        {
            self.state = Some(AppointmentState {
                patient_id,
                service,
                priority,
                status,
                booking,
                hold_expires_at,
                waitlist,
                cancellation: None,
                created_at: at,
                updated_at: at,
            });
            return;
        }
        let Some(state) = self.state.as_mut() else {
            return;
        };
        match event {
            E::AppointmentCreated { .. } => {}
            E::AppointmentOffered {
                booking,
                expires_at,
                at,
            } => {
                state.status = AppointmentStatus::Pending;
                state.booking = Some(booking);
                state.hold_expires_at = Some(expires_at);
                state.updated_at = at;
            }
            E::AppointmentRescheduled { booking, at, .. } => {
                state.booking = Some(booking);
                state.updated_at = at;
            }
            E::AppointmentStatusChanged { to, at, .. } => {
                state.status = to;
                if to == AppointmentStatus::Booked {
                    state.hold_expires_at = None;
                }
                state.updated_at = at;
            }
            E::AppointmentCancelled { cancellation } => {
                state.status = AppointmentStatus::Cancelled;
                state.updated_at = cancellation.at;
                state.cancellation = Some(cancellation);
            }
            E::AppointmentOfferExpired { at } => {
                state.status = AppointmentStatus::Waitlist;
                state.booking = None;
                state.hold_expires_at = None;
                state.updated_at = at;
            }
            E::AppointmentEnteredInError { at, .. } => {
                state.status = AppointmentStatus::EnteredInError;
                state.updated_at = at;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, h, 0, 0).unwrap()
    }

    fn new() -> NewAppointment {
        NewAppointment {
            patient_id: PatientId::new(uuid::Uuid::from_u128(1)),
            service: "consultation".into(),
            priority: Priority::Routine,
            at: at(6),
        }
    }

    fn booking(h: u32) -> Booking {
        Booking {
            interval: Interval::new(at(h), at(h) + Duration::minutes(30)),
            resources: vec!["dr-a".into(), "room-1".into()],
        }
    }

    fn run(a: &mut Appointment, c: AppointmentCommand) -> Result<(), SchedulingError> {
        for e in a.decide(c)? {
            a.apply(e);
        }
        Ok(())
    }

    fn status(a: &Appointment) -> AppointmentStatus {
        a.state().unwrap().status
    }

    #[test]
    fn every_status_allows_exactly_its_documented_moves() {
        use AppointmentStatus as S;
        let all = [
            S::Proposed,
            S::Pending,
            S::Booked,
            S::Arrived,
            S::CheckedIn,
            S::Fulfilled,
            S::Cancelled,
            S::NoShow,
            S::EnteredInError,
            S::Waitlist,
        ];
        let allowed: usize = all
            .iter()
            .map(|f| all.iter().filter(|t| f.allows(**t)).count())
            .sum();
        // 2 + 4 + 4 + 2 + 1 + 2 moves, plus entered-in-error from nine statuses.
        assert_eq!(allowed, 15 + 9);
        for terminal in [S::Fulfilled, S::Cancelled, S::NoShow] {
            assert!(all
                .iter()
                .all(|t| !terminal.allows(*t) || *t == S::EnteredInError));
        }
    }

    #[test]
    fn a_visit_goes_from_hold_to_fulfilled_and_nothing_skips_a_step() {
        let mut a = Appointment::default();
        run(
            &mut a,
            AppointmentCommand::Hold {
                new: new(),
                booking: booking(9),
                expires_at: at(7),
            },
        )
        .unwrap();
        assert_eq!(status(&a), AppointmentStatus::Pending);
        assert_eq!(
            a.decide(AppointmentCommand::CheckIn { at: at(8) }),
            Err(SchedulingError::TransitionNotAllowed {
                from: AppointmentStatus::Pending,
                to: AppointmentStatus::CheckedIn
            })
        );
        assert_eq!(
            a.decide(AppointmentCommand::Confirm { at: at(8) }),
            Err(SchedulingError::HoldExpired)
        );
        let mut b = Appointment::default();
        run(
            &mut b,
            AppointmentCommand::Hold {
                new: new(),
                booking: booking(9),
                expires_at: at(8),
            },
        )
        .unwrap();
        run(&mut b, AppointmentCommand::Confirm { at: at(7) }).unwrap();
        for c in [
            AppointmentCommand::Arrive { at: at(9) },
            AppointmentCommand::CheckIn { at: at(9) },
            AppointmentCommand::Fulfil { at: at(10) },
        ] {
            run(&mut b, c).unwrap();
        }
        assert_eq!(status(&b), AppointmentStatus::Fulfilled);
        assert!(b.decide(AppointmentCommand::Arrive { at: at(11) }).is_err());
    }

    #[test]
    fn cancellations_are_flagged_late_by_the_policy_and_no_shows_wait_for_the_start() {
        let by = Principal::parse("by", "front-desk").unwrap();
        let mut a = Appointment::default();
        run(
            &mut a,
            AppointmentCommand::Book {
                new: new(),
                booking: booking(9),
            },
        )
        .unwrap();
        assert_eq!(
            a.decide(AppointmentCommand::NoShow { at: at(8) }),
            Err(SchedulingError::NoShowBeforeStart)
        );
        run(
            &mut a,
            AppointmentCommand::Cancel {
                reason: CancellationReason::Patient,
                by: by.clone(),
                late_within: Duration::hours(24),
                at: at(7),
            },
        )
        .unwrap();
        assert!(a.state().unwrap().cancellation.as_ref().unwrap().late);
        let mut b = Appointment::default();
        run(
            &mut b,
            AppointmentCommand::Book {
                new: new(),
                booking: booking(9),
            },
        )
        .unwrap();
        run(
            &mut b,
            AppointmentCommand::Cancel {
                reason: CancellationReason::Patient,
                by,
                late_within: Duration::hours(1),
                at: at(7),
            },
        )
        .unwrap();
        assert!(!b.state().unwrap().cancellation.as_ref().unwrap().late);
    }

    #[test]
    fn a_wait_list_entry_is_offered_a_slot_and_books_it() {
        let mut a = Appointment::default();
        let wish = WaitlistWish {
            window: Interval::new(at(8), at(17)),
            practitioner: None,
        };
        run(
            &mut a,
            AppointmentCommand::JoinWaitlist { new: new(), wish },
        )
        .unwrap();
        assert_eq!(
            a.decide(AppointmentCommand::Confirm { at: at(7) }),
            Err(SchedulingError::TransitionNotAllowed {
                from: AppointmentStatus::Waitlist,
                to: AppointmentStatus::Booked
            })
        );
        run(
            &mut a,
            AppointmentCommand::Offer {
                booking: booking(10),
                expires_at: at(9),
                at: at(7),
            },
        )
        .unwrap();
        assert_eq!(
            a.decide(AppointmentCommand::ExpireOffer { at: at(8) }),
            Err(SchedulingError::OfferStillOpen)
        );
        run(&mut a, AppointmentCommand::ExpireOffer { at: at(9) }).unwrap();
        assert_eq!(status(&a), AppointmentStatus::Waitlist);
        run(
            &mut a,
            AppointmentCommand::Offer {
                booking: booking(11),
                expires_at: at(9),
                at: at(8),
            },
        )
        .unwrap();
        run(&mut a, AppointmentCommand::Confirm { at: at(8) }).unwrap();
        assert_eq!(status(&a), AppointmentStatus::Booked);
        assert!(a.state().unwrap().hold_expires_at.is_none());
    }
}

//! The application layer of the patient service: what a caller may do, the decisions about
//! each patient's data, and the work the service does on its own. No HTTP type reaches here
//! (`cargo tree -e normal -i axum` does not list this crate): the HTTP API, the CLI and the
//! tools all call in.
//!
//! # Layout
//!
//! - [`caller`]: the authenticated caller ([`caller::AuthUser`]) and why a request is refused.
//! - [`policy`]: the one table of which role may do which action.
//! - [`access`]: per-patient decisions (care team, consent, organization, purpose,
//!   break-the-glass) and the access log every read leaves behind.
//! - [`matching`]: duplicate detection against the `patient_match` read model.
//! - [`services`]: what the use cases reach, and the error they refuse with.
//! - [`reach`]: a patient's data reached only through the access decision, recorded.
//! - [`patients`]: every command on one existing patient.
//! - [`records`]: the medical record: its items and documents, changed and read.
//! - [`merging`]: merging a duplicate into its survivor, and undoing it.
//! - [`registration`]: registering a patient, duplicate detection included.
//! - [`booking`]: booking an appointment, and the planning the scheduling commands share.
//! - [`appointments`]: an appointment read, and moved through its statuses.
//! - [`resources`]: resources, their blocks, services, and the free places they leave.
//! - [`extraction`]: what a document text extractor offers the use cases.
//! - [`finding`]: patients read by id, search, likeness and retention; their data keys.
//! - [`audit`]: the audit log, disclosures and verified histories.
//! - [`compartment`]: everything held of one patient, read under one access decision.
//! - [`retention`]: the retention policy's purge.
//! - [`planner`]: availability and placement of appointments on resources.
//! - [`background`]: reminders, wait-list offers, the notification outbox, under one runner.
//! - [`settings`]: the policies configuration gives the use cases.
//! - [`smart`]: SMART on FHIR scopes, which narrow what the roles allow.
//! - [`clock`]: where the current time comes from.

pub mod access;
pub mod appointments;
pub mod audit;
pub mod background;
pub mod booking;
pub mod caller;
pub mod clock;
pub mod compartment;
pub mod extraction;
pub mod finding;
pub mod matching;
pub mod merging;
pub mod patients;
pub mod planner;
pub mod policy;
pub mod reach;
pub mod records;
pub mod registration;
pub mod resources;
pub mod retention;
pub mod services;
pub mod settings;
pub mod smart;

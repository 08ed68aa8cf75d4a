//! Who may do what: the one policy table every endpoint consults.
//!
//! | action               | admin | registrar | clinician | scheduler | auditor |
//! |----------------------|:-----:|:---------:|:---------:|:---------:|:-------:|
//! | register patient     |   x   |     x     |           |           |         |
//! | correct demographics |   x   |     x     |           |           |         |
//! | archive patient      |   x   |     x     |           |           |         |
//! | restore patient      |   x   |     x     |           |           |         |
//! | read patient         |   x   |     x     |     x     |     x     |    x    |
//! | search patients      |   x   |     x     |     x     |     x     |         |
//! | match patients       |   x   |     x     |           |           |         |
//! | change contact, identifiers, emergency contacts, coverages, preferences | x | x | | | |
//! | merge, unmerge       |   x   |     x     |           |           |         |
//! | retention candidates |   x   |           |           |           |         |
//! | audit streams, audit log |   x   |           |           |           |    x    |
//! | care relationships   |   x   |     x     |           |           |         |
//! | consents             |   x   |     x     |           |           |         |
//! | legal hold, forget   |   x   |           |           |           |         |
//! | disclosures          |   x   |           |           |           |         |
//! | revoke any session   |   x   |           |           |           |         |
//! | read medical record  |   x   |           |     x     |           |         |
//! | write medical record |       |           |     x     |           |         |
//! | search medical records across patients | x |   |     x     |           |         |
//! | manage resources, templates, services |   x   |  |           |           |         |
//! | block resources' time |   x   |           |           |     x     |         |
//! | read resources, availability | x  |     x     |     x     |     x     |         |
//! | book and move appointments |   x   |     x     |           |     x     |         |
//! | read appointments    |   x   |     x     |     x     |     x     |         |
//! | bulk export (FHIR `$export`) | x |       |           |           |         |
//!
//! Every authenticated caller may end their own session (logout).
//!
//! The `importer` role is the import's (`patient-service import`, a trusted path run by an
//! operator in the service's own process; no token can carry it): it registers patients, adds
//! coverages, writes medical records (of any patient, as the source held them) and manages
//! resources (the practitioners it brings), reads patients, and adds its identifier to a
//! registered patient it merges an imported one into.
//!
//! The `patient` role may read their own record and medical record, change their own preferences, manage their
//! own consents and list their own disclosures; nothing else, and nobody else's. The `service`
//! role (downstream services) may only fetch patients' data keys, to open the sealed events
//! they consume. Which patients a role reaches is decided in [`crate::access`].

/// What a route needs of its caller, named by a type so the extractors check it before the
/// request body is read: a caller without the role learns nothing about the body's rules.
pub trait Permission: Send + Sync + 'static {
    const ACTION: Action;
}

/// A role from the token's `roles` claim. Unknown role names are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Registrar,
    Clinician,
    Scheduler,
    Auditor,
    Patient,
    Service,
    /// The import (`patient-service import`), inside the service's own process only: no token
    /// can name it (it is not in [`Role::ALL`], which tokens are read by).
    Importer,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Admin,
        Role::Registrar,
        Role::Clinician,
        Role::Scheduler,
        Role::Auditor,
        Role::Patient,
        Role::Service,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == name)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Registrar => "registrar",
            Self::Clinician => "clinician",
            Self::Scheduler => "scheduler",
            Self::Auditor => "auditor",
            Self::Patient => "patient",
            Self::Service => "service",
            Self::Importer => "importer",
        }
    }
}

/// The actions of the policy table: the `Action` enum, `Action::ALL`, and one type per action
/// in [`permission`] (for the `Authorized` extractor), from one list.
macro_rules! actions {
    ($($name:ident),+ $(,)?) => {
        /// Something a caller asks to do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action {
            $($name),+
        }

        impl Action {
            pub const ALL: &'static [Action] = &[$(Action::$name),+];
        }

        /// One type per action, naming the permission a route needs.
        pub mod permission {
            $(
                #[derive(Debug)]
                pub struct $name;
                impl super::Permission for $name {
                    const ACTION: super::Action = super::Action::$name;
                }
            )+
        }
    };
}

actions!(
    RegisterPatient,
    CorrectDemographics,
    ArchivePatient,
    RestorePatient,
    ReadPatient,
    SearchPatients,
    MatchPatients,
    ChangeContactInformation,
    ChangeIdentifiers,
    ChangePreferences,
    ChangeEmergencyContacts,
    ChangeCoverages,
    MergePatients,
    ReviewRetention,
    ReadAuditTrail,
    ReadDataKey,
    ManageCareRelationships,
    ManageConsents,
    ManageLegalHold,
    ForgetPatient,
    ReadDisclosures,
    RevokeSessions,
    ReadMedicalRecord,
    WriteMedicalRecord,
    SearchMedicalRecords,
    ManageResources,
    BlockResources,
    ReadSchedule,
    BookAppointments,
    ReadAppointments,
    BulkExport,
);

use Role::{Admin, Auditor, Clinician, Importer, Patient, Registrar, Scheduler, Service};

const POLICY: &[(Action, &[Role])] = &[
    (Action::RegisterPatient, &[Admin, Registrar, Importer]),
    (Action::CorrectDemographics, &[Admin, Registrar]),
    (Action::ArchivePatient, &[Admin, Registrar]),
    (Action::RestorePatient, &[Admin, Registrar]),
    (
        Action::ReadPatient,
        &[
            Admin, Registrar, Clinician, Scheduler, Auditor, Patient, Importer,
        ],
    ),
    (
        Action::SearchPatients,
        &[Admin, Registrar, Clinician, Scheduler],
    ),
    (Action::MatchPatients, &[Admin, Registrar]),
    (Action::ChangeContactInformation, &[Admin, Registrar]),
    (Action::ChangeIdentifiers, &[Admin, Registrar, Importer]),
    (Action::ChangePreferences, &[Admin, Registrar, Patient]),
    (Action::ChangeEmergencyContacts, &[Admin, Registrar]),
    (Action::ChangeCoverages, &[Admin, Registrar, Importer]),
    (Action::MergePatients, &[Admin, Registrar]),
    (Action::ReviewRetention, &[Admin]),
    (Action::ReadAuditTrail, &[Admin, Auditor]),
    (Action::ReadDataKey, &[Service]),
    (Action::ManageCareRelationships, &[Admin, Registrar]),
    (Action::ManageConsents, &[Admin, Registrar, Patient]),
    (Action::ManageLegalHold, &[Admin]),
    (Action::ForgetPatient, &[Admin]),
    (Action::ReadDisclosures, &[Admin, Patient]),
    (Action::RevokeSessions, &[Admin]),
    (Action::ReadMedicalRecord, &[Admin, Clinician, Patient]),
    (Action::WriteMedicalRecord, &[Clinician, Importer]),
    (Action::SearchMedicalRecords, &[Admin, Clinician]),
    (Action::ManageResources, &[Admin, Importer]),
    (Action::BlockResources, &[Admin, Scheduler]),
    (
        Action::ReadSchedule,
        &[Admin, Registrar, Clinician, Scheduler],
    ),
    (Action::BookAppointments, &[Admin, Registrar, Scheduler]),
    (
        Action::ReadAppointments,
        &[Admin, Registrar, Clinician, Scheduler, Patient],
    ),
    (Action::BulkExport, &[Admin]),
];

/// Whether `role` may do `action`.
pub fn allows(role: Role, action: Action) -> bool {
    POLICY
        .iter()
        .any(|(a, roles)| *a == action && roles.contains(&role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_a_policy_row() {
        for &action in Action::ALL {
            assert!(POLICY.iter().any(|(a, _)| *a == action), "{action:?}");
        }
    }

    #[test]
    fn the_service_role_may_only_fetch_data_keys_and_nobody_else_may() {
        for &action in Action::ALL {
            assert_eq!(allows(Role::Service, action), action == Action::ReadDataKey);
        }
        for role in Role::ALL {
            assert_eq!(allows(role, Action::ReadDataKey), role == Role::Service);
        }
    }

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}

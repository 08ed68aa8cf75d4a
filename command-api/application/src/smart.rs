//! SMART on FHIR scopes (App Launch 2.0, and 1.0's `read`/`write`): what a token's `scope`
//! claim lets an app do, on top of what the caller's roles let the caller do. A scope can only
//! narrow: a request needs its role *and* a scope granting the resource type and interaction.
//! A grant by `patient/` scopes alone confines the request to the launch context's patient
//! ([`crate::caller::AuthUser::confined_to`]); `user/` and `system/` scopes reach whatever the
//! roles reach.
//!
//! Scopes with a query (`patient/Observation.rs?category=laboratory`) grant nothing here: the
//! service does not narrow searches by them, and granting the whole type would widen them.
//! Scopes that are not about resources (`openid`, `fhirUser`, `launch/patient`,
//! `offline_access`) grant nothing either.

/// What a request does to a resource type: SMART v2's `c`, `r`, `u`, `d`, `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    const fn bit(self) -> u8 {
        match self {
            Self::Create => 1,
            Self::Read => 2,
            Self::Update => 4,
            Self::Delete => 8,
            Self::Search => 16,
        }
    }
}

/// Whose data a scope is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Patient,
    User,
    System,
}

/// One resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    context: Context,
    /// `None` for `*`.
    resource: Option<String>,
    /// The interactions granted, as [`Interaction::bit`]s.
    interactions: u8,
}

/// How far the scopes let a request go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// No scope grants it.
    None,
    /// Only `patient/` scopes grant it: the launch patient's data only.
    LaunchPatient,
    /// A `user/` or `system/` scope grants it: as far as the roles reach.
    Roles,
}

/// The resource scopes of a token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// The resource scopes of a `scope` claim (space-separated); the others are left out.
    pub fn parse(claim: &str) -> Self {
        Self(claim.split_whitespace().filter_map(scope).collect())
    }

    /// Whether a scope grants `interaction` on `resource_type`, and how far.
    pub fn grant(&self, resource_type: &str, interaction: Interaction) -> Grant {
        let granting = self.0.iter().filter(|s| {
            s.interactions & interaction.bit() != 0
                && s.resource.as_deref().is_none_or(|r| r == resource_type)
        });
        let mut grant = Grant::None;
        for scope in granting {
            match scope.context {
                Context::User | Context::System => return Grant::Roles,
                Context::Patient => grant = Grant::LaunchPatient,
            }
        }
        grant
    }

    /// The `system/` scopes of `requested` (space-separated) that one of these scopes covers
    /// (the same or every resource type, at least the same interactions), as text; the others
    /// are left out. What a backend client is granted of what it asks.
    pub fn system_scopes_within(&self, requested: &str) -> Vec<String> {
        requested
            .split_whitespace()
            .filter(|text| {
                scope(text).is_some_and(|asked| {
                    asked.context == Context::System
                        && self.0.iter().any(|allowed| {
                            allowed.context == Context::System
                                && allowed.interactions & asked.interactions == asked.interactions
                                && (allowed.resource.is_none()
                                    || allowed.resource == asked.resource)
                        })
                })
            })
            .map(str::to_owned)
            .collect()
    }

    /// Whether the token holds no resource scope at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A resource scope: `context/Type.perms` (v2 `cruds` letters in that order, or v1 `read`,
/// `write`, `*`).
fn scope(text: &str) -> Option<Scope> {
    let (context, rest) = text.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    if rest.contains('?') {
        return None;
    }
    let (resource, permissions) = rest.split_once('.')?;
    let resource = match resource {
        "*" => None,
        name if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()) => {
            Some(name.to_owned())
        }
        _ => return None,
    };
    let all = Interaction::Create.bit()
        | Interaction::Read.bit()
        | Interaction::Update.bit()
        | Interaction::Delete.bit()
        | Interaction::Search.bit();
    let interactions = match permissions {
        "read" => Interaction::Read.bit() | Interaction::Search.bit(),
        "write" => {
            Interaction::Create.bit() | Interaction::Update.bit() | Interaction::Delete.bit()
        }
        "*" => all,
        letters => v2_permissions(letters)?,
    };
    Some(Scope {
        context,
        resource,
        interactions,
    })
}

/// SMART v2 permissions: a non-empty subset of `cruds`, in that order.
fn v2_permissions(letters: &str) -> Option<u8> {
    let order = [
        ('c', Interaction::Create),
        ('r', Interaction::Read),
        ('u', Interaction::Update),
        ('d', Interaction::Delete),
        ('s', Interaction::Search),
    ];
    let mut bits = 0;
    let mut next = 0;
    for letter in letters.chars() {
        let at = order[next..].iter().position(|(l, _)| *l == letter)? + next;
        bits |= order[at].1.bit();
        next = at + 1;
    }
    (bits != 0).then_some(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_scopes_grant_their_interactions_and_no_more() {
        let scopes = Scopes::parse(
            "openid fhirUser launch/patient patient/Observation.rs patient/Patient.read user/Condition.cu offline_access",
        );
        assert_eq!(
            scopes.grant("Observation", Interaction::Search),
            Grant::LaunchPatient
        );
        assert_eq!(
            scopes.grant("Observation", Interaction::Create),
            Grant::None
        );
        assert_eq!(
            scopes.grant("Patient", Interaction::Read),
            Grant::LaunchPatient
        );
        assert_eq!(scopes.grant("Patient", Interaction::Update), Grant::None);
        assert_eq!(scopes.grant("Condition", Interaction::Update), Grant::Roles);
        assert_eq!(scopes.grant("Condition", Interaction::Read), Grant::None);
        assert_eq!(scopes.grant("Encounter", Interaction::Read), Grant::None);
    }

    #[test]
    fn wildcards_and_user_scopes_reach_as_far_as_the_roles() {
        let scopes = Scopes::parse("patient/*.rs user/Patient.cruds");
        assert_eq!(
            scopes.grant("Encounter", Interaction::Read),
            Grant::LaunchPatient
        );
        assert_eq!(scopes.grant("Patient", Interaction::Read), Grant::Roles);
        assert_eq!(scopes.grant("Patient", Interaction::Delete), Grant::Roles);
        assert_eq!(scopes.grant("Encounter", Interaction::Update), Grant::None);
        assert_eq!(
            Scopes::parse("system/*.rs").grant("Appointment", Interaction::Search),
            Grant::Roles
        );
    }

    #[test]
    fn malformed_and_query_scopes_grant_nothing() {
        for text in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.x",
            "patient/Observation.",
            "patient/Observation.rs?category=laboratory",
            "admin/Patient.rs",
            "patient/Obs-ervation.rs",
            "patient/.rs",
            "Patient.rs",
        ] {
            let scopes = Scopes::parse(text);
            assert!(scopes.is_empty(), "{text}");
        }
    }

    #[test]
    fn a_backend_client_is_granted_the_system_scopes_its_registration_covers() {
        let allowed = Scopes::parse("system/*.rs system/Patient.cruds");
        assert_eq!(
            allowed.system_scopes_within(
                "system/Observation.rs system/Patient.cud system/*.read system/Observation.c user/*.rs patient/*.rs openid"
            ),
            ["system/Observation.rs", "system/Patient.cud", "system/*.read"]
        );
        assert!(Scopes::parse("system/Patient.rs")
            .system_scopes_within("system/*.rs")
            .is_empty());
    }
}

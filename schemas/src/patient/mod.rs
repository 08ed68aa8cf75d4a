//! Wire types of the topic [`crate::topics::PATIENT`], one module per major version. Inside a
//! version only additive changes are allowed, so consumers must ignore fields they do not know.

pub mod v1;

//! The AsyncAPI 3.0 document of every topic the service publishes to: its channels (one per
//! topic, with the record key), each event type as a message with its CloudEvents headers and
//! its payload (the checked-in JSON Schema, or the sealed format and the schema of what it
//! opens to), and how a v1 message may grow. Generated from the same constants and wire types
//! the producer uses; the checked-in `asyncapi.json` beside `json/` is this document, and a test
//! fails when it drifts (`BLESS_SCHEMAS=1 cargo test -p schemas` regenerates both).

use serde_json::{json, Map, Value};

use crate::envelope::{
    CONTENT_TYPE, H_CONTENT_TYPE, H_EPOCH, H_EVENT_HASH, H_ID, H_POSITION, H_REQUEST_ID,
    H_SEQUENCE, H_SOURCE, H_SPEC_VERSION, H_SUBJECT, H_TIME, H_TRACEPARENT, H_TYPE, H_USER_ID,
    SOURCE, SPEC_VERSION,
};
use crate::sealed::{is_published_in_clear, ALGORITHM, SEALED_CONTENT_TYPE};
use crate::topics;

/// The version of the contract the document describes.
const CONTRACT_VERSION: &str = "1.0.0";

/// What the `ce_subject` (and the record key) of each topic's records is.
fn subject_of(topic: &str) -> &'static str {
    match topic {
        topics::CLINICAL_ENTRY => {
            "the entry's id (each observation, procedure and encounter is a stream of its own); the record key is the patient's id"
        }
        topics::APPOINTMENT => "the appointment's id; the record key is the patient's id",
        topics::NOTIFICATIONS => {
            "the notification's id, the same on every re-send; the record key is the patient's id"
        }
        topics::ACCESS => {
            "the access entry's id; the record key is the patient's id, whom the data names"
        }
        _ => "the patient's id, which is also the record key",
    }
}

/// A short name for a topic's channel.
fn channel_name(topic: &str) -> String {
    topic
        .trim_start_matches("patients.")
        .trim_end_matches(".v1")
        .replace('-', "_")
}

/// The CloudEvents headers every record carries, and those only some do.
fn headers() -> Value {
    let text = |description: &str| json!({ "type": "string", "description": description });
    let mut properties = Map::new();
    for (name, schema) in [
        (H_SPEC_VERSION, json!({ "type": "string", "const": SPEC_VERSION })),
        (
            H_ID,
            json!({ "type": "string", "format": "uuid", "description": "UUID v5 of the aggregate type, id and sequence (and epoch, when ce_epoch is sent): the same on every re-send of the event, so a consumer drops repeats by it. A consumer recomputes it from ce_type, ce_subject, ce_sequence and ce_epoch rather than trusting it." }),
        ),
        (H_SOURCE, json!({ "type": "string", "const": SOURCE })),
        (
            H_TYPE,
            text("org.nextgen-medtech.patients.<EventType>.v1: the event type and the contract's major version"),
        ),
        (H_TIME, json!({ "type": "string", "format": "date-time", "description": "when the event was stored (RFC 3339)" })),
        (H_SUBJECT, text("the aggregate's id: see the channel's description")),
        (H_SEQUENCE, text("the event's sequence within its subject, from 1, without gaps (decimal)")),
        (H_POSITION, text("the event's position in the store's global order (decimal)")),
        (H_USER_ID, text("the user or system whose command or read caused the event")),
        (H_EVENT_HASH, text("hex of the stored row's hash-chain link (tamper evidence)")),
        (
            H_CONTENT_TYPE,
            json!({ "type": "string", "enum": [CONTENT_TYPE, SEALED_CONTENT_TYPE], "description": "whether the value is the event's JSON or sealed; a consumer takes the contract's word (the message's contentType), not this header's" }),
        ),
        (
            H_REQUEST_ID,
            text("the id of the HTTP request that caused the event; absent for work the service does on its own (reminders, process managers)"),
        ),
        (
            H_TRACEPARENT,
            text("W3C trace context of the request that caused the event; absent as ce_requestid is"),
        ),
        (
            H_EPOCH,
            json!({ "type": "string", "pattern": "^[1-9][0-9]*$", "description": "the event store's epoch (decimal), sent only after the store was restored from a backup: each restore starts a new epoch, and events written in it take again sequences whose events were published before the restore, with other content. The epoch enters the ce_id (UUID v5 of \"<aggregate type>/<subject>/<sequence>@<epoch>\"); absent means epoch 0, whose ids have no suffix. A consumer keeping the last sequence per subject keeps the last (epoch, sequence)." }),
        ),
    ] {
        properties.insert(name.to_owned(), schema);
    }
    json!({
        "type": "object",
        "description": "CloudEvents 1.0 attributes in the Kafka protocol binding (binary mode), as record headers. ce_requestid and traceparent are sent only when an HTTP request caused the event, ce_epoch only after a restore of the store; every other header is always sent.",
        "required": [H_SPEC_VERSION, H_ID, H_SOURCE, H_TYPE, H_TIME, H_SUBJECT, H_SEQUENCE, H_POSITION, H_USER_ID, H_EVENT_HASH, H_CONTENT_TYPE],
        "properties": properties,
    })
}

/// The AsyncAPI document of `event_schemas`: each event type with the path of its JSON
/// Schema relative to the document (`json/<folder>/v1/<EventType>.schema.json`).
pub fn document(event_schemas: &[(&str, String)]) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for topic in topics::ALL {
        let name = channel_name(topic);
        let mut channel_messages = Map::new();
        let mut references = Vec::new();
        for (event_type, path) in event_schemas
            .iter()
            .filter(|(event_type, _)| topics::for_event_type(event_type) == topic)
        {
            let schema = json!({ "$ref": format!("./{path}") });
            let mut message = if is_published_in_clear(event_type) {
                json!({ "contentType": CONTENT_TYPE, "payload": schema })
            } else {
                json!({
                    "contentType": SEALED_CONTENT_TYPE,
                    "payload": { "$ref": "./json/sealed.schema.json" },
                    "x-opened-payload": schema,
                })
            };
            message["name"] = json!(event_type);
            message["title"] = json!(event_type);
            message["headers"] = json!({ "$ref": "#/components/schemas/CloudEventsHeaders" });
            message["bindings"] = json!({ "kafka": {
                "key": { "type": "string", "format": "uuid", "description": "the patient's id: every record about one patient is on one partition, in order" },
                "bindingVersion": "0.5.0",
            } });
            messages.insert((*event_type).to_owned(), message);
            channel_messages.insert(
                (*event_type).to_owned(),
                json!({ "$ref": format!("#/components/messages/{event_type}") }),
            );
            references.push(json!({ "$ref": format!("#/channels/{name}/messages/{event_type}") }));
        }
        channels.insert(
            name.clone(),
            json!({
                "address": topic,
                "title": topic,
                "description": format!("Every event of the {} aggregate. ce_subject: {}.", topics::aggregate_type(topic).unwrap_or_default(), subject_of(topic)),
                "messages": channel_messages,
            }),
        );
        operations.insert(
            format!("publish_{name}"),
            json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{name}") },
                "summary": "The relay publishes every committed event, at least once, in order per patient.",
                "messages": references,
            }),
        );
    }
    let name = channel_name(topics::AUDIT_HEAD);
    messages.insert(
        "AuditChainHead".to_owned(),
        json!({
            "name": "AuditChainHead",
            "title": "AuditChainHead",
            "contentType": CONTENT_TYPE,
            "payload": { "$ref": "./json/audit-head/v1/AuditChainHead.schema.json" },
            "headers": {
                "type": "object",
                "required": [H_CONTENT_TYPE],
                "properties": { H_CONTENT_TYPE: { "type": "string", "const": CONTENT_TYPE } },
            },
            "bindings": { "kafka": {
                "key": { "type": "string", "format": "uuid", "description": "the chain's id" },
                "bindingVersion": "0.5.0",
            } },
        }),
    );
    channels.insert(
        name.clone(),
        json!({
            "address": topics::AUDIT_HEAD,
            "title": topics::AUDIT_HEAD,
            "description": "The head of the audit log's hash chain (its id, last entry number and hash, and a MAC with the audit key), published by the active relay every kafka.audit_head_interval_secs while it moves. audit verify checks the database's chain against the highest head published for it: a chain rolled back, or cut short with the newest events, no longer holds it. One partition, kept forever.",
            "messages": { "AuditChainHead": { "$ref": "#/components/messages/AuditChainHead" } },
        }),
    );
    operations.insert(
        format!("publish_{name}"),
        json!({
            "action": "send",
            "channel": { "$ref": format!("#/channels/{name}") },
            "summary": "The relay publishes the audit chain's head while it moves.",
            "messages": [{ "$ref": format!("#/channels/{name}/messages/AuditChainHead") }],
        }),
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Patient Service events",
            "version": CONTRACT_VERSION,
            "description": format!(
                "Every event the patient service commits, published by its relay. Delivery is at least once, in order per patient: drop repeats by ce_id. \
    A v1 message may grow only by added optional properties (a consumer tolerates properties it does not know); anything else is a new major version (a new topic suffix and ce_type). \
    Sealed values: the record value is a JSON object {{alg: \"{ALGORITHM}\", kid: <the patient's id>, nonce, ciphertext}}, nonce the 12-byte AES-GCM nonce and ciphertext the encrypted event JSON followed by its 16-byte tag, both standard base64 with padding; \
    the associated data is the 16 bytes of the event's id (UUID v5 of aggregate type, subject, sequence and epoch, which a genuine ce_id equals: recompute it). \
    The key is the patient's 256-bit data key, fetched by a service with the `service` role from GET /v1/patients/{{id}}/data-key (JSON: patient_id, kid, alg, key in standard base64); cache it while keeping the patient's data, drop it on PatientForgotten, after which nothing of theirs can be opened. \
    x-opened-payload names the schema of what a sealed payload opens to. PatientForgotten and the access topic are published in the clear (ids and codes only)."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "The brokers of KAFKA_BROKERS; every topic name takes the kafka.topic_prefix setting in front.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": { "CloudEventsHeaders": headers() },
        },
    })
}

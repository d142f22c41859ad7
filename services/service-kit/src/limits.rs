//! Limits both services apply to the same input, so that the Gateway never accepts a signal
//! whose audit events DataStorage would refuse: the Gateway checks an alert's labels and
//! annotations, and the size of the audit events it will send, against the same numbers
//! DataStorage checks those events against.

use serde_json::Value;

/// A request body when a route sets no limit of its own.
pub const DEFAULT_BODY_BYTES: usize = 64 * 1024;
/// An oversized body is still read (and discarded) up to this size before the `413` answer,
/// so that the client gets the answer rather than a reset connection; past it the
/// connection is closed.
pub const MAX_DRAINED_BYTES: usize = 64 * 1024 * 1024;

/// A Gateway webhook body (`POST /api/v1/signals/prometheus`).
pub const MAX_WEBHOOK_BYTES: usize = 4 * 1024 * 1024;
/// One alert's labels: every name and value, in bytes, together.
pub const MAX_LABELS_BYTES: usize = 16 * 1024;
/// One alert's annotations: every name and value, in bytes, together.
pub const MAX_ANNOTATIONS_BYTES: usize = 64 * 1024;

/// One audit event as JSON, as sent: the body of `POST /api/v1/audit/events`, or one element
/// of a batch's `events`.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Events in one `POST /api/v1/audit/events/batch`.
pub const MAX_BATCH_EVENTS: usize = 500;
/// The body of one `POST /api/v1/audit/events/batch`.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Checks one string: PostgreSQL cannot store the NUL character in text or JSON.
pub fn check_text(field: &str, s: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err(format!(
            "{field} contains the NUL character (\\u0000), which cannot be stored"
        ));
    }
    Ok(())
}

/// Checks a map of strings (labels, annotations): no NUL, and names and values together at
/// most `max` bytes.
pub fn check_string_map<'a>(
    field: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    max: usize,
) -> Result<(), String> {
    let mut total = 0usize;
    for (name, value) in entries {
        check_text(&format!("{field} (a name)"), name)?;
        check_text(&format!("{field}.{name}"), value)?;
        total += name.len() + value.len();
    }
    if total > max {
        return Err(format!(
            "{field} hold {total} bytes of names and values, more than the {max} allowed"
        ));
    }
    Ok(())
}

/// Checks every string and key of a JSON value for NUL.
pub fn check_json_text(field: &str, value: &Value) -> Result<(), String> {
    match value {
        Value::String(s) => check_text(field, s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_json_text(&format!("{field}[{i}]"), v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            check_text(&format!("{field} (a key)"), k)?;
            check_json_text(&format!("{field}.{k}"), v)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Checks `labels` and `annotations` when an event's data carries them as objects of strings
/// (the Gateway's `signal.received` does), against the same limits the Gateway applies.
pub fn check_event_data_maps(field: &str, data: &Value) -> Result<(), String> {
    for (key, max) in [
        ("labels", MAX_LABELS_BYTES),
        ("annotations", MAX_ANNOTATIONS_BYTES),
    ] {
        if let Some(Value::Object(map)) = data.get(key) {
            let strings: Option<Vec<(&str, &str)>> = map
                .iter()
                .map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
                .collect();
            if let Some(strings) = strings {
                check_string_map(&format!("{field}.{key}"), strings, max)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_count_names_and_values() {
        let at_limit = "x".repeat(MAX_LABELS_BYTES - 1);
        assert!(check_string_map("labels", [("a", at_limit.as_str())], MAX_LABELS_BYTES).is_ok());
        let err =
            check_string_map("labels", [("ab", at_limit.as_str())], MAX_LABELS_BYTES).unwrap_err();
        assert!(err.contains("more than the 16384 allowed"), "{err}");
        let err = check_string_map("labels", [("a", "x\0")], 100).unwrap_err();
        assert!(err.starts_with("labels.a contains the NUL"), "{err}");
    }

    #[test]
    fn nul_is_found_anywhere_in_json() {
        assert!(check_json_text("data", &json!({"a": [1, "ok", {"b": null}]})).is_ok());
        let err = check_json_text("data", &json!({"a": [1, {"b": "x\u{0}"}]})).unwrap_err();
        assert!(err.starts_with("data.a[1].b contains"), "{err}");
        let err = check_json_text("data", &json!({"k\u{0}": 1})).unwrap_err();
        assert!(err.starts_with("data (a key)"), "{err}");
    }

    #[test]
    fn event_data_maps_use_the_gateway_limits() {
        let big = "v".repeat(MAX_ANNOTATIONS_BYTES);
        let data = json!({"labels": {"a": "b"}, "annotations": {"summary": big}});
        let err = check_event_data_maps("data", &data).unwrap_err();
        assert!(err.starts_with("data.annotations hold"), "{err}");
        // Other shapes are free-form data, not the Gateway's labels.
        assert!(check_event_data_maps("data", &json!({"labels": [1, 2]})).is_ok());
    }
}

//! The services' OpenAPI documents: served as they are kept in the repository
//! (`docs/openapi/*.json`, embedded at compile time), and the means for each service's tests
//! to check its document against its code: the operations it lists, and a validator for the
//! subset of JSON Schema the documents use, to check the services' own answers and the
//! documents' examples against the schemas.

use std::collections::BTreeSet;

use axum::{http::header, routing::MethodRouter};
use serde_json::Value;

/// `GET` of the document, as `application/json`.
pub fn document_route<S: Clone + Send + Sync + 'static>(doc: &'static str) -> MethodRouter<S> {
    axum::routing::get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) })
}

/// The document's operations, as `(path, METHOD)`.
pub fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ] {
                if item.get(method).is_some() {
                    ops.insert((path.clone(), method.to_uppercase()));
                }
            }
        }
    }
    ops
}

/// The schema of an operation's response for `status` and `application/json`.
pub fn response_schema<'a>(
    doc: &'a Value,
    path: &str,
    method: &str,
    status: u16,
) -> Option<&'a Value> {
    let op = &doc["paths"][path][method.to_lowercase()];
    let resp = resolve(doc, &op["responses"][status.to_string()]);
    resp["content"]["application/json"]
        .get("schema")
        .or_else(|| resp["content"]["text/plain"].get("schema"))
}

/// The schema of an operation's JSON request body.
pub fn request_schema<'a>(doc: &'a Value, path: &str, method: &str) -> Option<&'a Value> {
    doc["paths"][path][method.to_lowercase()]["requestBody"]["content"]["application/json"]
        .get("schema")
}

/// Every example of an operation's JSON request body (`example` and `examples`).
pub fn request_examples<'a>(doc: &'a Value, path: &str, method: &str) -> Vec<&'a Value> {
    let media =
        &doc["paths"][path][method.to_lowercase()]["requestBody"]["content"]["application/json"];
    let mut out: Vec<&Value> = media.get("example").into_iter().collect();
    if let Some(examples) = media["examples"].as_object() {
        out.extend(examples.values().filter_map(|e| e.get("value")));
    }
    out
}

/// Follows a local `$ref` (`#/components/...`).
pub fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = r
                .strip_prefix('#')
                .and_then(|pointer| doc.pointer(pointer))
                .unwrap_or(&Value::Null);
            resolve(doc, target)
        }
        None => v,
    }
}

/// Validates `value` against `schema` (the subset of OpenAPI 3.0 schemas the documents use:
/// `$ref`, `type`, `nullable`, `enum`, `properties`, `required`, `additionalProperties`,
/// `items`, `minItems`, `minimum`, `oneOf`). The error names where the value differs.
pub fn validate(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    validate_at(doc, schema, value, "$")
}

fn validate_at(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if value.is_null() && schema["nullable"] == Value::Bool(true) {
        return Ok(());
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let matching = options
            .iter()
            .filter(|s| validate_at(doc, s, value, at).is_ok())
            .count();
        return if matching == 1 {
            Ok(())
        } else {
            Err(format!(
                "{at}: matches {matching} of oneOf, not exactly one"
            ))
        };
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    let ty = schema["type"].as_str();
    let fits = match ty {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => return Err(format!("{at}: the validator does not know type {other}")),
    };
    if !fits {
        return Err(format!(
            "{at}: {value} is not of type {}",
            ty.unwrap_or("?")
        ));
    }
    if let Some(min) = schema["minimum"].as_f64() {
        if value.as_f64().is_some_and(|v| v < min) {
            return Err(format!("{at}: {value} is below the minimum {min}"));
        }
    }
    if let Value::Array(items) = value {
        if let Some(min) = schema["minItems"].as_u64() {
            if (items.len() as u64) < min {
                return Err(format!("{at}: fewer than {min} items"));
            }
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate_at(doc, item_schema, item, &format!("{at}[{i}]"))?;
            }
        }
    }
    if let Value::Object(map) = value {
        let props = schema["properties"].as_object();
        if let Some(required) = schema["required"].as_array() {
            for key in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(key) {
                    return Err(format!("{at}: required property {key} is missing"));
                }
            }
        }
        for (key, v) in map {
            let at = format!("{at}.{key}");
            match props.and_then(|p| p.get(key)) {
                Some(s) => validate_at(doc, s, v, &at)?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        return Err(format!("{at}: not a property the document allows"))
                    }
                    Some(Value::Bool(true)) | None => {}
                    Some(s) => validate_at(doc, s, v, &at)?,
                },
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
    fn validates_the_subset_the_documents_use() {
        let doc = json!({
            "components": {"schemas": {
                "Error": {"type": "object", "required": ["error"], "additionalProperties": false,
                          "properties": {"error": {"type": "string"}}},
                "Thing": {"type": "object", "required": ["n"], "properties": {
                    "n": {"type": "integer", "minimum": 1},
                    "tags": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "kind": {"type": "string", "enum": ["a", "b"]},
                    "note": {"type": "string", "nullable": true},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                }}
            }}
        });
        let thing = json!({"$ref": "#/components/schemas/Thing"});
        let error = json!({"$ref": "#/components/schemas/Error"});
        assert!(validate(
            &doc,
            &thing,
            &json!({"n": 1, "tags": ["x"], "kind": "a", "note": null, "labels": {"a": "b"}})
        )
        .is_ok());
        assert!(validate(&doc, &thing, &json!({"n": 0})).is_err());
        assert!(validate(&doc, &thing, &json!({"tags": ["x"]})).is_err());
        assert!(validate(&doc, &thing, &json!({"n": 1, "tags": []})).is_err());
        assert!(validate(&doc, &thing, &json!({"n": 1, "kind": "c"})).is_err());
        assert!(validate(&doc, &thing, &json!({"n": 1, "labels": {"a": 1}})).is_err());
        assert!(validate(&doc, &error, &json!({"error": "x"})).is_ok());
        let err = validate(&doc, &error, &json!({"error": "x", "more": 1})).unwrap_err();
        assert_eq!(err, "$.more: not a property the document allows");
    }

    #[test]
    fn lists_operations_and_examples() {
        let doc = json!({"paths": {
            "/a": {"get": {}, "post": {"requestBody": {"content": {"application/json": {
                "example": {"x": 1}, "examples": {"two": {"value": {"x": 2}}}}}}}},
            "/b": {"get": {}}
        }});
        let ops: Vec<_> = operations(&doc).into_iter().collect();
        assert_eq!(
            ops,
            [
                ("/a".to_owned(), "GET".to_owned()),
                ("/a".to_owned(), "POST".to_owned()),
                ("/b".to_owned(), "GET".to_owned())
            ]
        );
        assert_eq!(request_examples(&doc, "/a", "POST").len(), 2);
    }
}

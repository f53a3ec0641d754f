//! The OpenAPI 3 document served at `GET /openapi.json`.

use serde_json::{json, Value};

fn err(desc: &str) -> Value {
    json!({
        "description": desc,
        "headers": { "X-Request-ID": { "$ref": "#/components/headers/X-Request-ID" } },
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn unavailable(desc: &str) -> Value {
    json!({
        "description": desc,
        "headers": {
            "X-Request-ID": { "$ref": "#/components/headers/X-Request-ID" },
            "Retry-After": { "$ref": "#/components/headers/Retry-After" }
        },
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn classify_op(op_id: &str, summary: &str) -> Value {
    json!({
        "operationId": op_id,
        "summary": summary,
        "parameters": [
            { "$ref": "#/components/parameters/top_k" },
            { "$ref": "#/components/parameters/X-Request-ID" }
        ],
        "requestBody": {
            "required": true,
            "description": "The image: multipart/form-data with the image in the field `file`, or the raw bytes.",
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": { "file": { "type": "string", "format": "binary" } }
                    }
                },
                "image/*": { "schema": { "type": "string", "format": "binary" } },
                "application/octet-stream": { "schema": { "type": "string", "format": "binary" } }
            }
        },
        "responses": {
            "200": {
                "description": "Top-k predictions. `X-Imgclass-Model` names the model that answered.",
                "headers": {
                    "X-Request-ID": { "$ref": "#/components/headers/X-Request-ID" },
                    "X-Imgclass-Model": { "$ref": "#/components/headers/X-Imgclass-Model" }
                },
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ClassifyResponse" } } }
            },
            "400": err("Malformed request: empty body, broken multipart, no `file` field, bad `top_k`."),
            "408": err("The request body was not received within the request timeout."),
            "413": err("Body larger than --max-body-bytes."),
            "415": err("Unsupported content type, or bytes that are not a supported image format."),
            "422": err("Undecodable (corrupt, truncated) image, or more pixels than --max-pixels."),
            "500": err("The server itself failed (full profile: both models failed), or --fault error."),
            "503": unavailable("Not ready, shutting down, overloaded or out of time: retry later or elsewhere.")
        }
    })
}

fn simple_get(op_id: &str, summary: &str, ok: Value, extra: Option<(&str, Value)>) -> Value {
    let mut responses = json!({ "200": ok });
    if let Some((code, v)) = extra {
        responses[code] = v;
    }
    json!({ "operationId": op_id, "summary": summary, "responses": responses })
}

fn json_ok(desc: &str, schema: Value) -> Value {
    json!({ "description": desc, "content": { "application/json": { "schema": schema } } })
}

/// The document. Every (method, path) of `routes::ROUTES` appears here and nothing else.
pub fn document() -> Value {
    let status_schema = json!({
        "type": "object", "required": ["status"],
        "properties": { "status": { "type": "string" } }
    });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "imgclass",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "ImageNet classification with Wide ResNet-50-2 (profile full, with in-process MobileNetV3 fallback) or MobileNetV3-Large (profile lite)."
        },
        "paths": {
            "/classify": { "post": classify_op("classify", "Classify an image") },
            "/": { "post": classify_op("classifyRoot", "Same as POST /classify (the ingress fallback path)") },
            "/healthz": { "get": simple_get("healthz", "Liveness: 200 while the process serves HTTP",
                json_ok("Alive", status_schema.clone()),
                Some(("500", err("An inference engine thread has stopped: restart the process.")))) },
            "/readyz": { "get": simple_get("readyz", "Readiness: 200 once models are loaded and warmed up",
                json_ok("Ready", status_schema),
                Some(("503", unavailable("Not ready yet, or shutting down.")))) },
            "/metrics": { "get": simple_get("metrics", "Prometheus metrics",
                json!({ "description": "Prometheus text exposition format",
                        "content": { "text/plain": { "schema": { "type": "string" } } } }), None) },
            "/info": { "get": simple_get("info", "Profile, models, limits and version",
                json_ok("Server information", json!({ "$ref": "#/components/schemas/Info" })), None) },
            "/openapi.json": { "get": simple_get("openapi", "This document",
                json_ok("OpenAPI 3 document", json!({ "type": "object" })), None) }
        },
        "components": {
            "parameters": {
                "top_k": {
                    "name": "top_k", "in": "query", "required": false,
                    "description": "Number of predictions (1..=1000, default 5).",
                    "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 5 }
                },
                "X-Request-ID": {
                    "name": "X-Request-ID", "in": "header", "required": false,
                    "description": "Echoed in the response; generated when absent.",
                    "schema": { "type": "string" }
                }
            },
            "headers": {
                "X-Request-ID": { "description": "The request id (echoed or generated).", "schema": { "type": "string" } },
                "X-Imgclass-Model": { "description": "The model that answered.", "schema": { "$ref": "#/components/schemas/Model" } },
                "Retry-After": { "description": "Seconds to wait before retrying.", "schema": { "type": "integer" } }
            },
            "schemas": {
                "Model": { "type": "string", "enum": ["wide_resnet50_2", "mobilenet_v3_large"] },
                "Prediction": {
                    "type": "object", "required": ["label", "index", "probability"],
                    "properties": {
                        "label": { "type": "string", "example": "beagle" },
                        "index": { "type": "integer", "minimum": 0, "maximum": 999 },
                        "probability": { "type": "number", "minimum": 0, "maximum": 1 }
                    }
                },
                "ClassifyResponse": {
                    "type": "object", "required": ["model", "profile", "fallback", "predictions"],
                    "properties": {
                        "model": { "$ref": "#/components/schemas/Model" },
                        "profile": { "type": "string", "enum": ["full", "lite"] },
                        "fallback": { "type": "boolean" },
                        "fallback_reason": { "type": "string", "enum": ["error", "deadline"] },
                        "predictions": { "type": "array", "items": { "$ref": "#/components/schemas/Prediction" } }
                    }
                },
                "Error": {
                    "type": "object", "required": ["error", "error_type"],
                    "properties": {
                        "error": { "type": "string" },
                        "error_type": { "type": "string", "example": "not_an_image" }
                    }
                },
                "Info": {
                    "type": "object", "required": ["name", "version", "profile", "models", "ready", "limits"],
                    "properties": {
                        "name": { "type": "string" },
                        "version": { "type": "string" },
                        "profile": { "type": "string" },
                        "models": { "type": "object" },
                        "ready": { "type": "boolean" },
                        "limits": { "type": "object" },
                        "threads": { "type": "integer" },
                        "fault": { "type": "string" }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::routes::ROUTES;

    #[test]
    fn document_lists_exactly_the_routes() {
        let doc = document();
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
    }

    #[test]
    fn every_ref_resolves() {
        let doc = document();
        let mut refs = Vec::new();
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        if k == "$ref" {
                            out.push(v.as_str().unwrap().to_string());
                        } else {
                            walk(v, out);
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        walk(&doc, &mut refs);
        assert!(refs.len() > 10);
        for r in refs {
            let ptr = r.strip_prefix('#').unwrap();
            assert!(doc.pointer(ptr).is_some(), "unresolved {r}");
        }
    }
}

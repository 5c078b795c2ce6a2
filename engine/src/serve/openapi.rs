//! `GET /api/openapi.json`: an OpenAPI 3.1 document written from the route table, so it lists
//! exactly the routes the server answers, with their parameters and who may call them.

use axum::Json;
use serde_json::{Map, Value, json};

use super::{Guard, routes};

/// The document for every route of [`routes`].
pub fn spec() -> Value {
    let mut paths = Map::new();
    for (r, _) in routes() {
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        params.extend(r.query.iter().map(|(name, desc)| {
            json!({ "name": name, "in": "query", "required": false, "description": desc, "schema": { "type": "string" } })
        }));
        let mut op = json!({
            "summary": r.summary,
            "parameters": params,
            "responses": {
                "200": { "description": "OK", "content": { "application/json": {} } },
                "401": { "description": "the token is missing or wrong" },
                "403": { "description": "another Host or Origin" },
                "404": { "description": "no such pipeline phase, run or step" }
            }
        });
        if r.guard == Guard::Token {
            op["security"] = json!([{ "token": [] }]);
        }
        if r.path == "/api/events" {
            op["responses"]["101"] = json!({ "description": "switching to the WebSocket" });
        }
        let entry = paths
            .entry(r.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[r.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "forge serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A forge store and pipeline, watched and driven over HTTP. Reads need the token only when the server listens beyond this machine; routes marked with `security` always do."
        },
        "components": {
            "securitySchemes": {
                "token": { "type": "http", "scheme": "bearer", "description": "the token `forge serve` prints at start (also accepted as `?token=` or the `forge_token` cookie)" }
            }
        },
        "paths": paths,
    })
}

pub async fn document() -> Json<Value> {
    Json(spec())
}

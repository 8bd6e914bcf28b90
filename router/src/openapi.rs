//! The public API's OpenAPI 3.1 document, served at `/openapi.json`: the request and
//! response schemas generated from their types (utoipa), each route's operation listed
//! here, and checked against the router's route table so the two cannot drift apart.

use axum::http::Method;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Content, InfoBuilder, OpenApi, Ref, Required, ResponseBuilder};
use utoipa::OpenApi as _;

use crate::api::{
    ClusterResponse, DeleteResponse, EventsRequest, EventsResponse, IngestResponse,
    IngestTextsRequest, IngestVectorsRequest, ItemResponse, RecommendRequest, RecommendResponse,
    SearchVectorsRequest, SearchVectorsResponse, UserHistoryResponse,
};

#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    RecommendRequest,
    RecommendResponse,
    SearchVectorsRequest,
    SearchVectorsResponse,
    IngestTextsRequest,
    IngestVectorsRequest,
    IngestResponse,
    ItemResponse,
    DeleteResponse,
    ClusterResponse,
    EventsRequest,
    EventsResponse,
    UserHistoryResponse,
)))]
struct Schemas;

/// One documented operation: method, path, summary, request and answer schemas.
struct Op {
    method: Method,
    path: &'static str,
    summary: &'static str,
    request: Option<&'static str>,
    answer: Option<&'static str>,
}

/// Every operation of the public API.
fn operations() -> Vec<Op> {
    let op = |method, path, summary, request, answer| Op {
        method,
        path,
        summary,
        request,
        answer,
    };
    vec![
        op(
            Method::POST,
            "/v1/recommend",
            "Recommend for a user's cross-scenario history",
            Some("RecommendRequest"),
            Some("RecommendResponse"),
        ),
        op(
            Method::POST,
            "/v1/search",
            "Search with query vectors the caller brings",
            Some("SearchVectorsRequest"),
            Some("SearchVectorsResponse"),
        ),
        op(
            Method::POST,
            "/v1/items",
            "Ingest item texts through the item tower",
            Some("IngestTextsRequest"),
            Some("IngestResponse"),
        ),
        op(
            Method::POST,
            "/v1/items/vectors",
            "Ingest precomputed item vectors",
            Some("IngestVectorsRequest"),
            Some("IngestResponse"),
        ),
        op(
            Method::GET,
            "/v1/items/{id}",
            "An item, its vector and payload",
            None,
            Some("ItemResponse"),
        ),
        op(
            Method::DELETE,
            "/v1/items/{id}",
            "Delete an item",
            None,
            Some("DeleteResponse"),
        ),
        op(
            Method::POST,
            "/v1/events",
            "Store users' events (the newest max_history per user are kept)",
            Some("EventsRequest"),
            Some("EventsResponse"),
        ),
        op(
            Method::GET,
            "/v1/users/{id}/history",
            "A user's stored history",
            None,
            Some("UserHistoryResponse"),
        ),
        op(
            Method::DELETE,
            "/v1/users/{id}",
            "Remove everything stored about a user",
            None,
            Some("DeleteResponse"),
        ),
        op(
            Method::GET,
            "/v1/cluster",
            "The model, the slots and every shard group",
            None,
            Some("ClusterResponse"),
        ),
        op(
            Method::GET,
            "/metrics",
            "Prometheus metrics (text)",
            None,
            None,
        ),
        op(Method::GET, "/healthz", "Liveness", None, None),
        op(Method::GET, "/readyz", "Readiness", None, None),
        op(Method::GET, "/openapi.json", "This document", None, None),
        op(Method::GET, "/ui", "The dashboard (HTML)", None, None),
    ]
}

fn json(schema: &str) -> Content {
    Content::new(Some(Ref::from_schema_name(schema)))
}

/// The document.
pub fn document() -> OpenApi {
    let mut doc = Schemas::openapi();
    doc.info = InfoBuilder::new()
        .title("redrec")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Cross-scenario two-tower recommendation: the public API",
        ))
        .build();
    let error = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "error",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("code", ObjectBuilder::new().schema_type(Type::String))
                .property("message", ObjectBuilder::new().schema_type(Type::String))
                .required("code")
                .required("message"),
        )
        .required("error")
        .build();
    if let Some(components) = doc.components.as_mut() {
        components.schemas.insert("Error".into(), error.into());
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
    for o in operations() {
        let mut op = OperationBuilder::new().summary(Some(o.summary)).response(
            "default",
            ResponseBuilder::new()
                .description("An error: {\"error\": {\"code\", \"message\"}}")
                .content("application/json", json("Error")),
        );
        op = match o.answer {
            Some(schema) => op.response(
                "200",
                ResponseBuilder::new()
                    .description("Success")
                    .content("application/json", json(schema)),
            ),
            None => op.response("200", ResponseBuilder::new().description("Success")),
        };
        if let Some(schema) = o.request {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json(schema))
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        if o.path.contains("{id}") {
            op = op.parameter(
                ParameterBuilder::new()
                    .name("id")
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        if !matches!(o.path, "/healthz" | "/readyz" | "/openapi.json") {
            op = op
                .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
                .security(SecurityRequirement::new("apiKey", Vec::<String>::new()));
        }
        let method = match o.method {
            Method::POST => HttpMethod::Post,
            Method::DELETE => HttpMethod::Delete,
            _ => HttpMethod::Get,
        };
        let item = PathItem::new(method, op);
        match doc.paths.paths.get_mut(o.path) {
            Some(existing) => existing.merge_operations(item),
            None => {
                doc.paths.paths.insert(o.path.to_string(), item);
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_exactly_the_routes_served() {
        let mut documented: Vec<(String, String)> = operations()
            .into_iter()
            .map(|o| (o.method.to_string(), o.path.to_string()))
            .collect();
        let mut served: Vec<(String, String)> = crate::server::routes(false)
            .into_iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
        let schemas = &doc["components"]["schemas"];
        for name in [
            "RecommendRequest",
            "RecommendResponse",
            "Error",
            "HistoryEvent",
        ] {
            assert!(schemas[name].is_object(), "{name} missing");
        }
        let recommend = &doc["paths"]["/v1/recommend"]["post"];
        assert_eq!(
            recommend["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/RecommendRequest"
        );
        let item = &doc["paths"]["/v1/items/{id}"];
        assert!(
            item["get"].is_object() && item["delete"].is_object(),
            "{item}"
        );
    }
}

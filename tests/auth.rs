//! With API keys and a cluster credential configured, every route of every server, as its
//! own route table lists it, refuses a caller without the right credential (401/403 with
//! the JSON error); the probes stay open; a read key cannot write; and the tiers, calling
//! each other with the credential, still serve a recommend.

mod support;

use std::time::Duration;

use axum::http::Method;
use redrec_wire::auth::{Access, Route, Scope};
use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "cluster-credential-for-tests";
const READ: &str = "reader-key-0123456789";
const WRITE: &str = "writer-key-0123456789";
const ADMIN: &str = "admin-key-0123456789";

/// `(method, path, access)` of a route table, path parameters filled in.
fn walk<S>(routes: Vec<Route<S>>) -> Vec<(Method, String, Access)> {
    routes
        .into_iter()
        .map(|r| {
            let path = r.path.replace("{g}", "0").replace("{id}", "x");
            (r.method, path, r.access)
        })
        .collect()
}

/// Calls `method path` on `base` with `headers`; the status and the JSON body.
fn call(base: &str, method: &Method, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = http().request(method.clone(), format!("{base}{path}"));
    if *method == Method::POST {
        req = req.header("content-type", "application/json").body("{}");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn refused(status: u16, body: &Value, want: u16, what: &str) {
    assert_eq!(status, want, "{what}: {body}");
    let code = if want == 401 {
        "unauthenticated"
    } else {
        "forbidden"
    };
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
}

fn allowed(status: u16, body: &Value, what: &str) {
    assert!(status != 401 && status != 403, "{what}: {status} {body}");
}

/// Every internal route at `base`: refused without the credential or with a wrong one,
/// let through with it; open routes open.
fn check_internal(base: &str, routes: Vec<(Method, String, Access)>) {
    let cred = [("x-redrec-cluster-token", TOKEN)];
    let wrong = [("x-redrec-cluster-token", "not-the-credential")];
    for (method, path, access) in routes {
        let what = format!("{method} {base}{path}");
        let (s, b) = call(base, &method, &path, &[]);
        match access {
            Access::Open => allowed(s, &b, &what),
            Access::Cluster => {
                refused(s, &b, 401, &what);
                let (s, b) = call(base, &method, &path, &wrong);
                refused(s, &b, 403, &what);
                let (s, b) = call(base, &method, &path, &cred);
                allowed(s, &b, &what);
            }
            Access::Key(_) => panic!("{what}: an internal route asks for an API key"),
        }
    }
}

#[test]
fn every_route_wants_its_credential_and_the_tiers_carry_theirs() {
    // Every process this test starts inherits both.
    std::env::set_var("REDREC_CLUSTER_TOKEN", TOKEN);
    std::env::set_var(
        "REDREC_API_KEYS",
        format!("read:{READ},write:{WRITE},admin:{ADMIN}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Three shard nodes (two Raft groups and the meta group, whose map the router
    // follows): replication, snapshots and the map travel with the credential.
    let cluster = layout(d)
        .cluster(2, 3, &["--sessions", "1"], "127.0.0.1:0", &[])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (router, encoder, node) = (&cluster.router, &cluster.encoder, &cluster.shards[0]);
    let data = d.join("lone");
    let shard = Proc::spawn(
        "lone",
        &[
            "shard",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ],
        d,
    );

    // The public API: each route wants a key with its scope; an admin key may do all.
    let public = walk(redrec_router::server::routes(false));
    let opened: Vec<&str> = public
        .iter()
        .filter(|r| r.2 == Access::Open)
        .map(|r| r.1.as_str())
        .collect();
    assert_eq!(opened, ["/openapi.json", "/ui", "/healthz", "/readyz"]);
    let base = &router.addr;
    for (method, path, access) in &public {
        let what = format!("{method} {path}");
        let (s, b) = call(base, method, path, &[]);
        let Access::Key(scope) = *access else {
            allowed(s, &b, &what);
            continue;
        };
        refused(s, &b, 401, &what);
        let (s, b) = call(base, method, path, &[("x-api-key", "not-a-key-0123456789")]);
        refused(s, &b, 401, &what);
        for (key, has) in [(READ, Scope::Read), (WRITE, Scope::Write)] {
            let bearer = format!("Bearer {key}");
            let (s, b) = call(base, method, path, &[("authorization", &bearer)]);
            if has == scope {
                allowed(s, &b, &what);
            } else {
                refused(s, &b, 403, &what);
            }
        }
        let (s, b) = call(base, method, path, &[("x-api-key", ADMIN)]);
        allowed(s, &b, &what);
    }

    // Internal APIs: the encoder, a lone shard, a node (its groups, its administration,
    // its Raft transport).
    check_internal(&encoder.addr, walk(redrec_encoder::server::routes()));
    check_internal(&shard.addr, walk(redrec_shard::server::lone_routes()));
    let mut node_routes = walk(redrec_shard::server::group_routes());
    node_routes.extend(walk(redrec_shard::server::admin_routes()));
    node_routes.extend(walk(redrec_shard::raft::transport::routes()));
    check_internal(&node.addr, node_routes);

    // The tiers call each other with the credential: ingest through the item tower and
    // the shard, then recommend through the user tower.
    let client = http();
    let post = |key: &str, path: &str, body: Value| {
        let resp = client
            .post(format!("{base}{path}"))
            .header("x-api-key", key)
            .json(&body)
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().unwrap_or(Value::Null))
    };
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("t{i}"), "text": format!("espresso grinder {i} | coffee")}))
        .collect();
    let (s, b) = post(WRITE, "/v1/items", json!({ "items": items }));
    assert_eq!(s, 200, "{b}");
    let history = json!([{"item_id": "t1", "scenario": "search"}]);
    // Reads go to any caught-up replica: a follower may apply the items a moment after
    // the leader acknowledged them.
    let (mut s, mut b) = (0, Value::Null);
    support::raft::eventually(Duration::from_secs(10), "the items are readable", || {
        (s, b) = post(
            READ,
            "/v1/recommend",
            json!({"history": history, "scenario": "homefeed", "k": 5}),
        );
        s == 200
    });
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["items"].as_array().unwrap().len(), 5, "{b}");
    // A read key cannot write.
    let (s, b) = post(
        READ,
        "/v1/items",
        json!({ "items": [{"id": "r", "text": "x"}] }),
    );
    refused(s, &b, 403, "write with a read key");
}

//! Orgs, members, users, API keys and the audit log over HTTP, on both backends — and the
//! access rules: no token 401, another org's object 404, a member on an owner's operation 403,
//! an API key within its org and scopes only.

mod common;

use actix_web::http::StatusCode;
use actix_web::test;
use common::{bearer, call, sign_in, Fixture, ADMIN, PASSWORD};
use credex_api::startup::app;
use credex_tests::TestDb;
use serde_json::{json, Value};

fn post(uri: &str, body: Value) -> test::TestRequest {
    test::TestRequest::post().uri(uri).set_json(body)
}

fn get(uri: &str) -> test::TestRequest {
    test::TestRequest::get().uri(uri)
}

async fn orgs_keys_and_access(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let admin = sign_in(&service, ADMIN, PASSWORD).await;

    // Admins create orgs and users.
    let created = call(
        &service,
        bearer(
            post("/v1/admin/orgs", json!({"name": "Acme", "plan": "teams"})),
            &admin,
        ),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let acme = created.body["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        created.headers.get("location").expect("Location"),
        &format!("/v1/orgs/{acme}")
    );
    let other = call(
        &service,
        bearer(
            post("/v1/admin/orgs", json!({"name": "Globex", "plan": "free"})),
            &admin,
        ),
    )
    .await;
    let globex = other.body["id"].as_str().expect("an id").to_owned();

    // Admins list orgs: filtered, and paged without loss or repetition.
    let listed = call(
        &service,
        bearer(
            get("/v1/admin/orgs?name=aCmE&plan=teams&frozen=false"),
            &admin,
        ),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let orgs = listed.body["orgs"].as_array().expect("orgs");
    assert_eq!(orgs.len(), 1, "{}", listed.body);
    assert_eq!(orgs[0]["id"], acme.as_str());
    assert_eq!(orgs[0]["plan"], "teams");
    assert!(listed.body["next"].is_null());
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(cursor) => format!("/v1/admin/orgs?limit=1&cursor={cursor}"),
            None => "/v1/admin/orgs?limit=1".to_owned(),
        };
        let page = call(&service, bearer(get(&uri), &admin)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for org in page.body["orgs"].as_array().expect("orgs") {
            seen.push(org["id"].as_str().expect("an id").to_owned());
        }
        match page.body["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no org twice: {seen:?}");
    assert!(seen.contains(&acme) && seen.contains(&globex), "{seen:?}");
    let from_nil = call(
        &service,
        bearer(
            get("/v1/admin/orgs?cursor=00000000-0000-0000-0000-000000000000"),
            &admin,
        ),
    )
    .await;
    assert_eq!(
        from_nil.body["orgs"].as_array().map(Vec::len),
        Some(seen.len())
    );
    let after_max = call(
        &service,
        bearer(
            get("/v1/admin/orgs?cursor=FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"),
            &admin,
        ),
    )
    .await;
    assert_eq!(after_max.status, StatusCode::OK);
    assert_eq!(after_max.body["orgs"], json!([]));
    let frozen = call(&service, bearer(get("/v1/admin/orgs?frozen=true"), &admin)).await;
    assert_eq!(frozen.body["orgs"], json!([]), "{}", frozen.body);
    for bad in [
        "/v1/admin/orgs?limit=0",
        "/v1/admin/orgs?limit=1001",
        "/v1/admin/orgs?plan=gold",
        "/v1/admin/orgs?cursor=yesterday",
        "/v1/admin/orgs?name=%20%20",
    ] {
        let refused = call(&service, bearer(get(bad), &admin)).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(
            refused.headers.get("content-type").expect("a type"),
            "application/problem+json",
            "{bad}"
        );
    }
    let bad = call(
        &service,
        bearer(
            post("/v1/admin/orgs", json!({"name": "", "plan": "gold"})),
            &admin,
        ),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        bad.body["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("name:"),
        "{}",
        bad.body
    );
    for (email, org, role) in [
        ("alice@acme.example", &acme, "owner"),
        ("bob@acme.example", &acme, "member"),
        ("carol@globex.example", &globex, "owner"),
    ] {
        let user = json!({"email": email, "password": PASSWORD, "org_id": org, "role": role});
        let answer = call(
            &service,
            bearer(post("/v1/admin/users", user.clone()), &admin),
        )
        .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        let again = call(&service, bearer(post("/v1/admin/users", user), &admin)).await;
        assert_eq!(again.status, StatusCode::CONFLICT);
    }
    let alice = sign_in(&service, "alice@acme.example", PASSWORD).await;
    let bob = sign_in(&service, "bob@acme.example", PASSWORD).await;
    let carol = sign_in(&service, "carol@globex.example", PASSWORD).await;

    // Only admins reach admin routes.
    let refused = call(
        &service,
        bearer(
            post("/v1/admin/orgs", json!({"name": "X", "plan": "free"})),
            &alice,
        ),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let refused = call(
        &service,
        post("/v1/admin/orgs", json!({"name": "X", "plan": "free"})),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    // Members see their org; another org is not there for them.
    let seen = call(&service, bearer(get(&format!("/v1/orgs/{acme}")), &bob)).await;
    assert_eq!(
        (seen.status, seen.body["name"].clone()),
        (StatusCode::OK, json!("Acme"))
    );
    let hidden = call(&service, bearer(get(&format!("/v1/orgs/{globex}")), &bob)).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    let nonsense = call(&service, bearer(get("/v1/orgs/not-a-uuid"), &bob)).await;
    assert_eq!(nonsense.status, StatusCode::NOT_FOUND);
    let members = call(
        &service,
        bearer(get(&format!("/v1/orgs/{acme}/members")), &bob),
    )
    .await;
    assert_eq!(
        members.body.as_array().map(Vec::len),
        Some(2),
        "{}",
        members.body
    );

    // Owners make API keys; members may not; the key is shown once.
    let keys_uri = format!("/v1/orgs/{acme}/api-keys");
    let refused = call(
        &service,
        bearer(
            post(&keys_uri, json!({"name": "w", "scopes": ["read"]})),
            &bob,
        ),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let made = call(
        &service,
        bearer(
            post(&keys_uri, json!({"name": "reader", "scopes": ["read"]})),
            &alice,
        ),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let key = made.body["key"].as_str().expect("the key").to_owned();
    let key_id = made.body["api_key"]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    assert!(key.starts_with("cdx_"));
    let writer = call(
        &service,
        bearer(
            post(
                &keys_uri,
                json!({"name": "writer", "scopes": ["usage:write"]}),
            ),
            &alice,
        ),
    )
    .await;
    let writer = writer.body["key"].as_str().expect("the key").to_owned();
    let bad_scope = call(
        &service,
        bearer(
            post(&keys_uri, json!({"name": "x", "scopes": ["admin"]})),
            &alice,
        ),
    )
    .await;
    assert_eq!(bad_scope.status, StatusCode::UNPROCESSABLE_ENTITY);
    let listed = call(&service, bearer(get(&keys_uri), &alice)).await;
    assert_eq!(listed.body.as_array().map(Vec::len), Some(2));
    assert!(
        !listed.body.to_string().contains(&key),
        "secrets are never listed"
    );

    // A key acts in its org, within its scopes, and cannot make keys.
    let by_key = call(&service, bearer(get(&format!("/v1/orgs/{acme}")), &key)).await;
    assert_eq!(by_key.status, StatusCode::OK);
    let me = call(&service, bearer(get("/v1/me"), &key)).await;
    assert_eq!(me.body["api_key"]["id"], json!(key_id));
    let elsewhere = call(&service, bearer(get(&format!("/v1/orgs/{globex}")), &key)).await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    let no_scope = call(&service, bearer(get(&format!("/v1/orgs/{acme}")), &writer)).await;
    assert_eq!(no_scope.status, StatusCode::FORBIDDEN);
    let key_makes_key = call(
        &service,
        bearer(
            post(&keys_uri, json!({"name": "k", "scopes": ["read"]})),
            &key,
        ),
    )
    .await;
    assert_eq!(key_makes_key.status, StatusCode::FORBIDDEN);

    // Revocation: another org's owner cannot, the org's owner can, and the key stops at once.
    let revoke_uri = format!("{keys_uri}/{key_id}");
    let foreign = call(
        &service,
        bearer(test::TestRequest::delete().uri(&revoke_uri), &carol),
    )
    .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    let via_own_org = call(
        &service,
        bearer(
            test::TestRequest::delete().uri(&format!("/v1/orgs/{globex}/api-keys/{key_id}")),
            &carol,
        ),
    )
    .await;
    assert_eq!(
        via_own_org.status,
        StatusCode::NOT_FOUND,
        "a key of another org is not found"
    );
    let revoked = call(
        &service,
        bearer(test::TestRequest::delete().uri(&revoke_uri), &alice),
    )
    .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let dead = call(&service, bearer(get(&format!("/v1/orgs/{acme}")), &key)).await;
    assert_eq!(dead.status, StatusCode::UNAUTHORIZED);

    // Admins change an org's standing; bad values are refused.
    let patch = |body: Value| {
        bearer(
            test::TestRequest::patch()
                .uri(&format!("/v1/admin/orgs/{acme}"))
                .set_json(body),
            &admin,
        )
    };
    let changed = call(
        &service,
        patch(json!({"verification_level": 2, "frozen": true})),
    )
    .await;
    assert_eq!(
        (
            changed.body["verification_level"].clone(),
            changed.body["frozen"].clone()
        ),
        (json!(2), json!(true))
    );
    let refused = call(&service, patch(json!({"verification_level": 7}))).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Everything above is in the audit log, for admins only, paged without loss.
    let refused = call(&service, bearer(get("/v1/admin/audit"), &alice)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let refused = call(&service, bearer(get("/v1/admin/orgs"), &alice)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let mut actions = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(cursor) => format!("/v1/admin/audit?org={acme}&limit=2&cursor={cursor}"),
            None => format!("/v1/admin/audit?org={acme}&limit=2"),
        };
        let page = call(&service, bearer(get(&uri), &admin)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for entry in page.body["entries"].as_array().expect("entries") {
            actions.push(entry["action"].as_str().expect("an action").to_owned());
        }
        match page.body["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        actions,
        vec![
            "org.create",
            "user.create",
            "user.create",
            "api_key.create",
            "api_key.create",
            "api_key.revoke",
            "org.change"
        ]
    );
    let bad = call(
        &service,
        bearer(get("/v1/admin/audit?since=yesterday"), &admin),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    fixture.close().await;
}

credex_tests::on_both_backends!(orgs_keys_and_access);

/// A TCP proxy to PostgreSQL that can be cut: cut, it closes every connection it carries and
/// every new one as soon as it is accepted — the database out of reach, as in a restart.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn to(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address");
        let (cut, watching) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *watching.borrow() {
                    continue;
                }
                let mut watching = watching.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watching.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// The database out of reach is 503 problem+json with `Retry-After` (worth trying again), not
/// 500; once it is back, the same request answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_out_of_reach_is_503_then_answers_again() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let rest = db
        .url()
        .strip_prefix("postgres://")
        .expect("a PostgreSQL URL");
    let (user, rest) = rest
        .rsplit_once('@')
        .map_or(("", rest), |(user, rest)| (user, rest));
    let (host, path) = rest.split_once('/').expect("a database in the URL");
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    let upstream = tokio::net::lookup_host(host)
        .await
        .expect("PostgreSQL's address")
        .next()
        .expect("an address");
    let proxy = Proxy::to(upstream).await;
    let at = if user.is_empty() { "" } else { "@" };
    let proxied = format!("postgres://{user}{at}{}/{path}", proxy.addr);
    let fixture = Fixture::on_url(&proxied).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let list = || bearer(get("/v1/admin/orgs"), &admin);
    assert_eq!(call(&service, list()).await.status, StatusCode::OK);

    proxy.set_cut(true);
    let down = call(&service, list()).await;
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        down.body
    );
    assert_eq!(
        down.headers.get("content-type").expect("a type"),
        "application/problem+json"
    );
    assert_eq!(down.body["type"], "https://credex.dev/problems/unavailable");
    assert!(down.headers.get("retry-after").is_some(), "Retry-After");

    proxy.set_cut(false);
    assert_eq!(call(&service, list()).await.status, StatusCode::OK);
    fixture.close().await;
    db.finish().await;
}

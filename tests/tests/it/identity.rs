//! Identity storage: orgs, users, memberships, refresh-token rotation with reuse detection,
//! API keys and the audit log, on both backends. Org scoping is checked everywhere: a member
//! or key of one org is never returned when asking in another.

use std::collections::HashSet;
use std::sync::Arc;

use credex_ledger::{Clock, ManualClock, OrgId, Timestamp};
use credex_store::identity::{
    ApiKeyId, ApiKeyName, ApiKeyPrefix, AuditAction, AuditEntry, AuditFilter, Email, IdentityError,
    IdentityStore, NewApiKey, OrgFilter, OrgName, PasswordHash, Plan, Role, RotateOutcome, Scope,
    Scopes, TokenFamilyId, TokenHash, UserId, VerificationLevel,
};
use credex_store::Store;
use credex_tests::{on_both_backends, TestDb};
use sqlx::Connection;

/// 2025-10-09T08:53:20Z, in µs.
const T0: Timestamp = Timestamp::from_micros(1_760_000_000_000_000);
const HOUR: i64 = 3_600_000_000;

fn clock() -> Arc<dyn Clock> {
    Arc::new(ManualClock::new(T0))
}

fn at(hours: i64) -> Timestamp {
    T0.plus_micros(hours * HOUR)
}

fn random_hash() -> TokenHash {
    TokenHash::from_bytes(rand::random())
}

fn phc(salt: &str) -> PasswordHash {
    PasswordHash::new(format!(
        "$argon2id$v=19$m=19456,t=2,p=1${salt}$aGFzaGhhc2hoYXNo"
    ))
    .expect("a PHC string")
}

fn email(text: &str) -> Email {
    Email::parse(text).expect("an e-mail address")
}

fn org_name(text: &str) -> OrgName {
    OrgName::parse(text).expect("an org name")
}

async fn store(db: &TestDb) -> Arc<dyn Store> {
    db.store(clock()).await
}

async fn new_user(ids: &dyn IdentityStore, address: &str) -> UserId {
    ids.create_user(&email(address), &phc("c2FsdA"), false, T0)
        .await
        .expect("create a user")
        .id
}

async fn new_org(ids: &dyn IdentityStore, name: &str) -> OrgId {
    ids.create_org(&org_name(name), Plan::Free, T0)
        .await
        .expect("create an org")
        .id
}

async fn orgs_are_created_found_and_changed(db: &TestDb) {
    let store = store(db).await;
    let ids = store.identity();
    let acme = ids
        .create_org(&org_name("  Acme Inc. "), Plan::Teams, T0)
        .await
        .unwrap();
    assert_eq!(acme.name.as_str(), "Acme Inc.");
    assert_eq!(acme.plan, Plan::Teams);
    assert_eq!(acme.verification_level, VerificationLevel::NONE);
    assert!(!acme.frozen);
    assert_eq!(acme.created_at, T0);
    assert_eq!(ids.org(acme.id).await.unwrap(), Some(acme.clone()));
    assert_eq!(ids.org(OrgId::generate()).await.unwrap(), None);

    let changed = ids
        .set_org_plan(acme.id, Plan::Enterprise)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.plan, Plan::Enterprise);
    let level = VerificationLevel::new(2).unwrap();
    let changed = ids.set_verification(acme.id, level).await.unwrap().unwrap();
    assert_eq!(changed.verification_level, level);
    assert_eq!(changed.plan, Plan::Enterprise);
    let changed = ids.set_frozen(acme.id, true).await.unwrap().unwrap();
    assert!(changed.frozen);

    // A fresh pool reads what the first one wrote.
    let other = store_again(db).await;
    let read = other.org(acme.id).await.unwrap().unwrap();
    assert_eq!(read, changed);
    assert_eq!(read.created_at, T0);

    let unknown = OrgId::generate();
    assert_eq!(ids.set_org_plan(unknown, Plan::Free).await.unwrap(), None);
    assert_eq!(ids.set_verification(unknown, level).await.unwrap(), None);
    assert_eq!(ids.set_frozen(unknown, false).await.unwrap(), None);
}

async fn orgs_are_listed_in_pages_with_filters(db: &TestDb) {
    let store = store(db).await;
    let ids = store.identity();
    let mut made = Vec::new();
    for (name, plan) in [
        ("Acme Robotics", Plan::Teams),
        ("ACME Labs", Plan::Free),
        ("Zenith Café", Plan::Enterprise),
        ("Ça va Inc.", Plan::Teams),
        ("Borealis", Plan::Teams),
    ] {
        made.push(ids.create_org(&org_name(name), plan, T0).await.unwrap());
    }
    ids.set_frozen(made[4].id, true).await.unwrap();
    let names = |orgs: &[credex_store::Org]| -> Vec<String> {
        orgs.iter().map(|org| org.name.to_string()).collect()
    };
    let list = |filter: OrgFilter, after: Option<OrgId>, limit: u32| {
        let ids = store.identity();
        async move { ids.orgs(&filter, after, limit).await.unwrap() }
    };

    // All, in id order, in pages.
    let mut by_id = made.clone();
    by_id.sort_by_key(|org| org.id);
    let all = list(OrgFilter::default(), None, 100).await;
    assert_eq!(all.len(), 5);
    assert_eq!(names(&all), names(&by_id));
    let frozen: Vec<_> = all.iter().filter(|org| org.frozen).collect();
    assert_eq!(frozen.len(), 1);
    assert_eq!(frozen[0].id, made[4].id);
    let first = list(OrgFilter::default(), None, 2).await;
    let second = list(OrgFilter::default(), Some(first[1].id), 2).await;
    let third = list(OrgFilter::default(), Some(second[1].id), 2).await;
    let last = list(OrgFilter::default(), Some(third[0].id), 2).await;
    assert_eq!((first.len(), second.len(), third.len()), (2, 2, 1));
    assert!(last.is_empty());
    let paged: Vec<_> = first.into_iter().chain(second).chain(third).collect();
    assert_eq!(paged, all);

    // By name: ASCII letters in either case, anything else exactly, on both backends alike.
    let named = |text: &str| list(OrgFilter::default().name_containing(text), None, 100);
    let mut acme = names(&named("aCmE").await);
    acme.sort();
    assert_eq!(acme, ["ACME Labs", "Acme Robotics"]);
    assert_eq!(names(&named("CAFÉ").await), Vec::<String>::new());
    assert_eq!(names(&named("café").await), ["Zenith Café"]);
    assert_eq!(names(&named("ça").await), Vec::<String>::new());
    assert_eq!(names(&named("ÇA VA").await), ["Ça va Inc."]);
    assert_eq!(names(&named("%").await), Vec::<String>::new());
    assert_eq!(names(&named("_").await), Vec::<String>::new());
    assert_eq!(names(&named("inc.").await), ["Ça va Inc."]);

    // By plan and standing, and all together.
    let teams = OrgFilter::default().on_plan(Plan::Teams);
    assert_eq!(list(teams.clone(), None, 100).await.len(), 3);
    let frozen = teams.clone().frozen_is(true);
    assert_eq!(names(&list(frozen, None, 100).await), ["Borealis"]);
    let thawed = teams.frozen_is(false).name_containing("robot");
    assert_eq!(names(&list(thawed, None, 100).await), ["Acme Robotics"]);

    // The limit is clamped to 1..=1000.
    assert_eq!(list(OrgFilter::default(), None, 0).await.len(), 1);
}

async fn store_again(db: &TestDb) -> Arc<dyn Store> {
    db.store(clock()).await
}

async fn users_are_unique_by_email_in_any_case(db: &TestDb) {
    let store = store(db).await;
    let ids = store.identity();
    assert_eq!(ids.count_admins().await.unwrap(), 0);
    let admin = ids
        .create_user(&email("Root@Example.COM"), &phc("YWRtaW4"), true, T0)
        .await
        .unwrap();
    assert_eq!(admin.email.as_str(), "root@example.com");
    assert!(admin.is_admin);
    assert_eq!(ids.count_admins().await.unwrap(), 1);

    let taken = ids
        .create_user(&email("ROOT@example.com"), &phc("b3RoZXI"), false, at(1))
        .await;
    assert!(matches!(taken, Err(IdentityError::EmailTaken)), "{taken:?}");

    let alice = ids
        .create_user(&email("alice@example.com"), &phc("YWxpY2U"), false, at(1))
        .await
        .unwrap();
    assert_eq!(ids.count_admins().await.unwrap(), 1);
    assert_eq!(ids.user(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(ids.user(UserId::generate()).await.unwrap(), None);

    let (found, hash) = ids
        .user_by_email(&email(" ALICE@Example.com "))
        .await
        .unwrap()
        .expect("found by any case");
    assert_eq!(found, alice);
    assert_eq!(hash, phc("YWxpY2U"));
    assert_eq!(
        ids.user_by_email(&email("bob@example.com")).await.unwrap(),
        None
    );

    assert!(ids.set_password(alice.id, &phc("bmV3")).await.unwrap());
    let (_, hash) = ids
        .user_by_email(&alice.email)
        .await
        .unwrap()
        .expect("still there");
    assert_eq!(hash, phc("bmV3"));
    assert!(!ids
        .set_password(UserId::generate(), &phc("bmV3"))
        .await
        .unwrap());
}

async fn memberships_are_scoped_by_org(db: &TestDb) {
    let store = store(db).await;
    let ids = store.identity();
    let a = new_org(ids, "A").await;
    let b = new_org(ids, "B").await;
    let alice = new_user(ids, "alice@example.com").await;
    let bob = new_user(ids, "bob@example.com").await;

    ids.add_member(a, alice, Role::Owner).await.unwrap();
    ids.add_member(a, bob, Role::Owner).await.unwrap();
    // Upsert: the second call changes the role.
    ids.add_member(a, bob, Role::Member).await.unwrap();
    ids.add_member(b, bob, Role::Owner).await.unwrap();

    assert_eq!(ids.membership(a, alice).await.unwrap(), Some(Role::Owner));
    assert_eq!(ids.membership(a, bob).await.unwrap(), Some(Role::Member));
    assert_eq!(ids.membership(b, bob).await.unwrap(), Some(Role::Owner));
    // Alice belongs to A only: asking in B finds nothing.
    assert_eq!(ids.membership(b, alice).await.unwrap(), None);

    let members_a: Vec<(String, Role)> = ids
        .members(a)
        .await
        .unwrap()
        .into_iter()
        .map(|(user, role)| (user.email.to_string(), role))
        .collect();
    assert_eq!(
        members_a,
        [
            ("alice@example.com".to_owned(), Role::Owner),
            ("bob@example.com".to_owned(), Role::Member)
        ]
    );
    let members_b: Vec<UserId> = ids
        .members(b)
        .await
        .unwrap()
        .into_iter()
        .map(|(user, _)| user.id)
        .collect();
    assert_eq!(members_b, [bob]);

    let of_bob: Vec<(OrgId, Role)> = ids
        .memberships_of(bob)
        .await
        .unwrap()
        .into_iter()
        .map(|(org, role)| (org.id, role))
        .collect();
    assert_eq!(of_bob, [(a, Role::Member), (b, Role::Owner)]);
    let of_alice = ids.memberships_of(alice).await.unwrap();
    assert_eq!(of_alice.len(), 1);
    assert_eq!(of_alice[0].0.name.as_str(), "A");

    // Removing from B leaves A alone; removing twice says so.
    assert!(!ids.remove_member(b, alice).await.unwrap());
    assert!(ids.remove_member(b, bob).await.unwrap());
    assert!(!ids.remove_member(b, bob).await.unwrap());
    assert_eq!(ids.membership(b, bob).await.unwrap(), None);
    assert_eq!(ids.membership(a, bob).await.unwrap(), Some(Role::Member));
    assert!(ids.members(b).await.unwrap().is_empty());

    let no_org = ids.add_member(OrgId::generate(), alice, Role::Member).await;
    assert!(
        matches!(no_org, Err(IdentityError::OrgNotFound)),
        "{no_org:?}"
    );
    let no_user = ids.add_member(a, UserId::generate(), Role::Member).await;
    assert!(
        matches!(no_user, Err(IdentityError::UserNotFound)),
        "{no_user:?}"
    );
}

async fn refresh_tokens_rotate_and_reuse_revokes_the_family(db: &TestDb) {
    let store = store(db).await;
    let ids = store.identity();
    let alice = new_user(ids, "alice@example.com").await;

    let first = random_hash();
    let issued = ids
        .issue_refresh_token(alice, None, &first, at(24), T0)
        .await
        .unwrap();
    // Another sign-in of the same user: another family, untouched by what follows.
    let elsewhere = random_hash();
    let other = ids
        .issue_refresh_token(alice, None, &elsewhere, at(24), T0)
        .await
        .unwrap();
    assert_ne!(issued.family, other.family);

    let second = random_hash();
    let rotated = ids
        .rotate_refresh_token(&first, &second, at(25), at(1))
        .await
        .unwrap();
    assert_eq!(
        rotated,
        RotateOutcome::Rotated {
            user: alice,
            family: issued.family
        }
    );
    // The new token works.
    let third = random_hash();
    let rotated = ids
        .rotate_refresh_token(&second, &third, at(26), at(2))
        .await
        .unwrap();
    assert_eq!(
        rotated,
        RotateOutcome::Rotated {
            user: alice,
            family: issued.family
        }
    );

    // The first token again: reuse. The whole family is revoked...
    let reused = ids
        .rotate_refresh_token(&first, &random_hash(), at(27), at(3))
        .await
        .unwrap();
    assert_eq!(
        reused,
        RotateOutcome::Reused {
            user: alice,
            family: issued.family
        }
    );
    // ...so the latest token of the family no longer rotates, and stays refused.
    for _ in 0..2 {
        let outcome = ids
            .rotate_refresh_token(&third, &random_hash(), at(27), at(3))
            .await
            .unwrap();
        assert_eq!(
            outcome,
            RotateOutcome::Reused {
                user: alice,
                family: issued.family
            }
        );
    }
    // Nothing can be issued into the revoked family.
    let into_revoked = ids
        .issue_refresh_token(alice, Some(issued.family), &random_hash(), at(30), at(3))
        .await;
    assert!(
        matches!(into_revoked, Err(IdentityError::FamilyRevoked)),
        "{into_revoked:?}"
    );

    // The other sign-in is untouched.
    let outcome = ids
        .rotate_refresh_token(&elsewhere, &random_hash(), at(28), at(3))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RotateOutcome::Rotated {
            user: alice,
            family: other.family
        }
    );

    assert_eq!(
        ids.rotate_refresh_token(&random_hash(), &random_hash(), at(28), at(3))
            .await
            .unwrap(),
        RotateOutcome::Unknown
    );
}

async fn refresh_tokens_expire_and_families_are_revoked(db: &TestDb) {
    let store = store(db).await;
    let ids = store.identity();
    let alice = new_user(ids, "alice@example.com").await;
    let bob = new_user(ids, "bob@example.com").await;

    let token = random_hash();
    let issued = ids
        .issue_refresh_token(alice, None, &token, at(1), T0)
        .await
        .unwrap();
    // Expiry is exclusive of the instant itself: at `expires_at` the token is expired.
    let next = random_hash();
    assert_eq!(
        ids.rotate_refresh_token(&token, &next, at(2), at(1))
            .await
            .unwrap(),
        RotateOutcome::Expired
    );
    // Expired changes nothing: still expired, not a reuse, and the new hash was not stored.
    assert_eq!(
        ids.rotate_refresh_token(&token, &random_hash(), at(2), at(1))
            .await
            .unwrap(),
        RotateOutcome::Expired
    );
    assert_eq!(
        ids.rotate_refresh_token(&next, &random_hash(), at(2), at(1))
            .await
            .unwrap(),
        RotateOutcome::Unknown
    );

    // A token issued into an existing family of the same user rotates; another user's family
    // is refused as unknown.
    let extra = random_hash();
    let added = ids
        .issue_refresh_token(alice, Some(issued.family), &extra, at(5), at(1))
        .await
        .unwrap();
    assert_eq!(added.family, issued.family);
    let foreign = ids
        .issue_refresh_token(bob, Some(issued.family), &random_hash(), at(5), at(1))
        .await;
    assert!(
        matches!(foreign, Err(IdentityError::FamilyNotFound)),
        "{foreign:?}"
    );
    let unknown = ids
        .issue_refresh_token(
            alice,
            Some(TokenFamilyId::generate()),
            &random_hash(),
            at(5),
            at(1),
        )
        .await;
    assert!(
        matches!(unknown, Err(IdentityError::FamilyNotFound)),
        "{unknown:?}"
    );
    let nobody = ids
        .issue_refresh_token(UserId::generate(), None, &random_hash(), at(5), at(1))
        .await;
    assert!(
        matches!(nobody, Err(IdentityError::UserNotFound)),
        "{nobody:?}"
    );

    // Logout: revoking the family refuses its live token as a reuse.
    assert!(ids.revoke_family(issued.family, at(2)).await.unwrap());
    assert!(ids.revoke_family(issued.family, at(3)).await.unwrap());
    assert!(!ids
        .revoke_family(TokenFamilyId::generate(), at(3))
        .await
        .unwrap());
    assert!(matches!(
        ids.rotate_refresh_token(&extra, &random_hash(), at(6), at(2))
            .await
            .unwrap(),
        RotateOutcome::Reused { .. }
    ));

    // Sign out everywhere: every live family of the user, and only of that user.
    let one = random_hash();
    let two = random_hash();
    let bobs = random_hash();
    ids.issue_refresh_token(alice, None, &one, at(9), at(2))
        .await
        .unwrap();
    ids.issue_refresh_token(alice, None, &two, at(9), at(2))
        .await
        .unwrap();
    ids.issue_refresh_token(bob, None, &bobs, at(9), at(2))
        .await
        .unwrap();
    assert_eq!(ids.revoke_user_tokens(alice, at(3)).await.unwrap(), 2);
    assert_eq!(ids.revoke_user_tokens(alice, at(3)).await.unwrap(), 0);
    for hash in [one, two] {
        assert!(matches!(
            ids.rotate_refresh_token(&hash, &random_hash(), at(9), at(4))
                .await
                .unwrap(),
            RotateOutcome::Reused { user, .. } if user == alice
        ));
    }
    assert!(matches!(
        ids.rotate_refresh_token(&bobs, &random_hash(), at(9), at(4))
            .await
            .unwrap(),
        RotateOutcome::Rotated { user, .. } if user == bob
    ));
}

/// 16 rotations of one token at once, from two connection pools (as two processes): exactly
/// one rotates, every other one is a reuse, and the family ends revoked, the winner's new
/// token included.
async fn concurrent_rotations_rotate_exactly_once(db: &TestDb) {
    const RACERS: usize = 16;
    let first = store(db).await;
    let second = store_again(db).await;
    let alice = new_user(first.identity(), "alice@example.com").await;
    let token = random_hash();
    let issued = first
        .issue_refresh_token(alice, None, &token, at(24), T0)
        .await
        .unwrap();

    let news: Vec<TokenHash> = (0..RACERS).map(|_| random_hash()).collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = news
        .iter()
        .enumerate()
        .map(|(index, new)| {
            let store = if index % 2 == 0 {
                Arc::clone(&first)
            } else {
                Arc::clone(&second)
            };
            let barrier = Arc::clone(&barrier);
            let new = *new;
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .rotate_refresh_token(&token, &new, at(25), at(1))
                    .await
                    .expect("a rotation answers")
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(RACERS);
    for task in tasks {
        outcomes.push(task.await.expect("the task finishes"));
    }
    let winners: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, outcome)| matches!(outcome, RotateOutcome::Rotated { .. }))
        .map(|(index, _)| index)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one rotation wins: {outcomes:?}");
    let reused = RotateOutcome::Reused {
        user: alice,
        family: issued.family,
    };
    assert_eq!(
        outcomes
            .iter()
            .filter(|outcome| **outcome == reused)
            .count(),
        RACERS - 1,
        "{outcomes:?}"
    );
    // The winner's token belongs to the revoked family: it is refused, from either pool.
    let winner = news[winners[0]];
    for store in [&first, &second] {
        assert_eq!(
            store
                .rotate_refresh_token(&winner, &random_hash(), at(26), at(2))
                .await
                .unwrap(),
            reused
        );
    }
    // Every losing new hash was never stored.
    for (index, new) in news.iter().enumerate() {
        if index != winners[0] {
            assert_eq!(
                first
                    .rotate_refresh_token(new, &random_hash(), at(26), at(2))
                    .await
                    .unwrap(),
                RotateOutcome::Unknown
            );
        }
    }
}

fn new_key(org: OrgId, by: UserId, name: &str, prefix: &str, secret: TokenHash) -> NewApiKey {
    NewApiKey {
        org,
        name: ApiKeyName::parse(name).unwrap(),
        prefix: ApiKeyPrefix::parse(prefix).unwrap(),
        secret_hash: secret,
        scopes: Scopes::new([Scope::Read, Scope::UsageWrite]).unwrap(),
        created_by: by,
    }
}

async fn api_keys_are_scoped_by_org(db: &TestDb) {
    let store = store(db).await;
    let ids = store.identity();
    let a = new_org(ids, "A").await;
    let b = new_org(ids, "B").await;
    let owner = new_user(ids, "owner@example.com").await;

    let secret = random_hash();
    let key_a = ids
        .create_api_key(&new_key(a, owner, "ci", "cdxAAAAAAAAA", secret), at(1))
        .await
        .unwrap();
    assert_eq!(key_a.org, a);
    assert_eq!(key_a.created_at, at(1));
    assert_eq!(key_a.last_used_at, None);
    assert_eq!(key_a.revoked_at, None);
    assert_eq!(key_a.scopes.to_string(), "read usage:write");
    let key_a2 = ids
        .create_api_key(
            &new_key(a, owner, "batch", "cdxAAAAAAAA2", random_hash()),
            at(2),
        )
        .await
        .unwrap();
    let key_b = ids
        .create_api_key(
            &new_key(b, owner, "ci", "cdxBBBBBBBBB", random_hash()),
            at(1),
        )
        .await
        .unwrap();

    let taken = ids
        .create_api_key(
            &new_key(b, owner, "dup", "cdxAAAAAAAAA", random_hash()),
            at(3),
        )
        .await;
    assert!(
        matches!(taken, Err(IdentityError::PrefixTaken)),
        "{taken:?}"
    );
    let no_org = ids
        .create_api_key(
            &new_key(OrgId::generate(), owner, "x", "cdxCCCCCCCCC", random_hash()),
            at(3),
        )
        .await;
    assert!(
        matches!(no_org, Err(IdentityError::OrgNotFound)),
        "{no_org:?}"
    );
    let no_user = ids
        .create_api_key(
            &new_key(a, UserId::generate(), "x", "cdxCCCCCCCCC", random_hash()),
            at(3),
        )
        .await;
    assert!(
        matches!(no_user, Err(IdentityError::UserNotFound)),
        "{no_user:?}"
    );

    // Found by prefix, with its hash.
    let (found, hash) = ids
        .api_key_by_prefix(&key_a.prefix)
        .await
        .unwrap()
        .expect("found by prefix");
    assert_eq!(found, key_a);
    assert_eq!(hash, secret);
    assert_ne!(hash, random_hash());
    assert_eq!(
        ids.api_key_by_prefix(&ApiKeyPrefix::parse("cdxZZZZZZZZZ").unwrap())
            .await
            .unwrap(),
        None
    );

    // Each org lists its own keys only, oldest first.
    let listed_a: Vec<ApiKeyId> = ids
        .api_keys(a)
        .await
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(listed_a, [key_a.id, key_a2.id]);
    assert_eq!(ids.api_keys(b).await.unwrap(), std::slice::from_ref(&key_b));

    // B cannot revoke A's key; A can, once (the first time is kept).
    assert!(!ids.revoke_api_key(b, key_a.id, at(4)).await.unwrap());
    assert_eq!(
        ids.api_key_by_prefix(&key_a.prefix)
            .await
            .unwrap()
            .unwrap()
            .0
            .revoked_at,
        None
    );
    assert!(ids.revoke_api_key(a, key_a.id, at(5)).await.unwrap());
    assert!(ids.revoke_api_key(a, key_a.id, at(6)).await.unwrap());
    assert!(!ids
        .revoke_api_key(a, ApiKeyId::generate(), at(6))
        .await
        .unwrap());
    // A revoked key is still found, marked revoked, so the caller can refuse it.
    let (revoked, _) = ids.api_key_by_prefix(&key_a.prefix).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(at(5)));
    assert_eq!(
        ids.api_keys(b).await.unwrap()[0].revoked_at,
        None,
        "B's key is untouched"
    );

    // last_used_at moves forward only.
    ids.touch_api_key(key_b.id, at(7)).await.unwrap();
    ids.touch_api_key(key_b.id, at(6)).await.unwrap();
    let (touched, _) = ids.api_key_by_prefix(&key_b.prefix).await.unwrap().unwrap();
    assert_eq!(touched.last_used_at, Some(at(7)));
}

async fn audit_log_pages_with_filters(db: &TestDb) {
    let store = store(db).await;
    let ids = store.identity();
    let admin = new_user(ids, "admin@example.com").await;
    let other = new_user(ids, "other@example.com").await;
    let a = new_org(ids, "A").await;
    let b = new_org(ids, "B").await;
    let top_up = AuditAction::parse("ledger.top_up").unwrap();
    let plan = AuditAction::parse("org.plan_changed").unwrap();

    // Eleven entries, several sharing an instant (the id breaks the tie), appended out of
    // order.
    let mut entries = Vec::new();
    for i in 0..11_i64 {
        let (action, actor, org) = match i % 3 {
            0 => (&top_up, admin, a),
            1 => (&plan, admin, b),
            _ => (&top_up, other, b),
        };
        let entry = AuditEntry::new(
            at(i / 2),
            action.clone(),
            format!("org:{org}"),
            serde_json::json!({ "i": i, "reason": "test" }),
        )
        .unwrap()
        .by(actor)
        .in_org(org);
        entries.push(entry);
    }
    for entry in entries.iter().rev() {
        ids.append_audit(entry).await.unwrap();
    }
    // Appending again (a retried call) adds nothing.
    ids.append_audit(&entries[0]).await.unwrap();
    // An entry with neither actor nor org.
    let system = AuditEntry::new(
        at(9),
        AuditAction::parse("system.start").unwrap(),
        "",
        serde_json::Value::Null,
    )
    .unwrap();
    ids.append_audit(&system).await.unwrap();
    entries.push(system);
    entries.sort_by_key(|e| (e.at(), e.id()));

    let everything = AuditFilter::default();
    let filters = [
        everything.clone(),
        AuditFilter {
            action: Some(top_up.clone()),
            ..AuditFilter::default()
        },
        AuditFilter {
            actor: Some(admin),
            ..AuditFilter::default()
        },
        AuditFilter {
            org: Some(b),
            ..AuditFilter::default()
        },
        AuditFilter {
            since: Some(at(1)),
            until: Some(at(4)),
            ..AuditFilter::default()
        },
        AuditFilter {
            action: Some(top_up.clone()),
            actor: Some(other),
            org: Some(b),
            since: Some(at(2)),
            until: None,
        },
    ];
    for filter in &filters {
        let expected: Vec<&AuditEntry> = entries
            .iter()
            .filter(|e| filter.action.as_ref().is_none_or(|x| e.action() == x))
            .filter(|e| filter.actor.is_none_or(|x| e.actor() == Some(x)))
            .filter(|e| filter.org.is_none_or(|x| e.org() == Some(x)))
            .filter(|e| filter.since.is_none_or(|x| e.at() >= x))
            .filter(|e| filter.until.is_none_or(|x| e.at() < x))
            .collect();
        assert!(
            !expected.is_empty(),
            "a filter that matches nothing proves little"
        );
        let mut read = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = ids.audit(filter, after, 2).await.unwrap();
            assert!(page.len() <= 2);
            pages += 1;
            assert!(pages <= entries.len() + 1, "pagination does not end");
            let Some(last) = page.last() else { break };
            after = Some(last.cursor());
            read.extend(page);
        }
        let read: Vec<&AuditEntry> = read.iter().collect();
        assert_eq!(read, expected, "filter {filter:?}");
    }
    let all = ids.audit(&everything, None, 0).await.unwrap();
    assert_eq!(all.len(), 1, "a limit of 0 is clamped to 1");
    let all = ids.audit(&everything, None, 5_000).await.unwrap();
    assert_eq!(all.len(), entries.len());
    assert_eq!(all[0].details(), entries[0].details());
    assert_eq!(all[0].target(), entries[0].target());
    let ids_read: HashSet<_> = all.iter().map(AuditEntry::id).collect();
    assert_eq!(ids_read.len(), entries.len());
}

/// The database itself refuses to change or remove an audit entry.
async fn audit_log_is_append_only(db: &TestDb) {
    let store = store(db).await;
    let entry = AuditEntry::new(
        T0,
        AuditAction::parse("org.frozen").unwrap(),
        "org",
        serde_json::json!({}),
    )
    .unwrap();
    store.append_audit(&entry).await.unwrap();
    let statements = [
        "UPDATE audit_log SET target = 'changed'",
        "DELETE FROM audit_log",
    ];
    for sql in statements {
        let refused = match db.backend() {
            credex_store::Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(db.url()).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.map(drop)
            }
            credex_store::Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.map(drop)
            }
        };
        let error = refused.expect_err(sql).to_string();
        assert!(error.contains("append-only"), "{sql}: {error}");
    }
    let read = store
        .audit(&AuditFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(read, [entry]);
}

on_both_backends!(
    orgs_are_created_found_and_changed,
    orgs_are_listed_in_pages_with_filters,
    users_are_unique_by_email_in_any_case,
    memberships_are_scoped_by_org,
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    refresh_tokens_expire_and_families_are_revoked,
    concurrent_rotations_rotate_exactly_once,
    api_keys_are_scoped_by_org,
    audit_log_pages_with_filters,
    audit_log_is_append_only,
);

/// The identity types refuse malformed values; no database involved.
mod parsing {
    use super::*;
    use credex_store::identity::IdentityParseError;

    #[test]
    fn emails_are_trimmed_lowercased_and_checked() {
        let parsed = Email::parse("  Alice.Smith+tag@Example.COM\t").unwrap();
        assert_eq!(parsed.as_str(), "alice.smith+tag@example.com");
        assert_eq!(parsed, Email::parse("ALICE.SMITH+TAG@example.com").unwrap());
        for bad in [
            "",
            "   ",
            "alice",
            "@example.com",
            "alice@",
            "a@b@c",
            "al ice@example.com",
            "alice@exa\u{7}mple.com",
            "alice@example\u{a0}.com",
        ] {
            assert!(
                matches!(Email::parse(bad), Err(IdentityParseError::Email(_))),
                "{bad:?} should be refused"
            );
        }
        let domain = "x".repeat(250);
        assert!(Email::parse(&format!("abc@{domain}")).is_ok()); // 254 bytes
        assert!(Email::parse(&format!("abcd@{domain}")).is_err()); // 255 bytes
        let json: Result<Email, _> = serde_json::from_str("\"Bob@Example.com\"");
        assert_eq!(json.unwrap().as_str(), "bob@example.com");
        assert!(serde_json::from_str::<Email>("\"bob\"").is_err());
        assert_eq!(
            serde_json::to_string(&Email::parse("bob@x.io").unwrap()).unwrap(),
            "\"bob@x.io\""
        );
    }

    #[test]
    fn names_are_bounded() {
        assert_eq!(OrgName::parse("  Acme  ").unwrap().as_str(), "Acme");
        assert_eq!(
            OrgName::parse(&"é".repeat(100)).unwrap().as_str().len(),
            200,
            "100 characters, not bytes"
        );
        for bad in ["", "   ", "a\nb", "tab\there"] {
            assert_eq!(
                OrgName::parse(bad),
                Err(IdentityParseError::OrgName),
                "{bad:?}"
            );
        }
        assert!(OrgName::parse(&"a".repeat(101)).is_err());
        assert!(ApiKeyName::parse(&"k".repeat(100)).is_ok());
        assert_eq!(
            ApiKeyName::parse(&"k".repeat(101)),
            Err(IdentityParseError::ApiKeyName)
        );
        assert!(ApiKeyName::parse(" ").is_err());
        assert!(serde_json::from_str::<OrgName>("\"\"").is_err());

        assert!(ApiKeyPrefix::parse("cdx_AbC-123").is_ok());
        for bad in ["abc", "has space", "semi;colon", &"p".repeat(33), "ünï"] {
            assert_eq!(
                ApiKeyPrefix::parse(bad),
                Err(IdentityParseError::ApiKeyPrefix),
                "{bad:?}"
            );
        }

        assert!(AuditAction::parse("org.plan_changed2").is_ok());
        for bad in ["", "Org.plan", "org plan", "org-plan", &"a".repeat(65)] {
            assert_eq!(
                AuditAction::parse(bad),
                Err(IdentityParseError::AuditAction),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn scopes_are_a_non_empty_set() {
        let scopes = Scopes::parse("market:trade read, read").unwrap();
        assert_eq!(scopes.to_string(), "read market:trade");
        assert!(scopes.contains(Scope::Read));
        assert!(!scopes.contains(Scope::UsageWrite));
        assert_eq!(
            serde_json::to_value(&scopes).unwrap(),
            serde_json::json!(["read", "market:trade"])
        );
        assert_eq!(Scopes::parse(""), Err(IdentityParseError::NoScopes));
        assert_eq!(Scopes::new([]), Err(IdentityParseError::NoScopes));
        assert_eq!(
            Scopes::parse("read write"),
            Err(IdentityParseError::Scope("write".to_owned()))
        );
        assert_eq!(Scopes::all().to_string(), "read usage:write market:trade");
        let json: Scopes = serde_json::from_str("[\"usage:write\"]").unwrap();
        assert_eq!(json.iter().collect::<Vec<_>>(), [Scope::UsageWrite]);
        assert!(serde_json::from_str::<Scopes>("[]").is_err());
        assert!(serde_json::from_str::<Scopes>("[\"admin\"]").is_err());
    }

    #[test]
    fn levels_plans_and_roles_parse() {
        for level in 0..=3 {
            assert_eq!(VerificationLevel::new(level).unwrap().get(), level);
        }
        assert_eq!(
            VerificationLevel::new(4),
            Err(IdentityParseError::VerificationLevel(4))
        );
        assert!(serde_json::from_str::<VerificationLevel>("4").is_err());
        assert_eq!(
            serde_json::from_str::<VerificationLevel>("2").unwrap(),
            VerificationLevel::new(2).unwrap()
        );
        for plan in Plan::ALL {
            assert_eq!(Plan::parse(plan.as_str()), Ok(plan));
        }
        assert!(Plan::parse("Free").is_err());
        assert_eq!(serde_json::to_string(&Plan::Teams).unwrap(), "\"teams\"");
        assert_eq!(Role::parse("owner"), Ok(Role::Owner));
        assert!(Role::parse("admin").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
        let hash = PasswordHash::new(phc.to_owned()).unwrap();
        assert_eq!(hash.as_str(), phc);
        assert_eq!(format!("{hash:?}"), "PasswordHash(***)");
        assert!(PasswordHash::new("plain".to_owned()).is_err());
        assert!(PasswordHash::new("$".to_owned()).is_err());
        assert!(PasswordHash::new("$argon2id$ space".to_owned()).is_err());
        assert!(PasswordHash::new(format!("${}", "a".repeat(512))).is_err());

        let token = TokenHash::from_bytes([0xab; 32]);
        assert_eq!(format!("{token:?}"), "TokenHash(***)");
        assert!(!format!("{token:?}").contains("ab"));
        assert_eq!(TokenHash::from_slice(&[0xab; 32]).unwrap(), token);
        assert_ne!(TokenHash::from_bytes([0xac; 32]), token);
        assert_eq!(
            TokenHash::from_slice(&[0; 31]),
            Err(IdentityParseError::TokenHash(31))
        );
    }

    #[test]
    fn audit_entries_are_bounded() {
        let action = AuditAction::parse("org.frozen").unwrap();
        let ok = AuditEntry::new(T0, action.clone(), "t".repeat(200), serde_json::json!({}));
        assert!(ok.is_ok());
        assert_eq!(
            AuditEntry::new(T0, action.clone(), "t".repeat(201), serde_json::json!({})),
            Err(IdentityParseError::AuditTarget)
        );
        // {"x":"…"} is 8 bytes plus the string.
        let fits = serde_json::json!({ "x": "y".repeat(4088) });
        assert!(AuditEntry::new(T0, action.clone(), "", fits).is_ok());
        let too_big = serde_json::json!({ "x": "y".repeat(4089) });
        assert_eq!(
            AuditEntry::new(T0, action, "", too_big),
            Err(IdentityParseError::AuditDetails(4097))
        );
    }
}
